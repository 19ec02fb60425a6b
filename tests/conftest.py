import os

import pytest
import torch

# Without a GPU the Triton kernels are tested through Triton's CPU interpreter.  Set before any
# kernel module is imported; the backend registry uses the interpreter only under use_backend("triton").
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "slow: long-running; excluded from the default run")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="no CUDA GPU visible to torch")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _fresh_compiler_caches():
    """Each test compiles from scratch: compiled code of earlier tests neither counts towards
    dynamo's recompile limit nor stays in memory."""
    yield
    import sys

    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
