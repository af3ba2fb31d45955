"""The installed package: the build report, the CLI entry points and the demo job."""

import subprocess
import sys

import torch

from dv365.cli import main as cli_main
from dv365_ops.__main__ import build_report


def test_build_report_lists_every_op_with_a_cpu_kernel():
    report = build_report()
    names = {n.split("::", 1)[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("dv365::")}
    assert set(report["ops"]) == {n for n in names if not n.endswith("_triton")}
    assert all(has["cpu"] for has in report["ops"].values()), report["ops"]
    assert report["torch"] == torch.__version__


def test_python_m_dv365_ops_prints_the_table():
    out = subprocess.run([sys.executable, "-m", "dv365_ops"], check=True, capture_output=True, text=True).stdout
    assert "sliced_pool" in out and "int4_quantize" in out and "CPU  CUDA  Triton" in out


def test_demo_runs_end_to_end(tmp_path, capsys):
    assert cli_main(["demo", "--users", "6", "--mean-length", "600", "--dim", "8", "--batch-size", "4", "--out", str(tmp_path)]) == 0
    saved = torch.load(tmp_path / "embeddings_int4.pt")
    rows = saved["user_id"].numel()
    assert rows > 0 and saved["codes"].shape[0] == rows and saved["codes"].dtype == torch.uint8
    assert (tmp_path / "data" / "manifest.json").exists()
    assert "int4 export" in capsys.readouterr().out


def test_cpu_kernels_are_built_with_openmp():
    """at::parallel_for is inline OpenMP in torch's headers: an extension built without -fopenmp runs
    every CPU kernel on one thread, silently."""
    import shutil

    import pytest

    import dv365_ops

    if sys.platform != "linux" or shutil.which("nm") is None:
        pytest.skip("needs nm on Linux")
    symbols = subprocess.run(["nm", "-D", dv365_ops._C.__file__], check=True, capture_output=True, text=True).stdout
    assert "GOMP_parallel" in symbols
