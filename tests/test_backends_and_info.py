import pytest
import torch

import rigl_sparse as rs
from rigl_sparse import backends, info, ops
from rigl_sparse.testing import random_block_sparse


def test_native_cpu_is_selected_when_built_and_reference_can_be_forced():
    expected = "cpu" if backends.BACKENDS["cpu"].unavailable_reason() is None else "reference"
    assert backends.select("dsd", "cpu")[0] == expected
    layout, values = random_block_sparse((16, 16), 4, 0.5)
    x = torch.randn(3, 16)
    with rs.use_backend("reference"):
        assert backends.forced_backend() == "reference"
        y = ops.dsd(x, values, None, *layout.topology(), 16)
    assert backends.forced_backend() is None
    torch.testing.assert_close(y, x @ layout.to_dense(values).T)


def test_unknown_or_unavailable_backend_raises_with_reason():
    with pytest.raises(ValueError, match="not a backend"):
        with rs.use_backend("fast"):
            pass
    for name in ("cpu", "triton", "cuda"):
        reason = backends.BACKENDS[name].unavailable_reason()
        if reason is not None:
            with pytest.raises(RuntimeError, match="not available"):
                with rs.use_backend(name):
                    pass


def test_info_names_every_op_and_backend():
    text = info.report()
    for op in ops.OP_NAMES:
        assert op in text
    for name in backends.BACKENDS:
        assert name in text
    assert "op selection" in text


def test_import_compiles_nothing_and_touches_no_gpu():
    import subprocess
    import sys

    code = ("import sys, rigl_sparse, torch; "
            "assert not torch.cuda.is_initialized(); "
            "assert 'triton' not in sys.modules, 'triton imported at package import'")
    subprocess.run([sys.executable, "-c", code], check=True)
