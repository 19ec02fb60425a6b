"""Extra peak memory of a ``SparseConv2d`` backward pass on a RigL update step (grow scores armed), CPU.

    python benchmarks/bench_conv_update_memory.py N C HW GROUPS     # e.g. 64 64 28 1

A 3x3 convolution C -> C, padding 1, density 0.1, blocks of 16, on an N x C x HW x HW batch: the growth of
the process's peak resident set over an ordinary step, and over that an update step, whose grow scores
build the whole batch's patch matrix (``rigl_sparse/ops/conv2d/compute.py``).  Run each size in a fresh
process (the peak resident set only rises).
"""
import resource
import sys

import torch

import rigl_sparse as rs

torch.manual_seed(0)
n, c, hw, groups = (int(a) for a in sys.argv[1:5])
layer = rs.SparseConv2d(c, c, 3, padding=1, groups=groups, density=0.1, block_size=16)
x = torch.randn(n, c, hw, hw, requires_grad=True)


def rss():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux reports KiB)


for _ in range(3):  # warm: allocator, thread pools
    layer(x).square().sum().backward()
    x.grad = layer.values.grad = layer.bias.grad = None
base = rss()
layer(x).square().sum().backward()
x.grad = layer.values.grad = layer.bias.grad = None
ordinary = rss()
layer.request_grow_scores(max(1, layer.layout.nnzb // 3))
layer(x).square().sum().backward()
layer.take_grow_scores()
update = rss()
K = 9 * c // groups
print(f"N={n} C={c} {hw}x{hw} groups={groups}: ordinary step peak +{ordinary - base:.0f} MiB, "
      f"update step peak +{update - ordinary:.0f} MiB more; whole-batch patches N*OH*OW*K*4 = "
      f"{n * hw * hw * K * 4 / 2**20:.0f} MiB (per group)")
