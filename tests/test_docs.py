"""The README and docs/ stay true to the tree: every relative link (and its #anchor) resolves, and every DV365_*
environment variable the code reads is documented."""

import re
import unicodedata
from pathlib import Path

import pyarrow.parquet as pq
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


def _python_blocks(doc: Path, heading: str) -> list[str]:
    """The ```python blocks of one section of a doc (from its heading to the next heading of that level or above)."""
    text = doc.read_text()
    level = len(heading) - len(heading.lstrip("#"))
    start = text.index(heading + "\n")
    nxt = re.search(rf"^#{{1,{level}}} ", text[start + len(heading):], re.M)
    section = text[start: start + len(heading) + (nxt.start() if nxt else len(text))]
    return re.findall(r"^```python\n(.*?)^```", section, re.S | re.M)


@pytest.mark.filterwarnings("ignore::dv365.data.ingestion.IngestWarning")  # a tiny log: short histories
def test_real_data_ids_and_downstream_snippets_run(tmp_path, monkeypatch):
    # the examples of real-data.md section 5 and export.md's downstream adapter, as written, on a small ingested log
    import torch

    import dv365_ops
    from dv365.data import ingest
    from dv365.store import open_store

    monkeypatch.chdir(tmp_path)
    t0 = 1_700_000_000
    old = "u,i,t\n" + "".join(f"u_{k % 5},i{k % 7},{t0 + 3600 * k}\n" for k in range(40)) + f"u_6884d953,i1,{t0}\n"
    new = "".join(f"u_new,i{k},{t0 + 3600 * (50 + k)}\n" for k in range(8, 11))
    rows = old.splitlines(True)[1:] + new.splitlines(True)
    resorted = "u,i,t\n" + "".join(sorted(rows, key=lambda r: -int(r.split(",")[2])))  # newest first
    m = {"user": "u", "item": "i", "timestamp": "t"}
    for name, text in (("ml", old), ("day1", old), ("day2", old + new), ("day3", resorted)):
        Path(f"{name}.csv").write_text(text)
        ingest(f"{name}.csv", f"data/{name}", m)
    users = pq.read_table("data/ml/vocab/users.parquet").column("id").to_pylist()
    for path, dim in (("store/", 8), ("embeddings/", 8)):
        ids = [17, 42] if path == "embeddings/" else users
        with open_store(path, create=True) as st:
            w = st.stage("v1")
            codes = dv365_ops.int4_quantize(torch.randn(len(ids) * 4, dim)).view(len(ids), 4, -1)
            w.write_part(0, torch.tensor(ids), codes)
            st.publish("v1", {"num_tokens": 4, "dim": dim})
    ids_code = _python_blocks(ROOT / "docs" / "real-data.md", "## 5. Your ids, and the next snapshot")
    assert len(ids_code) == 2
    scope: dict = {}
    exec(ids_code[0], scope)
    assert scope["res"].found.tolist() == [True, False]
    exec(ids_code[1], scope)  # day2 appends to day1: no renumbering
    assert "users have another dense id" in scope["renumbered"]("data/day1", "data/day3")  # another order is caught
    (down,) = _python_blocks(ROOT / "docs" / "export.md", "### In a downstream model")
    scope = {}
    exec(down, scope)
    assert scope["x"].shape == (3, 64) and scope["res"].found.tolist() == [True, True, False]
    assert (scope["x"][2] == 0).all()
