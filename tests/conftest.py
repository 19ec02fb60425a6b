import os

import pytest
import torch

# Without a GPU the Triton kernels are tested through Triton's CPU interpreter.  Set before any
# kernel module is imported; the backend registry uses the interpreter only under use_backend("triton").
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")
    config.addinivalue_line("markers", "triton: runs Triton kernels, on the GPU where there is one, else on Triton's "
                                       "CPU interpreter (never skipped for want of a GPU)")
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


def _runnable_cpu_isas() -> list[str]:
    from rigl_sparse import backends
    from rigl_sparse.ops import cpu_extension as _cpu

    if backends.BACKENDS["cpu"].unavailable_reason() is not None:
        return []
    return list(_cpu._module().isa_variants_runnable())


@pytest.fixture(params=_runnable_cpu_isas() or [pytest.param(None, marks=pytest.mark.skip(
    reason="the native cpu backend is not built"))])
def cpu_isa(request, monkeypatch):
    """Each instruction-set variant of the CPU kernels this machine executes, forced as a user would:
    through RIGL_SPARSE_CPU_ISA (an AVX2 machine tests baseline and avx2, an AVX-512 one all three)."""
    from rigl_sparse.ops import cpu_extension as _cpu

    monkeypatch.setenv(_cpu.ISA_VARIABLE, request.param)
    assert _cpu.select_isa_from_environment() == request.param
    assert _cpu.isa_status()["active"] == request.param
    yield request.param
    monkeypatch.undo()
    _cpu.select_isa_from_environment()
