import math

import pytest
import torch

from rigl_sparse.layout import BlockSparseLayout, block_count, build_views
from rigl_sparse.testing import random_block_sparse


@pytest.mark.parametrize("shape,b,density", [((64, 96), 16, 0.25), ((30, 50), 4, 0.1), ((10, 7), 32, 1.0),
                                             ((33, 65), 8, 0.5)])
def test_random_layout_has_exact_block_count_and_is_valid(shape, b, density):
    layout = BlockSparseLayout.random(shape, b, density=density, generator=torch.Generator().manual_seed(1))
    R, C = math.ceil(shape[0] / b), math.ceil(shape[1] / b)
    assert layout.grid == (R, C)
    assert layout.nnzb == block_count(density, R * C) == min(R * C, max(1, round(density * R * C)))
    layout.validate()
    for t in layout.topology():
        assert t.dtype == torch.int32


def test_same_seed_same_topology_and_different_seed_differs():
    make = lambda seed: BlockSparseLayout.random((64, 64), 4, density=0.2,  # noqa: E731
                                                 generator=torch.Generator().manual_seed(seed))
    assert torch.equal(make(3).block_row, make(3).block_row) and torch.equal(make(3).block_col, make(3).block_col)
    assert not torch.equal(make(3).flat_index(), make(4).flat_index())


def test_views_are_sorted_and_consistent():
    layout, _ = random_block_sparse((48, 80), 8, 0.4)
    R, C = layout.grid
    dense_mask = layout.active_mask()
    for r in range(R):
        slots = layout.row_slots[layout.row_ptr[r]:layout.row_ptr[r + 1]].long()
        assert torch.all(layout.block_row[slots] == r)
        cols = layout.block_col[slots]
        assert torch.all(cols[1:] > cols[:-1])
        assert set(cols.tolist()) == set(torch.nonzero(dense_mask[r]).flatten().tolist())
    for c in range(C):
        slots = layout.col_slots[layout.col_ptr[c]:layout.col_ptr[c + 1]].long()
        assert torch.all(layout.block_col[slots] == c)
        rows = layout.block_row[slots]
        assert torch.all(rows[1:] > rows[:-1])


def _corruptions():
    yield "duplicate", lambda L: L.block_col.__setitem__(1, int(L.block_col[0])) or L.block_row.__setitem__(
        1, int(L.block_row[0])), "duplicate"
    yield "row out of range", lambda L: L.block_row.__setitem__(0, L.grid[0]), "block_row out of range"
    yield "negative col", lambda L: L.block_col.__setitem__(0, -1), "block_col out of range"
    yield "row_ptr", lambda L: L.row_ptr.__setitem__(-1, L.nnzb + 1), "row_ptr"
    yield "row_slots perm", lambda L: L.row_slots.__setitem__(0, int(L.row_slots[1])), "row_slots"
    yield "col_slots order", lambda L: L.col_slots.copy_(L.col_slots.flip(0)), "col_slots"
    yield "dtype", lambda L: setattr(L, "row_ptr", L.row_ptr.long()), "int32"


@pytest.mark.parametrize("name,corrupt,message", list(_corruptions()), ids=[c[0] for c in _corruptions()])
def test_validate_catches_each_broken_invariant(name, corrupt, message):
    layout, _ = random_block_sparse((64, 64), 8, 0.3, seed=2)
    layout.validate()
    corrupt(layout)
    with pytest.raises(ValueError, match=message):
        layout.validate()


def test_validate_checks_values_shape_and_padding():
    layout, values = random_block_sparse((30, 50), 8, 0.5)
    layout.validate(values)
    with pytest.raises(ValueError, match="shape"):
        layout.validate(values[:-1])
    bad = values.clone()
    bad[~layout.padding_mask()] = 1.0
    with pytest.raises(ValueError, match="padding"):
        layout.validate(bad)


def test_to_dense_places_blocks_and_crops_padding():
    layout, values = random_block_sparse((30, 50), 8, 0.5)
    dense = layout.to_dense(values)
    assert dense.shape == (30, 50)
    for s in range(layout.nnzb):
        r, c = int(layout.block_row[s]), int(layout.block_col[s])
        block = dense[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8]
        torch.testing.assert_close(block, values[s, :block.shape[0], :block.shape[1]])
    inactive = ~layout.active_mask()
    for r, c in torch.nonzero(inactive).tolist():
        assert torch.all(dense[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] == 0)
    assert torch.equal(layout.gather(dense), values)


def test_from_dense_keeps_largest_blocks_with_index_tiebreak():
    w = torch.zeros(8, 12)
    w[0:4, 4:8] = 3.0   # block (0, 1): norm 12
    w[4:8, 8:12] = 2.0  # block (1, 2): norm 8
    w[4:8, 0:4] = 1.0   # block (1, 0): norm 4, ties with (0, 0)
    w[0:4, 0:4] = torch.eye(4) * 2.0  # block (0, 0): norm 4
    layout, values = BlockSparseLayout.from_dense(w, density=3 / 6, block_size=4)
    assert sorted(layout.flat_index().tolist()) == [0, 1, 5]  # the tie goes to the lower index 0 over 3
    expected = w.clone()
    expected[4:8, 0:4] = 0  # the dropped block
    torch.testing.assert_close(layout.to_dense(values), expected)


def test_nnz_and_density_ignore_padding():
    layout = BlockSparseLayout.from_flat((10, 7), 4, torch.arange(6))  # all 3x2 blocks of a 12x8 padded grid
    assert layout.nnz() == 70 and layout.density() == 1.0
    edge = BlockSparseLayout.from_flat((10, 7), 4, torch.tensor([5]))  # block (2, 1): 2 real rows x 3 real cols
    assert edge.nnz() == 6


def test_build_views_matches_python():
    g = torch.Generator().manual_seed(0)
    flat = torch.randperm(7 * 9, generator=g)[:20]
    row, col = flat // 9, flat % 9
    row_ptr, row_slots, col_ptr, col_slots = build_views(row, col, 7, 9)
    expected_rows = sorted(range(20), key=lambda s: (int(row[s]), int(col[s])))
    expected_cols = sorted(range(20), key=lambda s: (int(col[s]), int(row[s])))
    assert row_slots.tolist() == expected_rows and col_slots.tolist() == expected_cols
    # ptr[r] counts the slots of the block rows before r (by counting, not the implementation's cumsum)
    assert row_ptr.tolist() == [sum(int(row[s]) < r for s in range(20)) for r in range(8)]
    assert col_ptr.tolist() == [sum(int(col[s]) < c for s in range(20)) for c in range(10)]


def test_state_dict_round_trip_and_rejection():
    a, _ = random_block_sparse((64, 64), 8, 0.3, seed=1)
    b, _ = random_block_sparse((64, 64), 8, 0.3, seed=2)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.flat_index(), b.flat_index())
    b.validate()
    bad = a.state_dict()
    bad["block_col"] = bad["block_col"].clone()
    bad["block_col"][0] = 99
    before = b.flat_index().clone()
    with pytest.raises(ValueError, match="invalid topology"):
        b.load_state_dict(bad)
    assert torch.equal(b.flat_index(), before)  # untouched
    other, _ = random_block_sparse((64, 64), 8, 0.5)
    with pytest.raises(ValueError, match="shape"):
        b.load_state_dict(other.state_dict())


@pytest.mark.parametrize("kwargs,error", [
    (dict(density=0.0), ValueError), (dict(density=1.5), ValueError), (dict(density=float("nan")), ValueError),
    (dict(density="0.5"), TypeError), (dict(density=0.5, block_size=0), ValueError),
])
def test_random_rejects_bad_arguments(kwargs, error):
    block_size = kwargs.pop("block_size", 4)
    with pytest.raises(error):
        BlockSparseLayout.random((16, 16), block_size, **kwargs)


def test_the_topology_is_named_in_the_order_the_ops_take_it():
    from rigl_sparse.topology import Topology

    layout = BlockSparseLayout.random((40, 24), block_size=8, density=0.5, generator=torch.Generator().manual_seed(0))
    topology = layout.topology()
    assert isinstance(topology, Topology) and Topology._fields == tuple(dict(layout.named_buffers()))
    assert all(getattr(topology, name) is buffer for name, buffer in layout.named_buffers())
    assert (topology.nnzb, topology.rows, topology.cols) == (layout.nnzb, *layout.grid) == (layout.nnzb, 5, 3)
    assert Topology(*list(topology)) == topology  # what the dispatcher hands a kernel, named again
