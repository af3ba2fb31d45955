"""The README and docs/ stay true to the tree: every relative link (and its #anchor) resolves, and every DV365_*
environment variable the code reads is documented."""

import re
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "results" / "LATEST.md"]
LINK = re.compile(r"\[(?:[^\[\]]|\[[^\]]*\])*\]\(([^()\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def _slug(heading: str) -> str:
    # GitHub's anchors: markup and punctuation dropped, lower case, spaces to hyphens (others kept as they are)
    text = re.sub(r"`([^`]*)`", r"\1", heading)
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text).strip().lower()
    keep = (c for c in text if c in " -_" or unicodedata.category(c)[0] in "LN")
    return "".join(keep).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", path.read_text()).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = _slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _links(path: Path):
    text = INLINE_CODE.sub("", FENCE.sub("", path.read_text()))
    for m in LINK.finditer(text):
        target = m.group(1)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        yield target


def test_the_scan_sees_links_and_github_anchors():
    assert _slug("Measured (H200, torch 2.11 + Triton 3.6, 2026-11-28)") == "measured-h200-torch-211--triton-36-2026-11-28"
    assert _slug("Native CUDA `sliced_pool` (`csrc/cuda/slicing/ops.cpp`)") == "native-cuda-sliced_pool-csrccudaslicingopscpp"
    assert "w40k-workload" in _anchors(ROOT / "docs" / "design.md")
    links = list(_links(ROOT / "README.md"))
    assert "docs/design.md#w40k-workload" in links and len(links) > 10


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(doc):
    bad = []
    for target in _links(doc):
        file, _, anchor = target.partition("#")
        dest = (doc.parent / file).resolve() if file else doc
        if not dest.exists():
            bad.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            bad.append(f"{target}: no heading with that anchor in {dest.relative_to(ROOT)}")
    assert not bad, f"{doc.relative_to(ROOT)}: " + "; ".join(bad)


def test_every_dv365_environment_variable_is_documented():
    reads = re.compile(r"""(?:getenv|environ\.get|environ\[)\(?\s*["'](DV365_[A-Z0-9_]+)["']""")
    read = set()
    for folder, patterns in (("csrc", ("*.h", "*.cpp", "*.cu", "*.cuh")), ("dv365_ops", ("*.py",)), ("python", ("*.py",))):
        for pattern in patterns:
            for src in (ROOT / folder).rglob(pattern):
                read.update(reads.findall(src.read_text()))
    # a name kept in a module constant (cache.py's ENV) is read through the constant
    for src in (ROOT / "python").rglob("*.py"):
        for name in re.findall(r"""^\w*ENV\w*\s*=\s*["'](DV365_[A-Z0-9_]+)["']""", src.read_text(), re.M):
            read.add(name)
    assert {"DV365_BACKEND", "DV365_SP_KEEP", "DV365_DATA_CACHE"} <= read  # the scan finds the reads at all
    documented = set(re.findall(r"DV365_[A-Z0-9_]+", "\n".join(p.read_text() for p in DOCS)))
    assert not read - documented, f"read by the code but in neither README.md nor docs/: {sorted(read - documented)}"
