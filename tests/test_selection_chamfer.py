"""Chamfer distance: the float64 definition against a brute-force loop, and the batched
torch kernel against the definition (ragged sets, chunk boundaries, near-duplicates)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selection.chamfer import chamfer_distance, pairwise_euclidean
from selection.errors import FrameError
from selection.kernel import OPERAND_ALIGNMENT, OperandScratch, chamfer_matrix, distance_error_bound, make_block


def brute_force_chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """The formula spelled out with Python loops and math.dist."""
    a_to_b = sum(min(math.dist(x, y) for y in b) for x in a) / len(a)
    b_to_a = sum(min(math.dist(x, y) for x in a) for y in b) / len(b)
    return (a_to_b + b_to_a) / 2


@st.composite
def frame_set_pairs(draw):
    dim = draw(st.integers(1, 6))
    rows = st.lists(st.floats(-100, 100, allow_nan=False, width=32), min_size=dim, max_size=dim)
    a = np.array(draw(st.lists(rows, min_size=1, max_size=6)), dtype=np.float64)
    b = np.array(draw(st.lists(rows, min_size=1, max_size=6)), dtype=np.float64)
    return a, b


@settings(max_examples=150, deadline=None)
@given(frame_set_pairs())
def test_chamfer_matches_brute_force(pair):
    a, b = pair
    assert chamfer_distance(a, b) == pytest.approx(brute_force_chamfer(a, b), rel=1e-12, abs=1e-12)
    assert chamfer_distance(a, b) == pytest.approx(chamfer_distance(b, a), rel=1e-12, abs=1e-12)


def test_chamfer_known_values():
    a = np.array([[0.0, 0.0], [2.0, 0.0]])
    b = np.array([[0.0, 1.0]])
    # a -> b: (1 + sqrt(5)) / 2 ; b -> a: 1
    assert chamfer_distance(a, b) == pytest.approx(((1 + math.sqrt(5)) / 2 + 1) / 2)
    assert chamfer_distance(a, a) == 0.0
    assert chamfer_distance(a, a[::-1]) == 0.0  # order of frames does not matter


def test_chamfer_is_euclidean_not_squared():
    assert chamfer_distance([[0.0, 0.0]], [[3.0, 4.0]]) == pytest.approx(5.0)


@pytest.mark.parametrize("a, b, message", [
    (np.zeros((0, 3)), np.zeros((2, 3)), "non-empty"),
    (np.zeros((2, 3)), np.zeros((2, 4)), "dimensions differ"),
    (np.zeros(3), np.zeros((2, 3)), "non-empty"),
    (np.array([[np.nan, 0.0]]), np.zeros((1, 2)), "NaN"),
    (np.array([[np.inf, 0.0]]), np.zeros((1, 2)), "NaN"),
])
def test_chamfer_rejects_bad_frame_sets(a, b, message):
    with pytest.raises(FrameError, match=message):
        chamfer_distance(a, b)


def test_pairwise_euclidean_shape_and_values():
    a = np.array([[0.0, 0.0], [1.0, 1.0], [3.0, 0.0]])
    b = np.array([[0.0, 0.0], [0.0, 4.0]])
    expected = np.array([[0.0, 4.0], [math.sqrt(2), math.sqrt(10)], [3.0, 5.0]])
    np.testing.assert_allclose(pairwise_euclidean(a, b), expected, rtol=1e-15)


def _random_sets(rng, count, dim, lengths=(1, 7), scale=1.0, offset=0.0):
    return [(offset + scale * rng.standard_normal((rng.integers(*lengths), dim))).astype(np.float32)
            for _ in range(count)]


def _block(sets):
    offsets = np.concatenate([[0], np.cumsum([len(s) for s in sets])])
    return make_block(torch.from_numpy(np.concatenate(sets)), offsets, torch.float32)


@pytest.mark.parametrize("max_rows, max_cols", [(4096, 2048), (5, 3), (1, 1)])
@pytest.mark.parametrize("ragged", [True, False])
def test_kernel_matches_definition(max_rows, max_cols, ragged):
    rng = np.random.default_rng(3)
    lengths = (1, 7) if ragged else (4, 5)
    rows = _random_sets(rng, 23, 9, lengths)
    cols = _random_sets(rng, 7, 9, lengths)
    cols[2] = rows[5].copy()  # an identical video: distance exactly 0
    expected = np.array([[chamfer_distance(r, c) for c in cols] for r in rows])
    got = chamfer_matrix(_block(rows), _block(cols), max_rows=max_rows, max_cols=max_cols).numpy()
    assert got.dtype == np.float64 and got.shape == (23, 7)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got[5, 2] == 0.0


def test_kernel_is_exact_where_float32_expansion_cancels():
    """Frames far from the origin and close to each other: |x|^2 + |y|^2 - 2x.y in float32 is
    pure rounding noise there; the kernel recomputes those pairs from differences."""
    rng = np.random.default_rng(4)
    centre = 300.0 * rng.standard_normal(16)
    rows = [(centre + 1e-3 * rng.standard_normal((5, 16))).astype(np.float32) for _ in range(6)]
    cols = [rows[0].copy(), (centre + 1e-3 * rng.standard_normal((3, 16))).astype(np.float32)]
    expected = np.array([[chamfer_distance(r, c) for c in cols] for r in rows])
    got = chamfer_matrix(_block(rows), _block(cols)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)
    assert got[0, 0] == 0.0
    # The plain float32 expansion really is useless here, so the test exercises the refinement.
    r = torch.from_numpy(np.concatenate(rows))
    q = torch.from_numpy(np.concatenate(cols))
    naive = (r.square().sum(1, keepdim=True) + q.square().sum(1) - 2 * r @ q.t()).clamp_min(0).sqrt()
    exact = torch.cdist(r.double(), q.double())
    assert float((naive - exact).abs().max()) > 10 * float(exact.max())


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([1e-3, 1.0, 50.0]), st.sampled_from([0.0, 10.0, 1000.0]))
def test_kernel_error_within_bound(seed, scale, offset):
    rng = np.random.default_rng(seed)
    rows = _random_sets(rng, 9, 5, scale=scale, offset=offset)
    cols = _random_sets(rng, 4, 5, scale=scale, offset=offset)
    expected = np.array([[chamfer_distance(r, c) for c in cols] for r in rows])
    got = chamfer_matrix(_block(rows), _block(cols), max_rows=8, max_cols=6).numpy()
    max_norm = max(float(np.linalg.norm(s, axis=1).max()) for s in rows + cols)
    assert np.abs(got - expected).max() <= distance_error_bound(5, max_norm)


@pytest.mark.parametrize("dim", [6, 16, 512])
def test_distances_do_not_depend_on_where_the_frames_lie(dim):
    """The same frames at every float32 offset of a buffer (views into a pool start anywhere)
    give the same distances bit for bit: MKL's product rounds by address unless aligned."""
    rng = np.random.default_rng(dim)
    rows = torch.from_numpy(rng.standard_normal((9, dim)).astype(np.float32))
    cols = torch.from_numpy(rng.standard_normal((7, dim)).astype(np.float32))
    row_offsets, col_offsets = np.array([0, 4, 9]), np.array([0, 3, 7])
    expected = chamfer_matrix(make_block(rows, row_offsets, torch.float32),
                              make_block(cols, col_offsets, torch.float32))
    buffer = torch.empty(rows.numel() + cols.numel() + 64, dtype=torch.float32)
    for shift in range(OPERAND_ALIGNMENT // 4):
        placed_rows = buffer[shift : shift + rows.numel()].view(rows.shape)
        placed_cols = buffer[shift + rows.numel() : shift + rows.numel() + cols.numel()].view(cols.shape)
        placed_rows.copy_(rows)
        placed_cols.copy_(cols)
        got = chamfer_matrix(make_block(placed_rows, row_offsets, torch.float32),
                             make_block(placed_cols, col_offsets, torch.float32))
        assert torch.equal(got, expected), f"frames {4 * shift} bytes into the buffer"


def test_operand_scratch_places_aligned_equal_copies():
    base = torch.arange(40, dtype=torch.float32).view(10, 4)
    scratch = OperandScratch()
    for view in (base[1:6], base[3:], base.t()[:, 1:3]):
        operand = scratch.place(view, torch.float32)
        assert operand.data_ptr() % OPERAND_ALIGNMENT == 0 and operand.is_contiguous()
        assert torch.equal(operand, view)
    aligned = OperandScratch().place(base[1:6], torch.float32)
    assert scratch.place(aligned, torch.float32).data_ptr() == aligned.data_ptr()  # no second copy
    assert scratch.place(base, torch.float64).dtype == torch.float64
