"""Choosing the layers to sparsify: globs, types, first/last, tied weights."""

import pytest
import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.models import TransformerLM


def _lm():
    torch.manual_seed(0)
    return TransformerLM(vocab=20, width=32, layers=2, heads=2, ffn=64, max_length=8)


def _sparse_names(model):
    return sorted(name for name, m in model.named_modules() if isinstance(m, rs.SparseModule))


def test_include_and_exclude_by_glob_and_type():
    model = rs.sparsify(_lm(), density=0.5, distribution="uniform", block_size=8, first_dense=False,
                        include="blocks.*.ffn_*")
    assert _sparse_names(model) == ["blocks.0.ffn_in", "blocks.0.ffn_out", "blocks.1.ffn_in", "blocks.1.ffn_out"]
    model = rs.sparsify(_lm(), density=0.5, distribution="uniform", block_size=8, first_dense=False,
                        exclude=("head", "blocks.1.*"))
    assert _sparse_names(model) == [f"blocks.0.{n}" for n in ("ffn_in", "ffn_out", "k", "out", "q", "v")]
    cnn = nn.Sequential(nn.Conv2d(16, 16, 3), nn.Flatten(), nn.Linear(16, 16))
    rs.sparsify(cnn, density=0.5, block_size=8, distribution="uniform", first_dense=False, exclude=nn.Conv2d)
    assert type(cnn[0]) is nn.Conv2d and isinstance(cnn[2], rs.SparseLinear)


def test_first_and_last_dense():
    model = rs.sparsify(_lm(), density=0.5, distribution="uniform", block_size=8, first_dense=True, last_dense=True)
    names = _sparse_names(model)
    assert "blocks.0.q" not in names and "head" not in names and len(names) == 11
    masked = rs.apply_masks(_lm(), density=0.5, distribution="uniform", block_size=8, first_dense=False,
                            last_dense=True)
    assert not hasattr(masked.head, "block_mask") and hasattr(masked.blocks[0].q, "block_mask")


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(include="blocks.*.fnn_*"), ValueError, "matches no module"),
    (dict(exclude=("head", "heads")), ValueError, "'heads' matches no module"),
    (dict(include=3), TypeError, "include must be a glob string"),
    (dict(exclude=[torch.Tensor]), TypeError, "exclude patterns must be glob strings or nn.Module subclasses"),
    (dict(last_dense="yes"), TypeError, "last_dense must be a bool"),
    (dict(include=nn.Conv2d), ValueError, "among those include/exclude select"),
])
def test_selection_errors(kwargs, error, message):
    model = _lm()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(error, match=message):
        rs.sparsify(model, density=0.5, distribution="uniform", block_size=8, **kwargs)
    assert _sparse_names(model) == [] and all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_tied_weights_are_refused_unless_left_out():
    model = _lm()
    model.head.weight = model.embed.weight  # tie the head to the embedding
    with pytest.raises(ValueError, match=r"layer 'head' shares its weight with \['embed.weight'\].*exclude"):
        rs.sparsify(model, density=0.5, distribution="uniform", block_size=8)
    rs.sparsify(model, density=0.5, distribution="uniform", block_size=8, exclude="head")
    assert model.head.weight is model.embed.weight
