"""Pin a built dv365 wheel to the torch minor release its extension was compiled against.

    python tools/pin_torch_wheel.py dist/dv365-*.whl

dv365_ops._C uses torch's C++ ABI, which is not stable across minor releases, so a wheel built against torch
2.13 must not be installed next to torch 2.14. The torch version is read from the wheel's own
``dv365_ops/_build_info.py`` (written by CMakeLists.txt); the ``Requires-Dist: torch...`` line of its METADATA
becomes ``torch<X.Y+1,>=X.Y`` and RECORD gets the new hash, in place. pyproject.toml keeps the range
(``torch>=2.11``) that the sources build against; only the binary wheel is pinned. (scikit-build-core could compute
the dependency at build time through a dynamic-metadata provider with ``provider-path``; that would make
``project.dependencies`` dynamic for every build, so the wheel is post-processed instead.)
"""

from __future__ import annotations

import base64
import hashlib
import re
import sys
import zipfile
from pathlib import Path


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pin(wheel: Path) -> str:
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        files = {n: z.read(n) for n in names}
        infos = {n: z.getinfo(n) for n in names}
    info = next((n for n in names if n.endswith("dv365_ops/_build_info.py")), None)
    if info is None:
        raise SystemExit(f"pin_torch_wheel: {wheel} has no dv365_ops/_build_info.py (built before the record?)")
    m = re.search(r'TORCH_VERSION = "(\d+)\.(\d+)', files[info].decode())
    if m is None:
        raise SystemExit(f"pin_torch_wheel: no TORCH_VERSION in {info}")
    major, minor = int(m.group(1)), int(m.group(2))
    requirement = f"torch<{major}.{minor + 1},>={major}.{minor}"
    meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
    record = next(n for n in names if n.endswith(".dist-info/RECORD"))
    text, count = re.subn(r"(?m)^Requires-Dist: torch\b[^;\n]*", f"Requires-Dist: {requirement}", files[meta].decode())
    if count != 1:
        raise SystemExit(f"pin_torch_wheel: expected one 'Requires-Dist: torch' line in {meta}, found {count}")
    files[meta] = text.encode()
    lines = []
    for line in files[record].decode().splitlines():
        path = line.split(",")[0]
        if path == meta:
            line = f"{path},{_record_hash(files[meta])},{len(files[meta])}"
        lines.append(line)
    files[record] = ("\n".join(lines) + "\n").encode()
    tmp = wheel.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for n in names:  # RECORD stays last, as the wheel spec asks
            z.writestr(infos[n], files[n])
    tmp.replace(wheel)
    return requirement


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    for arg in argv:
        print(f"{arg}: Requires-Dist: {pin(Path(arg))}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
