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
        y = ops.dsd(x, values, layout)
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


def test_measured_choice_runs_the_faster_backend_first(tmp_path, monkeypatch):
    import json
    from types import SimpleNamespace

    record = {"device": "Test GPU 9", backends.CHECKED_FIELD: "yes", "choices": {
        "dsd": {"64": {"backend": "cuda", "ms": {"triton": 2.0, "cuda": 1.5}}},
        "sdd": {"64": {"backend": "triton", "ms": {"triton": 1.0, "cuda": 1.25}}}}}
    (tmp_path / "test-gpu-9.json").write_text(json.dumps(record))
    monkeypatch.setattr(backends, "MEASUREMENTS_DIR", tmp_path)
    monkeypatch.setattr(backends, "_gpu_name", lambda index: "Test GPU 9")
    backends.measured_choices.cache_clear()
    try:
        x = SimpleNamespace(device=torch.device("cuda", 0))
        priority = [b.name for b in backends._measured_order("dds", (x, torch.empty(1, 64, 64)))]
        assert priority.index("triton") < priority.index("cuda")  # nothing measured for dds: priority order
        assert backends._measured_order("dsd", (x, torch.empty(1, 64, 64)))[0].name == "cuda"
        assert backends._measured_order("dsd", (x, torch.empty(1, 32, 32)))[0].name == priority[0]
        assert backends._measured_order("sdd", (x, x, None, None, None, None, None, None, 64))[0].name == "triton"
        lines = "\n".join(info._measured_lines("Test GPU 9"))
        assert "dsd" in lines and "b=64" in lines and "cuda 1.500 ms, triton 2.000 ms" in lines
        assert "none recorded for Other GPU" in "\n".join(info._measured_lines("Other GPU"))
        # A record that does not say its timed outputs were checked chooses nothing.
        del record[backends.CHECKED_FIELD]
        (tmp_path / "test-gpu-9.json").write_text(json.dumps(record))
        backends.measured_choices.cache_clear()
        assert backends._measured_order("dsd", (x, torch.empty(1, 64, 64)))[0].name == priority[0] == "triton"
        assert "cuda backend is never chosen by default" in "\n".join(info._measured_lines("Test GPU 9"))
    finally:
        backends.measured_choices.cache_clear()


def test_device_slug_names_the_measurement_file():
    assert backends.device_slug("NVIDIA H100 80GB HBM3") == "nvidia-h100-80gb-hbm3"


def test_a_backward_on_another_thread_runs_on_the_backend_forced_for_its_forward():
    # Autograd may run a CUDA graph's backward on a thread of its own, which does not see use_backend's
    # context variable; the ops force again, for their backward, the backend that was forced in forward.
    import threading

    import rigl_sparse as rs

    layer = rs.SparseLinear(32, 32, density=0.5, block_size=8)
    seen = []
    real = backends.select

    def spy(op, device_type, args=None):
        seen.append((op, backends.forced_backend()))
        return real(op, device_type, args)

    layer.request_grow_scores(3)  # the grow-score tap's backward too
    with rs.use_backend("reference"):
        y = layer(torch.randn(4, 32, requires_grad=True))
    backends.select = spy
    try:
        worker = threading.Thread(target=lambda: y.sum().backward())
        worker.start()
        worker.join()
    finally:
        backends.select = real
    assert {op for op, _ in seen} >= {"dds", "sdd", "block_scores"}
    assert all(forced == "reference" for _, forced in seen), seen


@pytest.mark.parametrize("content, says", [
    ("always [madvise] never\n", "huge pages: madvise mode: outputs and scratch of 32 MiB or more get 2 MiB pages"),
    ("[always] madvise never\n", "huge pages: always mode"),
    ("always madvise [never]\n", "is [never]): a fresh output takes a page fault per 4 KiB"),
    (None, "not readable): a fresh output takes a page fault per 4 KiB"),
])
def test_info_says_whether_large_outputs_get_huge_pages(tmp_path, content, says):
    path = tmp_path / "enabled"
    if content is not None:
        path.write_text(content)
    assert says in info.huge_pages_line(str(path))


TOY_BACKEND = '''
import torch
import rigl_sparse as rs
from rigl_sparse import backends, info, ops
from rigl_sparse.ops.cpu_extension import native_call_counts
from rigl_sparse.ops.dsd import reference

calls = []

def toy_dsd(x, values, bias, block_row, block_col, row_ptr, row_slots, col_ptr, col_slots, out_features):
    calls.append(x.shape)
    return reference.dsd(x, values, bias, block_row, block_col, out_features)

backends.register_backend(backends.Backend("toy", ("cpu",), 12, lambda: None),
                          limits="dsd only, any block size (a test's backend)")
backends.register_impl("dsd", "toy", toy_dsd)
layer = rs.SparseLinear(64, 32, density=0.5, block_size=16)
x = torch.randn(5, 64)
taken = native_call_counts()[0]
y = layer(x)
y.sum().backward()
assert calls == [(5, 64)], calls  # the forward ran on the toy backend, ranked above cpu
assert native_call_counts()[0] == taken, "the native CPU kernels took a call the toy backend outranks"
torch.testing.assert_close(y, x @ layer.to_dense().T + layer.bias)
assert backends.select("dsd", "cpu")[0] == "toy" and backends.select("sdd", "cpu")[0] == backends.select(
    "dds", "cpu")[0]
assert backends.backend_status("dsd", "cpu")[0] == "toy"
assert "toy" in info.report() and "a test's backend" in info.report()
with rs.use_backend("reference"):
    layer(x)
assert len(calls) == 1  # forcing still wins
print("ok")
'''


def test_a_backend_registered_outside_the_package_is_chosen_by_its_priority():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", TOY_BACKEND], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_register_backend_refuses_a_name_taken_or_no_limits():
    with pytest.raises(ValueError, match="already registered"):
        backends.register_backend(backends.Backend("cpu", ("cpu",), 99, lambda: None), limits="x")
    with pytest.raises(ValueError, match="limits"):
        backends.register_backend(backends.Backend("unused", ("cpu",), 1, lambda: None), limits="")
    assert "unused" not in backends.BACKENDS
