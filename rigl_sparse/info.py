"""``python -m rigl_sparse.info``: versions, devices, backends and the backend each op uses."""

from __future__ import annotations

import platform

import torch

from rigl_sparse import backends
from rigl_sparse.ops import OP_NAMES


def report() -> str:
    lines = [f"rigl_sparse {__import__('rigl_sparse').__version__}",
             f"python {platform.python_version()}, torch {torch.__version__}"]
    try:
        import triton

        lines.append(f"triton {triton.__version__}")
    except ImportError:
        lines.append("triton: not installed")
    device_types = ["cpu"]
    if torch.cuda.is_available():
        device_types.append("cuda")
        lines.append(f"cuda: {torch.cuda.get_device_name(0)} (torch built with CUDA {torch.version.cuda})")
    else:
        lines.append("cuda: no GPU visible to torch")
    lines.append("")
    lines.append("backends:")
    for backend in sorted(backends.BACKENDS.values(), key=lambda b: b.priority):
        reason = backend.unavailable_reason()
        where = "any device" if backend.device_types is None else ", ".join(backend.device_types)
        lines.append(f"  {backend.name:10s} [{where}] " + ("available" if reason is None else f"unavailable: {reason}"))
        if backend.name == "cpu" and reason is None:
            lines.extend(f"  {'':10s} {line}" for line in _cpu_lines())
        if backend.name in backends.LIMITS:
            lines.append(f"  {'':10s} takes {backends.LIMITS[backend.name]}")
    lines.append("")
    lines.append("op selection:")
    for device_type in device_types:
        for op in OP_NAMES + ("conv2d",):
            chosen, passed = backends.backend_status(op, device_type)
            why = "; ".join(f"{name} {reason}" for name, reason in passed) or "highest priority"
            lines.append(f"  {op:16s} on {device_type:4s} -> {chosen:10s} ({why})")
    if "cuda" in device_types:
        lines.extend(_measured_lines(torch.cuda.get_device_name(0)))
    lines.append("")
    counts = backends.fallbacks()
    lines.append("fallbacks in this process:" + ("" if counts else " none"))
    for op, reasons in counts.items():
        lines.extend(f"  {op:16s} {n} call(s): {reason}" for reason, n in reasons.items())
    return "\n".join(lines)


def _cpu_lines() -> list[str]:
    """The instruction-set variants of the CPU kernels: built, runnable here, in use and why."""
    from rigl_sparse.ops import cpu_extension as _cpu

    try:
        status = _cpu.isa_status()
    except ValueError as err:  # a RIGL_SPARSE_CPU_ISA this build or CPU cannot honour
        return [f"ERROR: {err}"]
    lacking = [name for name in status["built"] if name not in status["runnable"]]
    why = f"forced by {status['forced_by']}" if status["forced_by"] else "the widest this CPU runs"
    lines = [f"block sizes: {', '.join(map(str, _cpu.block_sizes()))}; dtypes: {_cpu.dtype_names()}",
             f"kernel variants built: {', '.join(status['built'])}"
             + (f" (this CPU cannot run {', '.join(lacking)})" if lacking else ""),
             f"in use: {status['active']} ({why}; {status['tiles']})",
             f"threads: {torch.get_num_threads()}" + ("" if status["openmp"] else
                                                       " requested, but built without OpenMP: the kernels run on one")]
    if status["note"]:
        lines.append(f"at install: {status['note']}")
    lines.append(f"kernels {_cpu.dispatch_status()}")
    lines.append(huge_pages_line())
    lines.append("paths by rows M (block size 32; the thresholds scale with the register tile and the threads):")
    for op in ("dsd", "dsd_backward"):
        for rows in (1, 16, 2048):
            lines.append(f"  {op:12s} M={rows:<5d} {_cpu.kernel_path(op, rows, 32)}")
    large = 4096 * 4096 // 10 * 4  # a 4096 x 4096 layer's blocks at density 0.1
    lines.append(f"  {'dsd_backward':12s} M={2048:<5d} {_cpu.kernel_path('dsd_backward', 2048, 32, large)} "
                 f"[a 4096 x 4096 layer at density 0.1]")
    return lines


THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def huge_page_mode(path: str = THP_MODE) -> str | None:
    """Linux's transparent huge page mode (``always``, ``madvise`` or ``never``), None where it cannot be read."""
    try:
        with open(path) as f:
            return f.read().split("[", 1)[1].split("]", 1)[0]
    except (OSError, IndexError):
        return None


def huge_pages_line(path: str = THP_MODE) -> str:
    """Whether the CPU kernels' large outputs get 2 MiB pages: they ask for them (madvise) where Linux's
    transparent huge pages are in madvise mode; without them a fresh output takes a page fault per 4 KiB."""
    mode = huge_page_mode(path)
    if mode is None:
        return f"huge pages: unavailable ({path} not readable): a fresh output takes a page fault per 4 KiB"
    if mode == "never":
        return f"huge pages: unavailable ({path} is [never]): a fresh output takes a page fault per 4 KiB"
    return f"huge pages: {mode} mode: outputs and scratch of 32 MiB or more get 2 MiB pages"


def _measured_lines(device_name: str) -> list[str]:
    """The per-op, per-block-size choices measured on this GPU model, which override the priority order."""
    choices = backends.measured_choices(device_name)
    path = backends.MEASUREMENTS_DIR / f"{backends.device_slug(device_name)}.json"
    if not choices:
        why = "is absent" if not path.exists() else "does not say that the timed outputs were checked"
        return ["", f"measured choices: none recorded for {device_name} ({path.name} {why}), so the priority "
                    "order above applies and the cuda backend is never chosen by default: it runs first only "
                    "for an op and block size where benchmarks/bench_gpu_matmul.py --record-choice, which checks "
                    "every backend's outputs before timing them, found it faster on this GPU model"]
    lines = ["", f"measured choices on {device_name} ({path.name}), tried first for that op and block size:"]
    for op, per_block in sorted(choices.items()):
        for block_size, entry in sorted(per_block.items()):
            timings = ", ".join(f"{name} {ms:.3f} ms" for name, ms in sorted(entry["ms"].items(), key=lambda t: t[1]))
            lines.append(f"  {op:16s} b={block_size:<4d} -> {entry['backend']:10s} ({timings})")
    return lines


def main() -> None:
    print(report())


if __name__ == "__main__":
    main()
