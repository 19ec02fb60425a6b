"""Property-based tests of the layout under random sequences of drops and grows."""

import pytest
import torch
from op_cases import check_results, run_all

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import rigl_sparse as rs  # noqa: E402
from rigl_sparse.layout import BlockSparseLayout  # noqa: E402


@st.composite
def layouts(draw):
    b = draw(st.sampled_from([4, 8]))
    R, C = draw(st.integers(1, 5)), draw(st.integers(2, 6))
    out = R * b - draw(st.integers(0, b - 1))
    K = C * b - draw(st.integers(0, b - 1))
    nnzb = draw(st.integers(1, R * C - 1))
    flat = torch.tensor(sorted(draw(st.permutations(range(R * C)))[:nnzb]))
    layout = BlockSparseLayout.from_flat((out, K), b, flat)
    values = torch.randn(nnzb, b, b, generator=torch.Generator().manual_seed(draw(st.integers(0, 2**16))))
    pad = layout.padding_mask()
    if pad is not None:
        values[~pad] = 0
    return layout, values


def _check_views(layout):
    R, C = layout.grid
    rows, cols = layout.block_row.long(), layout.block_col.long()
    for r in range(R):
        slots = layout.row_slots[layout.row_ptr[r]:layout.row_ptr[r + 1]].long()
        assert bool((rows[slots] == r).all()) and torch.equal(cols[slots], cols[slots].sort().values)
    for c in range(C):
        slots = layout.col_slots[layout.col_ptr[c]:layout.col_ptr[c + 1]].long()
        assert bool((cols[slots] == c).all())
    assert sorted(layout.row_slots.tolist()) == sorted(layout.col_slots.tolist()) == list(range(layout.nnzb))


def _ops_match_reference(layout, values):
    g = torch.Generator().manual_seed(0)
    out, K = layout.shape
    x, dy = torch.randn(5, K, generator=g), torch.randn(5, out, generator=g)
    for backend in ("reference", "selected"):
        results = run_all(backend, layout, values, x, dy, None, 2)
        check_results(results, layout, values, x, dy, None, 2)


@settings(max_examples=40, deadline=None)
@given(layouts(), st.data())
def test_random_drops_and_grows_keep_every_invariant(case, data):
    layout, values = case
    nnzb = layout.nnzb
    for _ in range(data.draw(st.integers(1, 4), label="updates")):
        active = set(layout.flat_index().tolist())
        inactive = sorted(set(range(layout.n_blocks)) - active)
        k = data.draw(st.integers(1, min(nnzb, len(inactive))), label="k")
        slots = torch.tensor(sorted(data.draw(st.permutations(range(nnzb)), label="slots")[:k]))
        grown = torch.tensor(data.draw(st.permutations(inactive), label="grown")[:k])
        C = layout.grid[1]
        dropped = set(layout.flat_index()[slots].tolist())
        rs.ops.update_topology(values, layout, slots, grown // C, grown % C)
        layout.validate(values)
        assert layout.nnzb == nnzb
        assert set(layout.flat_index().tolist()) == (active - dropped) | set(grown.tolist())
        moved = layout.flat_index()[slots]
        assert torch.equal(moved.sort().values, grown.sort().values)
        assert bool((values[slots] == 0).all())
        _check_views(layout)
        _ops_match_reference(layout, values)
