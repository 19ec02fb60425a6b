"""A CNN with block-sparse convolutions (``rs.SparseConv2d``) trained with RigL on Fashion-MNIST.

    python examples/sparse_cnn.py                 # 3 epochs, 90.4% test accuracy: about 2 minutes on 2 CPU cores
    python examples/sparse_cnn.py --fake-data 6000 --epochs 1 --delta-t 10   # synthetic images, no data set: 10 s

The model is ``rigl_sparse.models.cnn`` (two 3x3 convolutions with ReLU and max-pooling, then two linear
layers); ``rs.sparsify`` turns its convolutions into ``rs.SparseConv2d`` and its linear layers into
``rs.SparseLinear``, ERK at ``--density`` with ``--block-size`` blocks of the weight matrices
(``[out, 3 * 3 * in]`` for a convolution).  Layers that ERK would make denser than 1 stay dense.  The recipe is
the one the project's accuracy study measured: SGD with momentum 0.9, learning rate 0.1 cosine-decayed to 0,
batches of 128, RigL updating the topology every ``--delta-t`` steps with ``t_end`` at 3/4 of training (at
uniform density 0.05 one seed of it collapses: ``benchmarks/results/accuracy/investigation/`` says why).

Prints the test accuracy after every epoch, each layer's density, and the FLOPs (``rs.flops``, the RigL
paper's conventions) of a forward pass and of a RigL training step against the dense model.  The data:
Fashion-MNIST as ``rigl_sparse.data`` finds it (``--data-dir``, ``$RIGL_SPARSE_DATA``, Debian's
``dataset-fashion-mnist``, or the cache that ``python -m rigl_sparse.data fetch`` fills); ``--fake-data``
trains on noisy copies of ten random patterns instead, which a CNN learns within an epoch.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import Counter

import torch
import torch.nn.functional as F

import rigl_sparse as rs
from rigl_sparse import data
from rigl_sparse.models import cnn
from rigl_sparse.train import evaluate, layer_summary, prepare


def fake_fashion_mnist(train: int, test: int, seed: int) -> dict[str, torch.Tensor]:
    """Fashion-MNIST's four tensors (``uint8 [N, 28, 28]`` images, ``int64 [N]`` labels): ten random
    black-and-white patterns of blobs, one per class, under noise."""
    generator = torch.Generator().manual_seed(seed)
    patterns = F.interpolate(torch.rand(10, 1, 7, 7, generator=generator), size=(28, 28), mode="bilinear")[:, 0] > 0.5

    def draw(n):
        labels = torch.randint(10, (n,), generator=generator)
        images = 0.5 * patterns[labels] + 0.5 * torch.rand(n, 28, 28, generator=generator)
        return (255 * images).to(torch.uint8), labels

    (train_images, train_labels), (test_images, test_labels) = draw(train), draw(test)
    return {"train_images": train_images, "train_labels": train_labels, "test_images": test_images,
            "test_labels": test_labels}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--epochs", type=int, default=3, help="passes over the training images")
    p.add_argument("--batch-size", type=int, default=128, help="images per step")
    p.add_argument("--channels", type=int, nargs=2, default=(32, 64), metavar=("C1", "C2"),
                   help="output channels of the two convolutions")
    p.add_argument("--hidden", type=int, default=256, help="width of the hidden linear layer")
    p.add_argument("--density", type=float, default=0.1, help="overall density of the sparse layers (ERK)")
    p.add_argument("--block-size", type=int, default=8, help="side of the square blocks")
    p.add_argument("--lr", type=float, default=0.1, help="SGD learning rate, cosine-decayed to 0")
    p.add_argument("--delta-t", type=int, default=100, help="steps between topology updates")
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST's IDX files (None: where rigl_sparse.data looks)")
    p.add_argument("--fake-data", type=int, default=None, metavar="N",
                   help="train on N synthetic images (and test on N / 4) instead of Fashion-MNIST")
    p.add_argument("--device", default="cpu", help="where to train: cpu, cuda, ...")
    p.add_argument("--seed", type=int, default=0, help="seeds the model, its blocks, the order and RigL")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    ds = data.load(args.data_dir) if args.fake_data is None else \
        fake_fashion_mnist(args.fake_data, max(1, args.fake_data // 4), args.seed)
    train_x, train_y = prepare(ds["train_images"], device), ds["train_labels"].to(device)
    test_x, test_y = prepare(ds["test_images"], device), ds["test_labels"].to(device)
    model = cnn(channels=tuple(args.channels), hidden=args.hidden).to(device)
    dense_parameters = sum(p.numel() for p in model.parameters())
    rs.sparsify(model, density=args.density, block_size=args.block_size,
                generator=torch.Generator().manual_seed(args.seed), print_summary=True)
    sparse = Counter(type(m).__name__ for m in model.modules() if isinstance(m, rs.SparseModule))
    print(f"{'synthetic' if args.fake_data else 'Fashion-MNIST'}: {len(train_x):,} training and {len(test_x):,} "
          f"test images; CNN with {', '.join(f'{n} {kind}' for kind, n in sparse.items())}: "
          f"{sum(p.numel() for p in model.parameters()):,} parameters against {dense_parameters:,} dense")

    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    steps_per_epoch = math.ceil(len(train_x) / args.batch_size)
    total_steps = args.epochs * steps_per_epoch
    lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
    scheduler = rs.RigLScheduler(model, optimizer, delta_t=args.delta_t, t_end=max(1, int(0.75 * total_steps)),
                                 seed=args.seed)
    shuffle = torch.Generator().manual_seed(args.seed)
    accuracies, start = [], time.perf_counter()
    for epoch in range(args.epochs):
        order = torch.randperm(len(train_x), generator=shuffle).to(device)
        for i in range(steps_per_epoch):
            index = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = F.cross_entropy(model(train_x[index]), train_y[index])
            loss.backward()
            if scheduler.step():  # False on a topology update: the optimizer skips that step, as in the paper
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            lr_schedule.step()
        accuracies.append(evaluate(model, test_x, test_y))
        print(f"epoch {epoch + 1}/{args.epochs}: training loss {loss.item():.3f}, test accuracy "
              f"{accuracies[-1]:.4f} ({time.perf_counter() - start:.0f} s)", flush=True)

    layers = layer_summary(model)
    print(f"RigL: {scheduler.stats['updates']} topology updates, {scheduler.stats['blocks_moved']} blocks moved; "
          "layers:")
    for name, layer in layers.items():
        kind = type(model.get_submodule(name)).__name__
        blocks = f"{layer['block_size']}x{layer['block_size']} blocks" if layer["block_size"] else "dense"
        print(f"  {name:2s} {kind:12s} {str(tuple(layer['shape'])):12s} density {layer['density']:.4f} ({blocks})")
    report = rs.flops(model, (1,) + tuple(train_x.shape[1:]), delta_t=args.delta_t)
    print(f"FLOPs per image: forward {report.forward:.3e} against {report.dense_forward:.3e} dense "
          f"({report.forward / report.dense_forward:.3f}x); RigL training step {report.rigl_step:.3e} against "
          f"{report.dense_training_step:.3e} ({report.rigl_step / report.dense_training_step:.3f}x)")
    return {"accuracies": accuracies, "layers": layers, "stats": dict(scheduler.stats),
            "flops_ratio": report.rigl_step / report.dense_training_step}


if __name__ == "__main__":
    main()
