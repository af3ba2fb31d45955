"""The installed package: the build report, the CLI entry points and the demo job."""

import json
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
    args = ["demo", "--users", "8", "--eval-users", "4", "--mean-length", "300", "--steps", "4", "--batch-size", "8",
            "--dim", "8", "--out", str(tmp_path)]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "mean NE delta of DV365" in out and f"output folder: {tmp_path}" in out
    state = json.loads((tmp_path / "refresh" / "refresh.json").read_text())
    assert [c["done"] for c in state["cycles"]] == [True, True]
    report = json.loads((tmp_path / "refresh" / "cycle-0002" / "stability.json").read_text())
    assert report["previous_version"] == "cycle-0001" and report["stability"]["users"] == 8
    from dv365.store import open_store

    with open_store(str(tmp_path / "store")) as st:
        assert st.current() == "cycle-0002"
        res = st.lookup([0, 7, 8])
    assert tuple(res.embeddings.shape) == (3, 58, 8) and res.found.tolist() == [True, True, False]
    assert (tmp_path / "baseline" / "metrics.json").exists()


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
