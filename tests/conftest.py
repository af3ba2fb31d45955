import os

import pytest
import torch

# Without a GPU the Triton kernels run in Triton's interpreter, which must be chosen before triton is
# imported (dv365_ops imports it): export TRITON_INTERPRET=0 to skip those tests instead.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import dv365_ops  # noqa: E402,F401  (registers torch.ops.dv365)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)


@pytest.fixture(autouse=True)
def _seed(request):
    # fresh random data per test, reproducible from the test id when DV365_TEST_SEED is set
    seed = os.environ.get("DV365_TEST_SEED")
    seed = int(seed) if seed else torch.seed() % 2**31
    torch.manual_seed(seed)
    request.node.dv365_seed = seed


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    # a failure on fresh random data says how to get that data again
    report = (yield).get_result()
    seed = getattr(item, "dv365_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("random data", f"DV365_TEST_SEED={seed} reproduces this test's torch draws"))


def pytest_configure(config):
    config.addinivalue_line("markers", "compile: uses torch.compile (slow when cold)")
    config.addinivalue_line("markers", "cuda: needs a CUDA device")
