"""Train, with RigL, a sparse model whose dense version does not fit in this machine's memory.

    python examples/larger_than_dense.py                      # CPU: 4.3 B dense-equivalent parameters
    python examples/larger_than_dense.py --device cuda --width 65536 --layers 5 --density 0.005
                                                              # GPU: 21.5 B (an 80 GB H100 holds neither)

The model is an MLP on Fashion-MNIST images: ``784 -> width``, then ``layers`` hidden
``width x width`` layers, each sparse layer followed by LayerNorm and ReLU, and a dense
classifier.  It is built on the ``meta`` device and ``sparsify``-ed onto the target device, so no
dense weight of a sparse layer is ever allocated: the sparse layers' values, gradients and Adam
state scale with the density.  RigL (ERK, ``delta_t`` steps between updates) then trains it for
``--steps`` steps; each topology update scores every inactive block of every layer from the
streamed dense gradient, never stored.

The dense model's training state (fp32 weights, gradients and Adam's two moments: 16 bytes per
parameter) is compared with the device's memory, and then actually tried: on CUDA the allocation
fails with the device's out-of-memory error; on CPU the attempt runs in a child process whose
address space is capped at the machine's physical memory, so it fails with the allocator's error
instead of driving the machine into swap or the OOM killer.
"""

from __future__ import annotations

import argparse
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import rigl_sparse as rs
from rigl_sparse import data

GiB = 2**30


def build(width: int, layers: int, device) -> nn.Sequential:
    """The model's modules, with every weight wherever ``device`` says (``meta``: nowhere)."""
    modules: list[nn.Module] = [nn.Flatten()]
    fan_in = 784
    for _ in range(layers + 1):
        modules += [nn.Linear(fan_in, width, device=device), nn.LayerNorm(width, device=device), nn.ReLU()]
        fan_in = width
    modules.append(nn.Linear(width, 10, device=device))
    return nn.Sequential(*modules)


def dense_parameters(width: int, layers: int) -> int:
    return (784 * width + width) + layers * (width * width + width) + (layers + 1) * 2 * width + (10 * width + 10)


def device_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    meminfo = Path("/proc/meminfo").read_text()
    return int(re.search(r"^MemTotal:\s+(\d+) kB", meminfo, re.M).group(1)) * 1024


def peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmHWM:\s+(\d+) kB", status, re.M).group(1)) * 1024


def try_dense(width: int, layers: int, device: torch.device) -> str:
    """Allocate the dense model's training state (weights, gradients, Adam moments); the error it raises."""
    model = build(width, layers, "meta")
    state = []
    try:
        model.to_empty(device=device)
        for p in model.parameters():
            state += [torch.empty_like(p), torch.empty_like(p), torch.empty_like(p)]  # grad, exp_avg, exp_avg_sq
    except (RuntimeError, MemoryError) as error:  # torch.OutOfMemoryError is a RuntimeError
        held = sum(t.numel() * t.element_size() for t in list(model.parameters()) + state if not t.is_meta)
        return f"{type(error).__name__} after {held / GiB:.1f} GiB: {str(error).splitlines()[0][:200]}"
    return "the dense training state was allocated (it fits: choose a larger --width or --layers)"


def dense_attempt(args, device: torch.device) -> str:
    if device.type == "cuda":
        return try_dense(args.width, args.layers, device)
    limit = device_memory(device)  # the child's address space: no more than the machine's physical memory
    code = (f"import resource, sys; resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit})); "
            f"sys.path.insert(0, {str(Path(__file__).parent)!r}); import larger_than_dense as x; "
            f"print(x.try_dense({args.width}, {args.layers}, __import__('torch').device('cpu')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    lines = (done.stdout or done.stderr).strip().splitlines()
    return lines[-1] if lines else f"the child process exited with status {done.returncode}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=32768)
    parser.add_argument("--layers", type=int, default=4, help="hidden width x width layers")
    parser.add_argument("--density", type=float, default=0.01)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--delta-t", type=int, default=50)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--skip-dense-attempt", action="store_true")
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST's IDX files (default: see rigl_sparse.data)")
    parser.add_argument("--test-examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(args.seed)

    n_dense = dense_parameters(args.width, args.layers)
    dense_bytes = 16 * n_dense
    capacity = device_memory(device)
    print(f"device: {device} ({capacity / GiB:.1f} GiB); torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"dense-equivalent model: {n_dense / 1e9:.2f} B parameters; dense training state (fp32 weights, "
          f"gradients, Adam moments) {dense_bytes / GiB:.1f} GiB = {dense_bytes / capacity:.1f}x the device's memory")
    if not args.skip_dense_attempt:
        print(f"dense attempt: {dense_attempt(args, device)}")
    if device.type == "cuda":  # the peak printed below is the sparse model's, not the dense attempt's
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)

    start = time.perf_counter()
    model = build(args.width, args.layers, "meta")
    rs.sparsify(model, density=args.density, distribution="erk", block_size=args.block_size,
                dense=(f"{len(model) - 1}",), device=device, generator=torch.Generator().manual_seed(args.seed),
                print_summary=True)
    sparse = [(name, m) for name, m in model.named_modules() if isinstance(m, rs.SparseModule)]
    n_trainable = sum(p.numel() for p in model.parameters())
    print(f"sparse model: {len(sparse)} sparse layers, {n_trainable / 1e6:.1f} M trainable parameters "
          f"({n_trainable / n_dense:.4f}x dense), built in {time.perf_counter() - start:.1f} s")
    for name, m in sparse:
        print(f"  layer {name}: {tuple(m.weight_shape())}, density {m.layout.density():.4f}, "
              f"{m.layout.nnzb} of {m.layout.n_blocks} blocks of {args.block_size}x{args.block_size}")

    ds = data.load(args.data_dir)
    images = ((ds["train_images"].float() / 255.0 - 0.2860) / 0.3530).to(device)
    labels = ds["train_labels"].to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    t_end = int(0.75 * args.steps)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=args.delta_t, t_end=t_end, alpha=0.3)
    generator = torch.Generator().manual_seed(args.seed)
    losses = []
    start = time.perf_counter()
    for step in range(args.steps):
        idx = torch.randint(len(images), (args.batch_size,), generator=generator).to(device)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        loss.backward()
        updating = not scheduler.step()
        if not updating:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if updating or step % 25 == 0 or step == args.steps - 1:
            recent = sum(losses[-25:]) / len(losses[-25:])
            note = f"  topology update: {scheduler.stats['blocks_moved']} blocks moved so far" if updating else ""
            print(f"step {step:4d}  loss {loss.item():.4f}  (mean of last {min(25, len(losses))}: {recent:.4f})  "
                  f"{time.perf_counter() - start:6.1f} s{note}", flush=True)

    training_time = time.perf_counter() - start
    test_images = ((ds["test_images"][:args.test_examples].float() / 255.0 - 0.2860) / 0.3530).to(device)
    test_labels = ds["test_labels"][:args.test_examples].to(device)
    with torch.no_grad():
        correct = sum(int((model(x).argmax(1) == y).sum()) for x, y in zip(test_images.split(500),
                                                                            test_labels.split(500)))
    report = rs.memory_report(model, optimizer)
    first, last = sum(losses[:25]) / min(25, len(losses)), sum(losses[-25:]) / min(25, len(losses))
    peak = peak_memory(device)
    print(f"loss: mean of the first 25 steps {first:.4f}, of the last 25 {last:.4f}")
    print(f"topology updates: {scheduler.stats['updates']}, blocks moved: {scheduler.stats['blocks_moved']}")
    print(f"test accuracy on the first {len(test_labels)} test images: {correct / len(test_labels):.4f}")
    print(f"state: parameters {report.parameters / GiB:.2f} GiB, Adam {report.optimizer_state / GiB:.2f} GiB, "
          f"topology {report.topology / GiB:.3f} GiB")
    print(f"peak memory of this process: {peak / GiB:.2f} GiB, against {dense_bytes / GiB:.1f} GiB for the dense "
          f"model's training state ({peak / dense_bytes:.4f}x); {math.ceil(training_time)} s of training")


if __name__ == "__main__":
    main()
