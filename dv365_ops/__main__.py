"""``python -m dv365_ops``: what the installed build holds (kernels per backend, Triton, devices)."""

from __future__ import annotations

import argparse
import json
import sys

import torch

import dv365_ops
from dv365_ops import _backend


def build_report() -> dict:
    names = sorted(n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("dv365::"))
    native = [n for n in names if not n.endswith("_triton")]
    triton_ops = {n[: -len("_triton")] for n in names if n.endswith("_triton")}
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "dv365_ops": dv365_ops.__version__,
        "library": dv365_ops._C.__file__,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cuda_device": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "triton": triton_version,
        "backend": _backend.get_backend(),
        "ops": {
            name: {
                "cpu": _backend.has_native_kernel(name, "cpu"),
                "cuda": _backend.has_native_kernel(name, "cuda"),
                "triton": name in triton_ops,
            }
            for name in native
        },
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dv365_ops", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = build_report()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"dv365_ops {report['dv365_ops']}  ({report['library']})")
    print(f"torch {report['torch']}  CUDA runtime: {report['torch_cuda'] or 'none (CPU build)'}")
    print(f"CUDA device: {report['cuda_device'] or 'none'}")
    print(f"Triton: {report['triton'] or 'not installed'}  backend: {report['backend']}")
    width = max(len(n) for n in report["ops"]) if report["ops"] else 4
    print(f"\n{'op':<{width}}  CPU  CUDA  Triton")
    for name, has in report["ops"].items():
        mark = lambda b: "yes" if b else "-"  # noqa: E731
        print(f"{name:<{width}}  {mark(has['cpu']):<3}  {mark(has['cuda']):<4}  {mark(has['triton'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
