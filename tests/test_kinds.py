"""Layer kinds: a kind declared outside the package (nn.Conv1d here) is counted by rs.flops and trained by
masked mode with no list of layer types to extend; the built-in kinds read their weights as the compressed
layers store them."""

import math

import torch
from torch import nn

import rigl_sparse as rs
from rigl_sparse.nn.kinds import CONV2D, HF_CONV1D, LINEAR, LayerKind, kind_of


class Conv1dKind(LayerKind):
    """``nn.Conv1d``: weight ``[out, in/groups, k]`` read tap-major (``K = k * in/groups``); rows are the
    output positions ``N * L_out``."""

    name = "nn.Conv1d"

    def covers(self, module):
        return isinstance(module, nn.Conv1d)

    def matrix(self, weight):
        return weight.permute(0, 2, 1).reshape(weight.shape[0], -1)

    def from_matrix(self, matrix, weight_shape):
        out, cin, k = weight_shape
        return matrix.reshape(out, k, cin).permute(0, 2, 1)

    def rows(self, inputs, output):
        return output.numel() // output.shape[1]


class KindConv1d(nn.Conv1d):
    kind = Conv1dKind()


def _net():
    torch.manual_seed(0)
    return nn.Sequential(KindConv1d(8, 16, 3, padding=1), nn.ReLU(), KindConv1d(16, 12, 5), nn.Flatten(),
                         nn.Linear(12 * 12, 4))


def test_a_kind_declared_outside_the_package_is_counted_by_flops():
    net = _net()
    report = rs.flops(net, (2, 8, 16))
    assert report.layers["0"] == (2.0 * 16 * 8 * 3 * 2 * 16,) * 2  # out * in * k * (N * L_out)
    assert report.layers["2"] == (2.0 * 12 * 16 * 5 * 2 * 12,) * 2
    assert report.layers["4"] == (2.0 * 4 * 144 * 2,) * 2
    rs.apply_masks(net, density=0.5, distribution="uniform", block_size=4, first_dense=False,
                   generator=torch.Generator().manual_seed(0))
    masked = rs.flops(net, (2, 8, 16))
    for name in ("0", "2", "4"):
        mask = net.get_submodule(name).block_mask
        sparse, dense = masked.layers[name]
        assert sparse == dense * mask.nnz() / math.prod(mask.weight_shape)


def test_masked_mode_trains_a_kind_declared_outside_the_package_through_its_matrix_view():
    net = _net()
    rs.apply_masks(net, density=0.4, distribution="uniform", block_size=4, first_dense=False,
                   generator=torch.Generator().manual_seed(1))
    conv = net[2]
    mask = conv.block_mask
    assert mask.grid == (3, 20)  # [12, 5 * 16] as the kind reads it
    # every masked-out weight entry lies in an inactive block of the kind's matrix
    matrix = Conv1dKind().matrix(conv.weight.detach())
    active = mask.active.repeat_interleave(4, 0).repeat_interleave(4, 1)[:12, :80]
    assert bool((matrix[~active] == 0).all()) and bool((matrix[active] != 0).all())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    sched = rs.RigLScheduler(net, opt, delta_t=2, t_end=8, alpha=0.5)
    before = mask.active.clone()
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        x, y = torch.randn(8, 8, 16, generator=g), torch.randint(0, 4, (8,), generator=g)
        nn.functional.cross_entropy(net(x), y).backward()
        if sched.step():
            opt.step()
        opt.zero_grad()
    assert not torch.equal(mask.active, before) and int(mask.active.sum()) == int(before.sum())
    matrix = Conv1dKind().matrix(conv.weight.detach())
    active = mask.active.repeat_interleave(4, 0).repeat_interleave(4, 1)[:12, :80]
    assert bool((matrix[~active] == 0).all())


def test_the_built_in_kinds_read_weights_as_the_compressed_layers_store_them():
    conv = nn.Conv2d(4, 8, 3)
    sparse = rs.SparseConv2d.from_dense(conv, density=1.0, block_size=4)
    assert torch.equal(sparse.values.detach(), sparse.layout.gather(CONV2D.matrix(conv.weight.detach())))
    assert torch.equal(CONV2D.from_matrix(CONV2D.matrix(conv.weight), tuple(conv.weight.shape)), conv.weight)
    assert kind_of(sparse) is CONV2D and kind_of(rs.SparseLinear(8, 4, density=0.5, block_size=4)) is LINEAR
    assert kind_of(conv) is CONV2D and kind_of(nn.Linear(3, 2)) is LINEAR and kind_of(nn.Conv1d(2, 2, 1)) is None


class Conv1D(nn.Module):
    """Hugging Face's Conv1D as GPT-2 has it: ``y = x @ weight + bias``, weight ``[in, out]``."""

    def __init__(self, nf, nx):
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf))
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x):
        return x @ self.weight + self.bias


def test_masked_mode_masks_hugging_face_conv1d_by_its_transposed_weight():
    torch.manual_seed(0)
    net = nn.Sequential(Conv1D(12, 8), nn.Tanh(), Conv1D(4, 12))
    assert kind_of(net[0]) is HF_CONV1D
    rs.apply_masks(net, density=0.5, distribution="uniform", block_size=4, first_dense=False,
                   generator=torch.Generator().manual_seed(0))
    mask = net[0].block_mask
    assert mask.matrix_shape == (12, 8) and mask.grid == (3, 2)
    weight_as_matrix = net[0].weight.detach().t()
    active = mask.active.repeat_interleave(4, 0).repeat_interleave(4, 1)
    assert bool((weight_as_matrix[~active] == 0).all()) and bool((weight_as_matrix[active] != 0).all())
    assert rs.flops(net, (5, 8)).layers["0"] == (2.0 * mask.nnz() * 5, 2.0 * 12 * 8 * 5)
