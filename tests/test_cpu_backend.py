"""The native CPU kernels against the reference, over shapes, block sizes, dtypes and densities."""

import warnings

import pytest
import torch
from op_cases import check_backend

import rigl_sparse as rs
from rigl_sparse import backends, info, ops
from rigl_sparse.ops import cpu_extension as _cpu
from rigl_sparse.testing import assert_matches_dense, masked_dense_op, random_block_sparse

REASON = backends.BACKENDS["cpu"].unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"cpu backend unavailable: {REASON}")


def _case(out_f, in_f, b, density, M, dtype, seed=0):
    layout, values = random_block_sparse((out_f, in_f), b, density, dtype=dtype, seed=seed)
    g = torch.Generator().manual_seed(seed + 11)
    x = torch.randn(M, in_f, generator=g).to(dtype)
    dy = torch.randn(M, out_f, generator=g).to(dtype)
    bias = torch.randn(out_f, generator=g).to(dtype)
    return layout, values, x, dy, bias


@pytest.mark.parametrize("b", [4, 8, 16, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("density", [0.2, 1.0])
@pytest.mark.parametrize("M", [1, 13, 40])
def test_cpu_kernels_match_reference(b, dtype, density, M, cpu_isa):
    # Ragged: out and K are not multiples of b; M is not a multiple of any row tile.
    layout, values, x, dy, bias = _case(2 * b + 3, 3 * b - 1, b, density, M, dtype)
    check_backend("cpu", layout, values, x, dy, bias, 7, exact_top_k=dtype == torch.float32)


def test_cpu_is_chosen_and_unsupported_arguments_fall_back_with_a_warning():
    layout, values, x, _, _ = _case(16, 16, 4, 0.5, 3, torch.float32)
    assert backends.select("dsd", "cpu", (x, values, None, *layout.topology(), 16))[0] == "cpu"
    layout, values, x, _, _ = _case(12, 12, 3, 0.5, 3, torch.float32)
    backends.fallbacks(clear=True)
    with pytest.warns(RuntimeWarning, match="block_size 3"):
        y = ops.dsd(x, values, layout)
    assert_matches_dense(y, masked_dense_op("dsd", layout), x, values)
    with rs.use_backend("cpu"), pytest.raises(RuntimeError, match="block_size 3"):
        ops.dsd(x, values, layout)


def test_cpu_block_scores_ties_and_nan_follow_the_reference(cpu_isa):
    layout, _, _, _, _ = _case(16, 16, 4, 0.25, 4, torch.float32)
    zeros = torch.zeros(4, 16)
    for backend in ("reference", "cpu"):
        with rs.use_backend(backend):
            scores, index = ops.block_scores(zeros, zeros, layout, 3)
        inactive = [i for i in range(16) if i not in set(layout.flat_index().tolist())]
        assert index.tolist() == inactive[:3]
    x = torch.randn(4, 16)
    x[0, 0] = float("nan")
    with rs.use_backend("cpu"):
        scores, _ = ops.block_scores(torch.randn(4, 16), x, layout, 2)
    assert torch.isnan(scores[0])


def test_rigl_training_on_the_cpu_backend_equals_the_reference_topology(cpu_isa):
    def run(backend):
        torch.manual_seed(0)
        model = torch.nn.Sequential(rs.SparseLinear(64, 48, density=0.3, block_size=8), torch.nn.ReLU(),
                                    rs.SparseLinear(48, 10, density=0.5, block_size=8))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        sched = rs.RigLScheduler(model, opt, delta_t=4, t_end=20)
        g = torch.Generator().manual_seed(1)
        with rs.use_backend(backend):
            for _ in range(21):
                x, y = torch.randn(32, 64, generator=g), torch.randint(0, 10, (32,), generator=g)
                torch.nn.functional.cross_entropy(model(x), y).backward()
                if sched.step():
                    opt.step()
                opt.zero_grad()
        return [m.layout.flat_index().sort().values for m in model if isinstance(m, rs.SparseLinear)], sched.stats

    ref_topology, ref_stats = run("reference")
    cpu_topology, cpu_stats = run("cpu")
    assert cpu_stats["blocks_moved"] > 0
    for a, b in zip(ref_topology, cpu_topology):
        assert torch.equal(a, b)


@pytest.mark.parametrize("M,out_f,in_f", [(1, 64, 96), (37, 160, 130), (96, 512, 320)])
@pytest.mark.parametrize("b", [16, 32, 64])
def test_larger_ragged_layers_cross_every_register_tile_edge(M, out_f, in_f, b, cpu_isa):
    # Several row panels, column chunks and L-pieces per call; M and the features ragged.
    layout, values, x, dy, bias = _case(out_f - out_f % b + (3 if out_f > b else 0), in_f, b, 0.3, M, torch.float32,
                                        seed=M)
    check_backend("cpu", layout, values, x, dy, bias, 5)


def test_isa_variable_refuses_what_is_not_built_or_not_runnable(monkeypatch):
    from rigl_sparse.ops import cpu_extension as _cpu

    status = _cpu.isa_status()
    monkeypatch.setenv(_cpu.ISA_VARIABLE, "sse9")
    with pytest.raises(ValueError, match=r"RIGL_SPARSE_CPU_ISA=sse9: not an instruction-set variant"):
        _cpu.select_isa_from_environment()
    assert _cpu.isa_status()["active"] == status["active"]  # a refused choice changes nothing
    for name in ("baseline", "avx2", "avx512"):
        monkeypatch.setenv(_cpu.ISA_VARIABLE, name)
        if name in status["runnable"]:
            assert _cpu.select_isa_from_environment() == name
        elif name in status["built"]:
            with pytest.raises(ValueError, match=f"{name}: this CPU lacks"):
                _cpu.select_isa_from_environment()
        else:
            with pytest.raises(ValueError, match=f"this build has no {name} kernels"):
                _cpu.select_isa_from_environment()
    monkeypatch.undo()
    _cpu.select_isa_from_environment()
    assert _cpu.isa_status()["active"] == status["active"]


def test_isa_variable_at_process_start_is_used_and_reported():
    import os
    import subprocess
    import sys

    code = ("import torch, rigl_sparse as rs\n"
            "from rigl_sparse import ops, info\n"
            "from rigl_sparse.ops import cpu_extension as _cpu\n"
            "from rigl_sparse.testing import assert_matches_dense, masked_dense_op, random_block_sparse\n"
            "layout, values = random_block_sparse((32, 32), 16, 0.5)\n"
            "with rs.use_backend('cpu'):\n"
            "    ops.dsd(torch.randn(3, 32), values, layout)\n"
            "print(_cpu.isa_status()['active'])\n"
            "print(info.report())\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, RIGL_SPARSE_CPU_ISA="baseline"), check=True)
    assert run.stdout.splitlines()[0] == "baseline"
    assert "in use: baseline (forced by RIGL_SPARSE_CPU_ISA=baseline" in run.stdout
    assert "kernel variants built: baseline" in run.stdout
    bad = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, RIGL_SPARSE_CPU_ISA="avx1024"))
    assert bad.returncode != 0 and "RIGL_SPARSE_CPU_ISA=avx1024: not an instruction-set variant" in bad.stderr


def test_code_outside_the_wide_variants_runs_on_any_x86_64_cpu():
    """The entry points and the baseline kernels use no AVX: a wheel built here runs on any x86-64 CPU
    (the avx2/avx512 code is reached only after the CPU reported those instruction sets)."""
    import platform
    import re
    import shutil
    import subprocess

    from rigl_sparse.ops import cpu_extension as _cpu

    if platform.machine() != "x86_64" or shutil.which("objdump") is None:
        pytest.skip("needs x86-64 and objdump")
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", _cpu._module().__file__],
                                 capture_output=True, text=True, check=True).stdout
    function, wide, seen = "", [], 0
    for line in disassembly.splitlines():
        head = re.match(r"^[0-9a-f]+ <(.*)>:$", line)
        if head:
            function = head.group(1)
            continue
        if re.search(r"rigl_sparse::cpu::(avx2|avx512)::|kernel_table_avx(2|512)\(\)", function):
            seen += 1
            continue
        if re.search(r"\t(v[a-z0-9]+\s|.*%[yz]mm)", line):  # VEX/EVEX-encoded or 256/512-bit
            wide.append(f"{function}: {line.strip()}")
    assert seen > 0, "found no avx2/avx512 kernels to leave out: the pattern no longer matches"
    assert not wide, f"{len(wide)} AVX instructions outside the avx2/avx512 variants, e.g. {wide[:3]}"


def test_cpu_bindings_refuse_a_topology_that_points_outside_the_blocks():
    # A direct call of the extension with bad slots or coordinates is refused, never read out of bounds.
    from rigl_sparse.ops.cpu_extension import extension

    layout, values, x, dy, _ = _case(64, 64, 16, 0.5, 8, torch.float32)
    out = torch.empty(8, 64)
    ptr, slots, col = layout.row_ptr, layout.row_slots, layout.block_col
    bad_slots = slots.clone()
    bad_slots[0] = layout.nnzb
    bad_col = col.clone()
    bad_col[1] = 4
    bad_ptr = ptr.clone()
    bad_ptr[-1] += 1
    for args, message in (((ptr, bad_slots, col), r"row_slots\[0\] = \d+ lies outside"),
                          ((ptr, slots, bad_col), r"block_col\[1\] = 4 lies outside \[0, 4\)"),
                          ((bad_ptr, slots, col), "row_ptr must run from 0 to nnzb"),
                          ((ptr, slots[:-1], col), "one entry per block")):
        with pytest.raises(RuntimeError, match=message):
            extension().dsd_out(x, values, None, *args, out)
    dv = torch.empty_like(values)
    bad_row = layout.block_row.clone()
    bad_row[2] = -1
    with pytest.raises(RuntimeError, match=r"block_row\[2\] = -1 lies outside"):
        extension().sdd_out(dy, x, layout.row_slots, bad_row, layout.block_col, dv)
    scores, index = torch.empty(3), torch.empty(3, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="outside the 4 x 4 grid"):
        extension().block_scores_out(dy, x, bad_row, layout.block_col, 16, scores, index)


# ----------------------------------------------------------------------------- the dispatcher's CPU kernels
NATIVE_OPS = ("dsd", "dds", "sdd", "dsd_backward", "conv2d", "conv2d_backward")


def test_native_kernels_are_the_dispatchers_cpu_kernels_and_info_says_so():
    from rigl_sparse import info

    for op in NATIVE_OPS:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"rigl_sparse::{op}", "CPU"), op
    assert "registered with torch's dispatcher for CPU tensors: conv2d, conv2d_backward, dds, dsd" in info.report()


def _every_native_op(layout, values, x, dy, bias, conv_layer, image, image_grad):
    """Each op of NATIVE_OPS once, called as the layers call them."""
    from rigl_sparse.ops.conv2d import geometry_list

    topology = layout.topology()
    g = geometry_list(conv_layer._geometry)
    conv_topology = conv_layer.layout.topology()
    out = [torch.ops.rigl_sparse.dsd(x, values, bias, topology, layout.shape[0]),
           torch.ops.rigl_sparse.dds(dy, values, topology, layout.shape[1]),
           torch.ops.rigl_sparse.sdd(dy, x, topology, layout.block_size),
           *torch.ops.rigl_sparse.dsd_backward(dy, x, values, topology, True, True, True),
           torch.ops.rigl_sparse.conv2d(image, conv_layer.values, conv_layer.bias, conv_topology,
                                        conv_layer.out_channels, g, None, None, None, 0),
           *torch.ops.rigl_sparse.conv2d_backward(image_grad, image, conv_layer.values, conv_topology,
                                                  conv_layer.out_channels, g, True, True, True, True, None, None,
                                                  None, 0)]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_dispatch_equals_the_python_kernel_bitwise(dtype):
    """An unforced call takes the C++ kernel on the dispatcher; under use_backend("cpu") the same call goes
    through the op's Python kernel to the same cpu backend: the two routes agree to the bit."""
    layout, values, x, dy, bias = _case(2 * 8 + 3, 3 * 8 - 1, 8, 0.4, 13, dtype)
    torch.manual_seed(0)
    conv = rs.SparseConv2d(8, 16, 3, padding=(1, 2), stride=(1, 2), density=0.5, block_size=8, dtype=dtype).eval()
    image = torch.randn(2, 8, 7, 6).to(dtype)
    counts = _cpu.native_call_counts
    with torch.no_grad():
        image_grad = torch.randn_like(conv(image))
        before = counts()
        native = _every_native_op(layout, values, x, dy, bias, conv, image, image_grad)
        assert counts() == (before[0] + 6, before[1])  # the six calls ran in C++
        with rs.use_backend("cpu"):
            python = _every_native_op(layout, values, x, dy, bias, conv, image, image_grad)
        assert counts() == (before[0] + 6, before[1] + 6)  # and were handed on while a backend was forced
    assert len(native) == 10
    for i, (a, b) in enumerate(zip(native, python)):
        assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride(), i
        assert torch.equal(a, b), i


def test_native_kernels_hand_what_they_do_not_take_to_the_python_kernels():
    layout, values, x, _, _ = _case(16, 16, 4, 0.5, 3, torch.float32)
    topology = layout.topology()
    taken, handed = _cpu.native_call_counts()
    with pytest.raises(TypeError, match="block_row must be int32"):  # the Python kernel's message
        torch.ops.rigl_sparse.dsd(x, values, None, [topology[0].long(), *topology[1:]], 16)
    with warnings.catch_warnings():  # the fallback's warning (said once per process) is tested above
        warnings.simplefilter("ignore", RuntimeWarning)
        y = ops.dsd(x.double(), values.double(), layout)
    with rs.use_backend("reference"):
        expected = ops.dsd(x.double(), values.double(), layout)
    assert torch.equal(y, expected)  # the registry's next backend
    assert _cpu.native_call_counts() == (taken, handed + 3)


def test_fallbacks_are_counted_per_op_and_reason_and_info_lists_them():
    from rigl_sparse import info

    layout, values, x, _, _ = _case(12, 12, 3, 0.5, 3, torch.float32)
    backends.fallbacks(clear=True)
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        for _ in range(3):
            ops.dsd(x, values, layout)
    assert len([w for w in said if "block_size 3" in str(w.message)]) == 1  # warned once
    counts = backends.fallbacks()
    assert counts == {"dsd": {"cpu: block_size 3 (the cpu kernels take 4, 8, 16, 32, 64, 128)": 3}}
    assert "dsd              3 call(s): cpu: block_size 3" in info.report()
    backends.fallbacks(clear=True)
    assert backends.fallbacks() == {} and "fallbacks in this process: none" in info.report()


# Each path of the native kernels: the forward of up to three rows on W's blocks as stored (dot products),
# fewer rows than two register tiles per thread (split by slot-balanced block rows), more (split by rows);
# the weight gradient split by slots (under 512 rows) or by rows into per-thread accumulators; the backward
# of dX, dW and the bias in one pass over the rows (512 rows and more).  Two threads, so the splits happen.
@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("b", [4, 8, 16, 32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("M", [1, 2, 3, 5, 37, 301, 700])
def test_every_cpu_path_matches_the_reference(b, dtype, M, cpu_isa, two_threads):
    layout, values, x, dy, bias = _case(2 * b + 3, 3 * b - 1, b, 0.4, M, dtype, seed=M)
    check_backend("cpu", layout, values, x, dy, bias, 3)
    # The same ops as autograd reaches them (the native kernels on torch's dispatcher, no backend forced).
    assert_matches_dense(ops.dsd(x, values, layout, bias), masked_dense_op("dsd", layout), x, values, bias)
    topology = layout.topology()
    for need_bias in (True, False):
        dx, dv, db = torch.ops.rigl_sparse.dsd_backward(dy, x, values, topology, True, True, need_bias)
        assert_matches_dense(dx, masked_dense_op("dds", layout), dy, values, name="dX")
        assert_matches_dense(dv, masked_dense_op("sdd", layout), dy, x, name="dvalues")
        if need_bias:
            assert_matches_dense(db, lambda d: d.sum(0), dy, name="dbias")
    dx, dv, _ = torch.ops.rigl_sparse.dsd_backward(dy, x, values, topology, True, False, False)
    assert dv.numel() == 0
    assert_matches_dense(dx, masked_dense_op("dds", layout), dy, values, name="dX alone")
    _, dv, _ = torch.ops.rigl_sparse.dsd_backward(dy, x, values, topology, False, True, False)
    assert_matches_dense(dv, masked_dense_op("sdd", layout), dy, x, name="dvalues alone")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_backward_of_a_layer_with_4_mib_of_blocks_matches_the_reference(dtype, cpu_isa, two_threads):
    # 2048 x 2048 at density 0.25, b = 32: 4 MiB of fp32 blocks, where dX and dW run each by itself even
    # with rows enough to split the weight gradient's rows over the threads.
    from rigl_sparse.ops import cpu_extension as _cpu

    layout, values, x, dy, bias = _case(2048, 2048, 32, 0.25, 515, dtype, seed=1)
    assert values.numel() * 4 == 4 << 20 and "4 MiB or more" in _cpu.kernel_path("dsd_backward", 515, 32, 4 << 20)
    dx, dv, db = torch.ops.rigl_sparse.dsd_backward(dy, x, values, layout.topology(), True, True, True)
    assert_matches_dense(dx, masked_dense_op("dds", layout), dy, values, name="dX")
    assert_matches_dense(dv, masked_dense_op("sdd", layout), dy, x, name="dvalues")
    assert_matches_dense(db, lambda d: d.sum(0), dy, name="dbias")


def test_the_forward_split_over_block_rows_keeps_empty_block_rows_at_the_bias(two_threads):
    # One dense block row among empty ones: the slot-balanced split gives one part everything.
    layout, values = rs.BlockSparseLayout.from_dense(torch.zeros(64, 32).index_fill_(0, torch.arange(16), 1.0),
                                                     density=0.25, block_size=16)
    assert layout.block_row.tolist() == [0, 0]
    x, bias = torch.randn(5, 32), torch.randn(64)
    assert_matches_dense(ops.dsd(x, values, layout, bias), masked_dense_op("dsd", layout), x, values, bias)


def test_info_says_which_cpu_path_each_row_count_takes(two_threads):
    from rigl_sparse.ops import cpu_extension as _cpu

    paths = {M: _cpu.kernel_path("dsd", M, 32) for M in (1, 4, 2048)}
    assert "dot products" in paths[1] and "block rows" in paths[4] and "split by rows" in paths[2048]
    assert "one pass" in _cpu.kernel_path("dsd_backward", 2048, 32)
    assert "one pass" not in _cpu.kernel_path("dsd_backward", 16, 32)
    assert "one pass" in _cpu.kernel_path("dsd_backward", 2048, 32, (4 << 20) - 4)
    assert "4 MiB or more" in _cpu.kernel_path("dsd_backward", 2048, 32, 4 << 20)


@pytest.mark.skipif(info.huge_page_mode() not in ("madvise", "always"),
                    reason="Linux transparent huge pages are off (or not Linux)")
def test_a_large_output_is_written_without_a_page_fault_per_4_kib():
    import resource

    layer = rs.SparseLinear.from_dense(torch.nn.Linear(1024, 4096), density=0.1, block_size=32)
    x = torch.randn(2048, 1024)
    with torch.no_grad():
        layer(x)  # anything allocated once per process
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        y = layer(x)  # 32 MiB, fresh from the allocator: 8192 pages of 4 KiB
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert y.nbytes == 32 << 20
    assert faults < 2048, f"{faults} page faults for a 32 MiB output"


def test_the_kernels_read_the_topology_in_the_order_python_names_it():
    from rigl_sparse.topology import Topology

    assert tuple(_cpu.extension().topology_fields()) == Topology._fields
