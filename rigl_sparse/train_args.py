"""The command line of ``python -m rigl_sparse.train``: its options, their checks and their defaults."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import torch

from rigl_sparse.models import MODELS

# --algorithm -> RigLScheduler's grow rule (None: not a RigL-style scheduler), in the order --help lists them
ALGORITHMS = {"rigl": "gradient", "set": "random", "static": "none", "snfs": "momentum", "prune": None, "dense": None}
MASKED_ONLY = ("snfs", "prune")
# --lr's default per --optimizer; --optimizer's help says why SGD is the default (benchmarks/results/accuracy_adam)
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3}
DEFAULT_DENSITY = 0.1
DESCRIPTION = """\
Train a model on Fashion-MNIST, sparse (block-sparse RigL or a baseline) or dense, and report its
test accuracy, per-layer densities, parameters and training FLOPs against the dense model."""
EPILOG = """\
examples:
  %(prog)s                                    RigL, density 0.1 (ERK), 4x4 blocks, SGD
  %(prog)s --algorithm set --block-size 1     unstructured SET (masked layers)
  %(prog)s --algorithm prune --density 0.05   gradual magnitude pruning, dense to 5%%
  %(prog)s --compare-dense                    also train dense; compare wall-clocks

--algorithm says how the topology is trained; --distribution how the density is shared out over the layers.
"""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default after its help, unless the help says it in words (a default of None means
    something different per option); the epilog's examples as written."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class _OldSpelling(argparse.Action):
    """An option under its old name: stores into the new option's ``dest`` and says on stderr to use ``new``."""

    def __init__(self, option_strings, dest, *, new: str, **kwargs):
        super().__init__(option_strings, dest, **kwargs)
        self.new = new

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: {option_string} is the old spelling of {self.new}; it still works, but use "
              f"{self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


# ---- argument types: a bad value is refused by argparse, with the flag's name, before any data loads ----------

def _number(text: str, kind, test, what: str):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if kind is float and not math.isfinite(value) or not test(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(text, int, lambda v: v > 0, "a positive integer")


def positive_float(text: str) -> float:
    return _number(text, float, lambda v: v > 0, "a positive finite number")


def non_negative_float(text: str) -> float:
    return _number(text, float, lambda v: v >= 0, "a finite number >= 0")


def density(text: str) -> float:
    return _number(text, float, lambda v: 0 < v <= 1, "in (0, 1]")


def fraction(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "in [0, 1]")


def device(text: str) -> str:
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device (cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: this torch has no usable CUDA device "
                                         f"(torch {torch.__version__}, torch.cuda.is_available() is False)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: there are {torch.cuda.device_count()} CUDA devices")
    return text


def output_file(text: str) -> str:
    folder = Path(text).expanduser().resolve().parent
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: the folder {str(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot write {text!r}: the folder {str(folder)!r} is not writable")
    return text


def pictures_folder(text: str) -> str:
    if importlib.util.find_spec("matplotlib") is None:
        raise argparse.ArgumentTypeError("drawing the pictures needs matplotlib: pip install matplotlib "
                                         "(rigl_sparse's [bench] extra)")
    folder = Path(text).expanduser().resolve()
    parent = folder if folder.exists() else folder.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise argparse.ArgumentTypeError(f"cannot draw into {text!r}: {str(parent)!r} is not a writable folder")
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rigl_sparse.train", description=DESCRIPTION,
                                epilog=EPILOG, formatter_class=_HelpFormatter)
    model = p.add_argument_group("model")
    model.add_argument("--model", choices=sorted(MODELS), default="mlp",
                       help="the network: mlp (LeNet-300-100), wide-mlp (two hidden layers of 2048: wide enough "
                            "that the saved FLOPs show in the wall-clock), cnn (two conv stages and an MLP head), "
                            "resnet18 or mobilenet (rigl_sparse.models)")
    model.add_argument("--device", type=device, default="cpu", help="torch device to train on (cpu, cuda, cuda:1, ...)")
    model.add_argument("--seed", type=int, default=0,
                       help="seed of the initial weights, the initial topology, SET's random growth and the data "
                            "order")

    sparsity = p.add_argument_group("sparsity")
    sparsity.add_argument("--algorithm", choices=list(ALGORITHMS), default="rigl",
                          help="how the sparse topology is trained: rigl (drop by magnitude, grow by gradient), set "
                               "(grow at random), static (a fixed random topology), snfs (grow by dense gradient "
                               "momentum), prune (gradual magnitude pruning from dense) or dense (no sparsity)")
    sparsity.add_argument("--method", action=_OldSpelling, new="--algorithm", dest="algorithm",
                          choices=list(ALGORITHMS), metavar="ALGORITHM", default=argparse.SUPPRESS,
                          help="old spelling of --algorithm (deprecated; still accepted, with a note on stderr)")
    sparsity.add_argument("--density", type=density, default=None,
                          help="overall density of the sparse layers: the fraction of their weights that are active "
                               f"(default {DEFAULT_DENSITY}; none with --algorithm dense)")
    sparsity.add_argument("--distribution", choices=("uniform", "er", "erk"), default="erk",
                          help="how the density is shared out over the layers: uniform (the same in every layer), er "
                               "(Erdos-Renyi: by fan-in + fan-out) or erk (Erdos-Renyi-Kernel: by all the weight's "
                               "dimensions, kernel included)")
    sparsity.add_argument("--block-size", type=positive_int, default=4, metavar="B",
                          help="side B of the B x B weight blocks that are active or not; 1 is unstructured")
    sparsity.add_argument("--first-dense", action=argparse.BooleanOptionalAction, default=None,
                          help="keep the first layer dense and outside the density budget (default: only for "
                               "--distribution uniform, as in the paper)")
    sparsity.add_argument("--mode", choices=("auto", "compressed", "masked"), default="auto",
                          help="compressed block-sparse layers (only the active blocks exist), or dense layers under "
                               "block masks (the reference); auto is masked for block size 1, snfs and prune, else "
                               "compressed")

    schedule = p.add_argument_group("RigL schedule")
    schedule.add_argument("--delta-t", type=positive_int, default=100, metavar="STEPS",
                          help="training steps between two topology updates (or pruning steps)")
    schedule.add_argument("--alpha", type=fraction, default=0.3,
                          help="fraction of the active blocks dropped and regrown at the first update, "
                               "cosine-decayed to 0 at t_end")
    schedule.add_argument("--t-end-fraction", type=fraction, default=0.75,
                          help="t_end as a fraction of all steps: the last topology update, or the end of pruning")
    schedule.add_argument("--prune-start-fraction", type=fraction, default=0.1,
                          help="first pruning step as a fraction of all steps (--algorithm prune)")
    schedule.add_argument("--multiplier", type=positive_int, default=1, metavar="M",
                          help="the paper's RigL Mx: train M times longer; t_end and the learning-rate schedule "
                               "stretch with it")

    optimisation = p.add_argument_group("optimisation")
    optimisation.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd",
                              help="sgd: SGD with momentum 0.9, the paper's optimiser; adam: Adam. SGD is the "
                                   "default because Adam hurts RigL here: a grown weight starts with zero Adam moments "
                                   "and moves several times faster than an old one for hundreds of steps "
                                   "(benchmarks/results/accuracy_adam)")
    optimisation.add_argument("--lr", type=positive_float, default=None,
                              help="learning rate at the first step, cosine-decayed to 0 over training (default: "
                                   f"{DEFAULT_LR['sgd']:g} for sgd, as in the paper and the accuracy study; "
                                   f"{DEFAULT_LR['adam']:g} for adam)")
    optimisation.add_argument("--weight-decay", type=non_negative_float, default=0.0,
                              help="the optimiser's L2 weight decay")
    optimisation.add_argument("--epochs", type=positive_int, default=10,
                              help="passes over the training set (times --multiplier)")
    optimisation.add_argument("--batch-size", type=positive_int, default=128, help="training examples per step")

    inputs = p.add_argument_group("data")
    inputs.add_argument("--data-dir", default=None, metavar="DIR",
                        help="directory with the four Fashion-MNIST IDX files (default: found as rigl_sparse.data "
                             "says; python -m rigl_sparse.data fetch downloads them)")
    inputs.add_argument("--train-subset", type=positive_int, default=None, metavar="N",
                        help="train on the first N training images only, for quick runs of large models; test on "
                             "all of them (default: train on all)")

    output = p.add_argument_group("output")
    output.add_argument("--compare-dense", action="store_true",
                        help="after the sparse run, train the dense model of the same architecture with the same "
                             "recipe and epochs, and print both training wall-clocks and test accuracies")
    output.add_argument("--out", type=output_file, default=None, metavar="JSON",
                        help="write the run's record as JSON here (default: not written)")
    output.add_argument("--save", type=output_file, default=None, metavar="PT",
                        help="save the trained model's state dict here (rs.save_checkpoint); a compressed model "
                             "loads back with rs.load_sparse(rigl_sparse.models.MODELS[model](), torch.load(PT)), "
                             "a masked one into the model given the same rs.apply_masks (default: not saved)")
    output.add_argument("--loss-log", type=output_file, default=None, metavar="CSV",
                        help="write every step's training loss, learning rate and whether the step changed the "
                             "topology (columns step, loss, lr, topology_update) as CSV here (default: not written)")
    output.add_argument("--pictures", type=pictures_folder, default=None, metavar="DIR",
                        help="draw the sparse layers' topology into DIR as PNGs: the active blocks coloured by age, "
                             "a strip of snapshots over training and the blocks moved per update (needs matplotlib; "
                             "default: none drawn)")
    output.add_argument("--no-progress", action="store_true",
                        help="no progress bar, and only the last epoch's accuracy")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.t_end_fraction == 0:
        p.error("argument --t-end-fraction: must be in (0, 1], got 0")
    if not 0.0 <= args.prune_start_fraction < args.t_end_fraction:
        p.error(f"--prune-start-fraction must be in [0, --t-end-fraction), got {args.prune_start_fraction}")
    if args.mode == "compressed" and args.algorithm in MASKED_ONLY:
        p.error(f"--algorithm {args.algorithm} needs dense weights or gradients: use --mode masked (or auto)")
    if args.compare_dense and args.algorithm == "dense":
        p.error("--compare-dense compares a sparse run with the dense one: use a sparse --algorithm")
    if args.algorithm == "dense" and args.density is not None:
        print(f"{p.prog}: --density {args.density:g} has no effect: --algorithm dense trains every weight",
              file=sys.stderr)
    if args.density is None:
        args.density = DEFAULT_DENSITY
    if args.lr is None:
        args.lr = DEFAULT_LR[args.optimizer]
    if args.mode == "auto":
        args.mode = "masked" if args.block_size == 1 or args.algorithm in MASKED_ONLY else "compressed"
    return args
