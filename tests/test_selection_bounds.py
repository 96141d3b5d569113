"""The pruning is exact only if its bounds are: check them against the float64 definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from selection.bounds import CentroidBounds
from selection.chamfer import chamfer_distance
from selection.greedy import _FastGreedy
from selection.inputs import prepare_pool
from tests.test_selection_greedy import KINDS, make_frames


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(KINDS), st.integers(1, 12), st.booleans())
def test_centroid_bound_is_an_upper_bound(seed, kind, dim, ragged):
    rng = np.random.default_rng(seed)
    frames = make_frames(rng, 10, dim, kind, ragged)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
    bounds = CentroidBounds(torch.from_numpy(np.concatenate(frames)), offsets)
    exact = np.array([[chamfer_distance(a, b) for b in frames] for a in frames])
    bound = np.stack([bounds.to_row(10, t) for t in range(10)], axis=1)
    assert (bound >= exact).all()
    assert (bounds.max_distance()[:, None] >= exact).all()
    rows, targets = np.array([9, 2, 2, 5]), np.array([3, 0, 7, 3])
    matrix = bounds.matrix(rows, targets)
    assert (matrix >= exact[np.ix_(rows, targets)]).all()
    # a matrix product instead of matrix-vector ones: float32 rounding differs, both are bounds
    np.testing.assert_allclose(matrix, bound[np.ix_(rows, targets)], rtol=1e-3)
    # rows can be reordered (the greedy keeps them by priority)
    order = rng.permutation(10)
    bounds.reorder(order)
    assert (bounds.matrix(np.arange(10), np.arange(10)) >= exact[np.ix_(order, order)]).all()


@pytest.mark.parametrize("offset", [0.0, 1000.0])  # far from the origin too: centres are stored shifted
def test_bound_is_reasonably_tight_for_compact_videos(offset):
    rng = np.random.default_rng(1)
    shift = offset * rng.standard_normal(8) / np.sqrt(8)
    frames = [(shift + c + 0.01 * rng.standard_normal((4, 8))).astype(np.float32)
              for c in rng.standard_normal((6, 8))]
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
    bounds = CentroidBounds(torch.from_numpy(np.concatenate(frames)), offsets)
    exact = np.array([chamfer_distance(frames[i], frames[0]) for i in range(6)])
    assert (bounds.to_row(6, 0) <= exact + 0.1).all()


class _CheckedGreedy(_FastGreedy):
    """Checks after every choice that no video was skipped on a wrong bound."""

    keys_checked = 0
    bounds_checked = 0

    def _choose(self):
        choice = super()._choose()
        k = self.selected.count_videos()
        if k and not self.full_mode:
            chosen = self.selected.ids
            key = np.empty(self.pool.size)
            key[self.order] = self.key_by_row
            for x in np.flatnonzero(self.candidate & (self.watermark < k)):
                exact = self.pool.difficulty[x] + self.lam * np.mean(
                    [chamfer_distance(self.pool.video_frames(x), self.pool.video_frames(s)) for s in chosen])
                assert key[x] >= exact
                _CheckedGreedy.keys_checked += 1
                if self.bound_watermark[x] == k:
                    bound = self.pool.difficulty[x] + self.lam * (
                        (self.distance_sum[x] + self.bound_missing[x]) / k)
                    assert bound >= exact - 1e-9
                    _CheckedGreedy.bounds_checked += 1
        return choice


def test_objective_bound_holds_for_every_stale_video_at_every_step():
    rng = np.random.default_rng(2)
    frames = make_frames(rng, 150, 6, "clustered", ragged=True)
    frames = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in frames]
    difficulty = np.round(rng.uniform(2.5, 3.5, 150), 2)  # close scores: many videos stay in reach
    pool = prepare_pool(difficulty, frames, initial=[5, 9])
    run = _CheckedGreedy(pool, 0.25, torch.device("cpu"), torch.float32, True, 1e-6, 32, 16)
    result = run.select(25)
    assert len(result.picks) == 25 and result.stats["mode"] == "pruned"
    # the checks really ran on many stale videos
    assert _CheckedGreedy.keys_checked > 1000 and _CheckedGreedy.bounds_checked > 100
