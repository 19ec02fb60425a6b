"""``SparseConv2d``: a drop-in ``nn.Conv2d`` whose weight is block-sparse."""

from __future__ import annotations


import torch
from torch import nn

from rigl_sparse._checks import check_positive_int
from rigl_sparse.layout import BlockSparseLayout
from rigl_sparse.nn.base import SparseModule
from rigl_sparse.nn.kinds import CONV2D
from rigl_sparse.ops.conv2d import ConvGeometry, conv2d


def _pair(name: str, value) -> tuple[int, int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value)
    pair = tuple(value) if isinstance(value, (tuple, list)) else ()
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in pair):
        raise TypeError(f"{name} must be an int or a pair of ints, got {type(value).__name__} {value!r}")
    return pair


class SparseConv2d(SparseModule):
    """``nn.Conv2d`` with the weight stored block-sparse.

    Args:
        in_channels: as ``nn.Conv2d``.
        out_channels: as ``nn.Conv2d``.
        kernel_size: as ``nn.Conv2d``.
        stride: as ``nn.Conv2d``.
        padding: as ``nn.Conv2d``; may be ``"same"`` or ``"valid"``.
        dilation: as ``nn.Conv2d``.
        groups: as ``nn.Conv2d``; ``block_size`` must divide ``out_channels / groups`` (a block row lies in
            one group), so depthwise convolutions stay dense ``nn.Conv2d`` under ``sparsify``.
        bias: as ``nn.Conv2d``.
        padding_mode: must be ``"zeros"``.
        density: fraction of the ``b x b`` blocks of the weight matrix that are active.
        block_size: ``b``.

    The weight is the ``[out_channels, kh * kw * in_channels / groups]`` matrix in
    tap-major, channel-inner column order (``to_dense()`` returns it in
    ``nn.Conv2d``'s ``[out, in, kh, kw]`` shape).  The active weights and the bias
    are initialised as ``nn.Conv2d`` does (uniform in ``±1/sqrt(fan_in)``).

    Input ``[N, in_channels, H, W]`` (contiguous or channels-last) of the
    parameters' dtype -> output ``[N, out_channels, OH, OW]`` in channels-last
    memory.
    """

    kind = CONV2D  # its FLOPs and matrix view (nn.kinds)

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, padding_mode: str = "zeros", *, density: float,
                 block_size: int = 32, device=None, dtype=None, generator: torch.Generator | None = None):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.dilation = _pair("dilation", dilation)
        for name, pair in (("kernel_size", self.kernel_size), ("stride", self.stride), ("dilation", self.dilation)):
            if min(pair) <= 0:
                raise ValueError(f"{name} must be positive, got {pair}")
        _check_groups(groups, in_channels, out_channels, block_size)
        self.groups = groups
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros', got {padding_mode!r}")
        self.padding_mode = padding_mode
        self.padding = padding
        self._geometry = ConvGeometry(self.kernel_size, self.stride, self.dilation, self._explicit_padding(padding),
                                      groups)
        self._create((out_channels, self.fan_in), block_size=block_size, density=density, bias=bias, device=device,
                     dtype=dtype, generator=generator)

    def geometry(self) -> dict[str, int]:
        return {"in_channels": self.in_channels, "out_channels": self.out_channels,
                "kernel_height": self.kernel_size[0], "kernel_width": self.kernel_size[1], "groups": self.groups,
                "block_size": self.block_size}

    @property
    def fan_in(self) -> int:
        return self.in_channels // self.groups * self.kernel_size[0] * self.kernel_size[1]

    def _explicit_padding(self, padding) -> tuple[int, int, int, int]:
        """(top, bottom, left, right) for an int, a pair, ``"valid"`` or ``"same"`` (as nn.Conv2d pads)."""
        if isinstance(padding, str):
            if padding == "valid":
                return (0, 0, 0, 0)
            if padding != "same":
                raise ValueError(f"padding must be an int, a pair, 'same' or 'valid', got {padding!r}")
            if self.stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1, got stride={self.stride}")
            out = []
            for k, d in zip(self.kernel_size, self.dilation):
                total = d * (k - 1)
                out += [total // 2, total - total // 2]
            return tuple(out)
        ph, pw = _pair("padding", padding)
        if ph < 0 or pw < 0:
            raise ValueError(f"padding must be non-negative, got {(ph, pw)}")
        return (ph, ph, pw, pw)

    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """Uniform ``±1/sqrt(fan_in)`` on active weights and bias, as ``nn.Conv2d``."""
        self._reset_uniform(self.fan_in, generator)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input must be [N, {self.in_channels}, H, W], got shape {tuple(x.shape)}")
        x, values, bias = self._operands(x)
        out_h, out_w = self._geometry.output_size(x.shape[2], x.shape[3])
        if out_h <= 0 or out_w <= 0:
            raise ValueError(f"input of spatial size {tuple(x.shape[2:])} is smaller than the kernel "
                             f"{self.kernel_size} (dilation {self.dilation}, padding {self.padding})")
        recorder = self.grow
        if recorder.armed and recorder.exact and torch.is_grad_enabled():
            y = conv2d(x, values, self.layout, bias, self._geometry)
            return recorder.tap(y, x, self.layout)  # keeps dY and x for the scheduler
        if not (recorder.armed and torch.is_grad_enabled()):
            return conv2d(x, values, self.layout, bias, self._geometry)
        # Each eager pass keeps its own top k, as a linear layer's tap does; a compiled graph keeps nnzb
        # (all the buffers hold), so that it never depends on the drop count.
        keep = 0 if torch.compiler.is_compiling() else recorder.k
        return conv2d(x, values, self.layout, bias, self._geometry, recorder.buffers, keep)

    def _supports_exact_grow_scores(self) -> bool:
        return True

    def gradient_band(self, inputs, r0: int, r1: int) -> torch.Tensor:
        """Rows of the accumulated weight gradient for output channels ``r0 * b : r1 * b`` (within one group
        at a time), from the kept inputs and output gradients with ``torch.nn.grad.conv2d_weight``."""
        layout = self.layout
        b = layout.block_size
        n_cols = layout.grid[1]
        top, bottom, left, right = self._geometry.padding
        out_per_group = self.out_channels // self.groups
        in_per_group = self.in_channels // self.groups
        kh, kw = self.kernel_size
        o0, o1 = r0 * b, min(r1 * b, self.out_channels)
        grad = torch.zeros((r1 - r0) * b, n_cols * b, dtype=torch.float32, device=layout.block_row.device)
        for dy, x in inputs:  # a rank with no micro-batch contributes zeros
            x = nn.functional.pad(x, (left, right, top, bottom))
            for g in range(o0 // out_per_group, (o1 - 1) // out_per_group + 1):
                lo, hi = max(o0, g * out_per_group), min(o1, (g + 1) * out_per_group)
                part = torch.nn.grad.conv2d_weight(
                    x[:, g * in_per_group:(g + 1) * in_per_group].float(), (hi - lo, in_per_group, kh, kw),
                    dy[:, lo:hi].float(), stride=self.stride, padding=0, dilation=self.dilation)
                grad[lo - o0:hi - o0, :self.fan_in] += weight_matrix(part)
        return grad

    # -------------------------------------------------------------- conversion
    @classmethod
    def from_dense(cls, conv: nn.Conv2d, *, density: float, block_size: int = 32) -> SparseConv2d:
        """Keep the ``density`` fraction of ``conv``'s weight blocks with the largest Frobenius norm."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if conv.weight.is_meta:
            raise ValueError("conv has meta weights; use rs.sparsify(model, ..., device=...) for meta models")
        layout, values = BlockSparseLayout.from_dense(weight_matrix(conv.weight.detach()), density=density,
                                                      block_size=block_size)
        return cls.from_parts(conv, layout, values, conv.bias)

    @classmethod
    def from_parts(cls, conv: nn.Conv2d, layout: BlockSparseLayout, values: torch.Tensor,
                  bias: torch.Tensor | None) -> SparseConv2d:
        """A layer with ``conv``'s configuration and the given layout, values and bias (copied)."""
        if conv.padding_mode != "zeros":
            raise ValueError(f"SparseConv2d takes padding_mode='zeros', got {conv.padding_mode!r}")
        _check_groups(conv.groups, conv.in_channels, conv.out_channels, layout.block_size)
        layer = cls.__new__(cls)
        SparseModule.__init__(layer)
        layer.in_channels, layer.out_channels = conv.in_channels, conv.out_channels
        layer.kernel_size, layer.stride, layer.dilation = tuple(conv.kernel_size), tuple(conv.stride), \
            tuple(conv.dilation)
        layer.groups, layer.padding_mode, layer.padding = conv.groups, "zeros", conv.padding
        layer._geometry = ConvGeometry(layer.kernel_size, layer.stride, layer.dilation,
                                       layer._explicit_padding(conv.padding), conv.groups)
        layer.layout = layout.to(values.device)
        layer.values = nn.Parameter(values.detach().clone())
        layer.bias = None if bias is None else nn.Parameter(bias.detach().clone())
        layer._zero_padding_()
        return layer

    def to_dense(self) -> torch.Tensor:
        """The weight as a dense ``[out, in, kh, kw]`` tensor (detached)."""
        kh, kw = self.kernel_size
        matrix = self.layout.to_dense(self.values.detach())
        return matrix.view(self.out_channels, kh, kw, self.in_channels // self.groups).permute(0, 3, 1, 2).contiguous()

    def to_conv(self) -> nn.Conv2d:
        """An ``nn.Conv2d`` with the same function (dense weight, copied bias)."""
        conv = nn.Conv2d(self.in_channels, self.out_channels, self.kernel_size, self.stride, self.padding,
                         self.dilation, self.groups, bias=self.bias is not None, device=self.values.device,
                         dtype=self.values.dtype)
        with torch.no_grad():
            conv.weight.copy_(self.to_dense())
            if self.bias is not None:
                conv.bias.copy_(self.bias)
        return conv

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, groups={self.groups}, "
                f"bias={self.bias is not None}, {self._density_words()}, block_size={self.block_size}")


def _check_groups(groups: int, in_channels: int, out_channels: int, block_size: int) -> None:
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels={in_channels} and out_channels={out_channels} must be divisible by "
                         f"groups={groups}")
    if groups > 1 and (out_channels // groups) % block_size:
        raise ValueError(f"block_size={block_size} must divide out_channels / groups = {out_channels // groups} "
                         "so that every block row lies in one group (keep such convolutions dense)")


def weight_matrix(weight: torch.Tensor) -> torch.Tensor:
    """``nn.Conv2d`` weight [out, in/groups, kh, kw] -> the ``[out, kh * kw * in/groups]`` matrix SparseConv2d
    stores."""
    return CONV2D.matrix(weight)
