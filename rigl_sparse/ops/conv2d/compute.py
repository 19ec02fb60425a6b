"""The computation of the block-sparse convolution (``rigl_sparse::conv2d`` and its backward).

The weight is the ``[out, K]`` matrix with ``K = kh * kw * in_channels`` in
tap-major, channel-inner order: column ``(i * kw + j) * C + c`` holds
``weight[:, c, i, j]``.  A ``b``-wide block of columns is then ``b`` consecutive
input channels at one kernel tap (when ``b`` divides ``C``), which is contiguous
in a channels-last input.

The backend registry selects ``conv2d``'s implementation as it does every op's (``PATHS``).  On the native
``cpu`` and the ``triton`` backends the convolution runs as implicit GEMM, eager and compiled alike (the
``rigl_sparse::conv2d`` operator saves the input, never patches): the kernels gather each micro-tile's patch
rows from the padded input right before use and scatter the input gradient straight back, so no patch matrix
exists.  Elsewhere (the
reference or another backend, and Triton's input gradient under ``torch.use_deterministic_algorithms``)
the patches (``[N*OH*OW, K]``, im2col) are built for a chunk of images at a time (at most about
``PATCH_BYTES``), multiplied with the selected backend's ``dsd``/``sdd``/``dds``, and dropped; the input
gradient's patches are folded back onto the input.  The weight is never dense.

What costs more than that, said here rather than hidden:

* A RigL update step's grow scores (``_grow_scores``) need ``dY^T P`` over every row at once, so that
  backward pass builds the whole batch's patches, ``N*OH*OW x K`` (per group, ``K / groups`` wide), for the
  streaming ``block_scores``; ordinary steps never do.
* On the chunked-patches path a grouped convolution runs the backend's ``dsd`` once per group over every
  output channel and keeps the group's own (``groups`` times the forward's arithmetic), and the update
  step's grow scores run ``block_scores`` once per group; the implicit-GEMM paths run each group's blocks
  only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rigl_sparse import backends
from rigl_sparse.ops import _common, cpu_extension as _cpu
from rigl_sparse.ops.grow_tap import merge_candidates
from rigl_sparse.topology import Topology

PATCH_BYTES = 32 << 20  # patch buffer per chunk of images


@dataclass(frozen=True)
class ConvGeometry:
    """Kernel, stride, dilation, explicit padding (top, bottom, left, right) and groups of a convolution.

    With ``groups`` G, output channels ``[g*out/G, (g+1)*out/G)`` see input
    channels ``[g*C/G, (g+1)*C/G)`` only; the weight matrix is ``[out, KH*KW*C/G]``
    and the block size divides ``out/G``, so every block row lies in one group.
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    padding: tuple[int, int, int, int]
    groups: int = 1

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        (kh, kw), (sh, sw), (dh, dw), (top, bottom, left, right) = (self.kernel, self.stride, self.dilation,
                                                                     self.padding)
        out_h = (height + top + bottom - dh * (kh - 1) - 1) // sh + 1
        out_w = (width + left + right - dw * (kw - 1) - 1) // sw + 1
        return out_h, out_w


def _padded_nhwc(x: torch.Tensor, geometry: ConvGeometry) -> torch.Tensor:
    """x: [N, C, H, W] -> zero-padded [N, H', W', C] (a view where no padding is needed)."""
    nhwc = x.permute(0, 2, 3, 1)
    top, bottom, left, right = geometry.padding
    if top or bottom or left or right:
        nhwc = F.pad(nhwc, (0, 0, left, right, top, bottom))
    return nhwc


def _tap_slices(geometry: ConvGeometry, out_h: int, out_w: int):
    """For every kernel tap (i, j): the rows and columns of the padded input it reads."""
    (kh, kw), (sh, sw), (dh, dw) = geometry.kernel, geometry.stride, geometry.dilation
    for i in range(kh):
        for j in range(kw):
            rows = slice(i * dh, i * dh + (out_h - 1) * sh + 1, sh)
            cols = slice(j * dw, j * dw + (out_w - 1) * sw + 1, sw)
            yield rows, cols


def patches(x_padded: torch.Tensor, geometry: ConvGeometry, out_h: int, out_w: int) -> torch.Tensor:
    """Padded NHWC input [n, H', W', C] -> patches [n * out_h * out_w, kh * kw * C] (tap-major)."""
    n, c = x_padded.shape[0], x_padded.shape[3]
    taps = [x_padded[:, rows, cols, :] for rows, cols in _tap_slices(geometry, out_h, out_w)]
    return torch.cat(taps, dim=3).reshape(n * out_h * out_w, len(taps) * c)


def fold_patches(grad_patches: torch.Tensor, geometry: ConvGeometry, padded_shape, out_h: int,
                 out_w: int) -> torch.Tensor:
    """The adjoint of ``patches``: [n * out_h * out_w, kh * kw * C] -> padded NHWC gradient [n, H', W', C],
    summed over the taps in fp32 (fp64 for fp64)."""
    n, _, _, c = padded_shape
    grad = grad_patches.new_zeros(padded_shape, dtype=_common.accumulation_dtype(grad_patches.dtype))
    per_tap = grad_patches.view(n, out_h, out_w, -1, c)
    for t, (rows, cols) in enumerate(_tap_slices(geometry, out_h, out_w)):
        grad[:, rows, cols, :] += per_tap[:, :, :, t, :]
    return grad


def _chunks(n_images: int, rows_per_image: int, k: int, element_size: int):
    per_chunk = max(1, PATCH_BYTES // max(1, rows_per_image * k * element_size))
    for start in range(0, n_images, per_chunk):
        yield start, min(n_images, start + per_chunk)


def _path(x: torch.Tensor, values: torch.Tensor) -> str:
    """How the convolution runs: the registry selects ``conv2d``'s implementation for these tensors, as it does
    every op's (``PATHS``).

    ``"cpu"``: native implicit GEMM; ``"triton"``: Triton implicit GEMM; ``"patches"``: per-chunk
    patches through the selected backend's ``dsd``/``dds``/``sdd`` (the reference, or anything else).
    """
    return backends.select("conv2d", x.device.type, (x, values))[1]()


def _takes(path: str):
    return lambda: path


def _within(limits):
    """``supports`` of a path on (x, values): the backend's kernel limits, or None for a backend without."""
    return None if limits is None else lambda x, values: limits(x.dtype, values.shape[1])


# conv2d's implementation on each backend: the implicit-GEMM kernels where a backend has them, else patches
# through that backend's matmuls.
PATHS = {"cpu": "cpu", "triton": "triton", "cuda": "patches", "reference": "patches"}
for _backend, _how in PATHS.items():
    backends.register_impl("conv2d", _backend, _takes(_how), supports=_within(_common.KERNEL_LIMITS.get(_backend)))


def _geometry_list(geometry: ConvGeometry, out_h: int, out_w: int, out_channels: int) -> list[int]:
    return [out_h, out_w, *geometry.kernel, *geometry.stride, *geometry.dilation, geometry.groups,
            out_channels // geometry.groups]


def _run(op: str, *args):
    return _common.dispatch(op, args[0].device, args)(*args)


def forward(x, values, bias, topology, out_channels: int, geometry: ConvGeometry) -> torch.Tensor:
    """y [N, out, OH, OW] (channels-last memory) by the path the registry picks for ``dsd`` (``_path``)."""
    n, _, height, width = x.shape
    out_h, out_w = geometry.output_size(height, width)
    padded = _padded_nhwc(x, geometry)
    rows = n * out_h * out_w
    path = _path(x, values)
    if path == "cpu":
        y = x.new_empty(rows, out_channels)
        t = Topology(*topology)
        _cpu.extension().conv_forward_out(padded.contiguous(), values.contiguous(), bias, t.row_ptr, t.row_slots,
                                          t.block_col, _geometry_list(geometry, out_h, out_w, out_channels), y)
    elif path == "triton":
        from rigl_sparse.ops.conv2d import triton as conv_triton

        t = Topology(*topology)
        y = conv_triton.forward(padded.contiguous(), values.contiguous(), bias, t.row_ptr, t.row_slots, t.block_col,
                                out_channels, geometry, out_h, out_w)
    else:
        y = x.new_empty(rows, out_channels)
        per_image = out_h * out_w
        for start, stop in _chunks(n, per_image, _patch_cols(geometry, x.shape[1]), x.element_size()):
            chunk = slice(start * per_image, stop * per_image)
            for channels, outputs in _groups(geometry, x.shape[1], out_channels):
                cols = patches(padded[start:stop, :, :, channels], geometry, out_h, out_w)
                y_all = _run("dsd", cols, values, bias, *topology, out_channels)
                y[chunk, outputs] = y_all[:, outputs]  # the other groups' rows see other channels
    return y.view(n, out_h, out_w, out_channels).permute(0, 3, 1, 2)


def backward(grad_y, x, values, topology, out_channels: int, geometry: ConvGeometry, has_bias: bool, need_x: bool,
             need_values: bool, need_bias: bool, grow=None):
    """``(grad_x, grad_values, grad_bias)`` (None where not needed).  Grow candidates of ``dY^T P``: with
    ``grow = (scores, index, passes, keep)`` the best ``keep`` (``scores.numel()`` when 0) are merged into
    the buffers (``merge_candidates``)."""
    b = values.shape[1]
    n, _, height, width = x.shape
    out_h, out_w = geometry.output_size(height, width)
    dy = grad_y.permute(0, 2, 3, 1).contiguous().view(n * out_h * out_w, out_channels)
    padded = _padded_nhwc(x, geometry)
    path = _path(x, values)
    if path == "patches":
        grad_padded, grad_values = _backward_by_patches(dy, padded, values, topology, geometry, out_h, out_w, need_x,
                                                        need_values)
    else:
        # Triton's implicit-GEMM input gradient adds tiles atomically, in no fixed order: under
        # torch.use_deterministic_algorithms the input gradient takes the patches instead.
        by_patches = path == "triton" and need_x and torch.are_deterministic_algorithms_enabled()
        grad_padded, grad_values = _backward_implicit(path, dy, padded.contiguous(), values.contiguous(), topology,
                                                      geometry, out_h, out_w, need_x and not by_patches, need_values)
        if by_patches:
            grad_padded, _ = _backward_by_patches(dy, padded, values, topology, geometry, out_h, out_w, True, False)
    grad_x = None
    if need_x:
        top, _, left, _ = geometry.padding
        grad_x = grad_padded[:, top:top + height, left:left + width, :].to(x.dtype).permute(0, 3, 1, 2)
    grad_bias = dy.sum(dim=0, dtype=torch.float32).to(dy.dtype) if (has_bias and need_bias) else None
    if grow is not None:
        scores, index, passes, keep = grow
        merge_candidates(scores, index, passes,
                         *_grow_scores(dy, padded, topology, b, keep or scores.numel(), geometry, out_h, out_w))
    return grad_x, grad_values, grad_bias


def _patch_cols(geometry: ConvGeometry, channels: int) -> int:
    return geometry.kernel[0] * geometry.kernel[1] * channels // geometry.groups


def _groups(geometry: ConvGeometry, channels: int, out_channels: int):
    """(input channel slice, output channel slice) of every group."""
    cg, og = channels // geometry.groups, out_channels // geometry.groups
    return [(slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)) for g in range(geometry.groups)]


def _grow_scores(dy, padded, topology, b, k, geometry, out_h, out_w):
    """The layer's top-``k`` grow candidates from ``dY`` and the whole batch's patches, group by group.

    The criterion needs ``dY^T P`` over every row at once, so the batch's patches exist for this call
    (RigL update steps only); the dense weight gradient never does.
    """
    t = Topology(*topology)
    block_row, block_col = t.block_row, t.block_col
    groups = _groups(geometry, padded.shape[3], dy.shape[1])
    if len(groups) == 1:
        return _run("block_scores", dy, patches(padded, geometry, out_h, out_w), block_row, block_col, b, k)
    n_cols = -(-_patch_cols(geometry, padded.shape[3]) // b)
    found_scores, found_index = [], []
    for channels, outputs in groups:
        dy_group = torch.zeros_like(dy)
        dy_group[:, outputs] = dy[:, outputs]
        scores, index = _run("block_scores", dy_group, patches(padded[..., channels], geometry, out_h, out_w),
                             block_row, block_col, b, k)
        rows = index // n_cols  # keep this group's block rows: the others scored zero here
        mine = (index >= 0) & (rows * b >= outputs.start) & (rows * b < outputs.stop)
        found_scores.append(scores[mine])
        found_index.append(index[mine])
    scores, index = torch.cat(found_scores), torch.cat(found_index)
    order = torch.argsort(index, stable=True)  # lower index first among equal scores, as the reference
    scores, index = scores[order], index[order]
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    scores, index = scores[order], index[order]
    missing = k - scores.numel()
    return (torch.cat([scores, scores.new_full((missing,), float("-inf"))]),
            torch.cat([index, index.new_full((missing,), -1)]))


def _backward_implicit(path, dy, padded, values, topology, geometry, out_h, out_w, need_x, need_values):
    """(gradient of the padded input, of the values) by the cpu or triton implicit-GEMM kernels."""
    block_row, block_col, row_ptr, row_slots, col_ptr, col_slots = topology
    grad_padded = grad_values = None
    if path == "cpu":
        geometry_list = _geometry_list(geometry, out_h, out_w, dy.shape[1])
        if need_values:
            grad_values = torch.empty_like(values)
            _cpu.extension().conv_weight_grad_out(dy, padded, row_slots, block_row, block_col, geometry_list,
                                                  grad_values)
        if need_x:
            grad_padded = torch.zeros(padded.shape, dtype=torch.float32)
            _cpu.extension().conv_input_grad_out(dy, values, col_ptr, col_slots, block_row, geometry_list,
                                                 grad_padded)
        return grad_padded, grad_values
    from rigl_sparse.ops.conv2d import triton as conv_triton

    if need_values:
        grad_values = conv_triton.weight_grad(dy, padded, row_slots, block_row, block_col, values.shape[1], geometry,
                                              out_h, out_w)
    if need_x:
        grad_padded = conv_triton.input_grad(dy, values, col_ptr, col_slots, block_row, padded.shape, geometry, out_h,
                                             out_w)
    return grad_padded, grad_values


def _backward_by_patches(dy, padded, values, topology, geometry, out_h, out_w, need_x, need_values):
    """(gradient of the padded input, of the values) from per-chunk patches and the selected backend's ops.

    With groups, each group's patches meet ``dY`` with the other groups' columns zeroed, so they add
    nothing to the other groups' blocks or input channels.
    """
    n, b = padded.shape[0], values.shape[1]
    k = _patch_cols(geometry, padded.shape[3])
    groups = _groups(geometry, padded.shape[3], dy.shape[1])
    acc = _common.accumulation_dtype(values.dtype)
    grad_values = torch.zeros_like(values, dtype=acc) if need_values else None
    grad_padded = padded.new_empty(padded.shape, dtype=acc) if need_x else None
    per_image = out_h * out_w
    for start, stop in _chunks(n, per_image, k, padded.element_size()):
        dy_chunk = dy[start * per_image:stop * per_image]
        for channels, outputs in groups:
            if len(groups) > 1:
                dy_group = torch.zeros_like(dy_chunk)
                dy_group[:, outputs] = dy_chunk[:, outputs]
            else:
                dy_group = dy_chunk
            if need_values:
                cols = patches(padded[start:stop, :, :, channels], geometry, out_h, out_w)
                grad_values += _run("sdd", dy_group, cols, *topology, b)
            if need_x:
                grad_cols = _run("dds", dy_group, values, *topology, k)
                shape = (stop - start,) + tuple(padded.shape[1:3]) + (channels.stop - channels.start,)
                grad_padded[start:stop, :, :, channels] = fold_patches(grad_cols, geometry, shape, out_h, out_w)
    return grad_padded, (grad_values.to(values.dtype) if need_values else None)
