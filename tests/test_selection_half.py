"""Half-precision stores (float16, bfloat16): the documented rounding bound holds, is nearly
attained, and bounds what the rounded store does to the picks (near-greedy on the originals)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from selection.chamfer import chamfer_distance
from selection.greedy import select_greedy
from selection.kernel import store_rounding_error
from selection.objective import TIE_TOLERANCE

TORCH = {"float16": torch.float16, "bfloat16": torch.bfloat16}
U = 2.0**-11  # float16's unit roundoff

# 1-D frames around 1 (float16 spacing 2^-10 there) placed just short of the rounding midpoints:
# each one moves by almost half a spacing, the seed down, X and Y up and down onto the same value.
EPS = 2.0**-20
SEED = 1 + U - EPS  # -> 1
X = 1 + 3 * U + EPS  # -> 1 + 2^-9: its distance to the seed grows by almost 2 U
Y = 1 + 5 * U - EPS  # -> 1 + 2^-9 too: X and Y tie once rounded, Y is farther in truth


def rounded(frames: np.ndarray, dtype: str) -> np.ndarray:
    return torch.from_numpy(np.asarray(frames, dtype=np.float32)).to(TORCH[dtype]).to(torch.float64).numpy()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("scale", [1e-7, 1e-3, 1.0, 300.0])  # 1e-7: float16's subnormals
def test_frame_rounding_within_bound(dtype, scale):
    rng = np.random.default_rng(0)
    for dim in (1, 7, 512):
        frames = (scale * rng.standard_normal((200, dim))).astype(np.float32)
        stored = rounded(frames, dtype)
        bound = store_rounding_error(TORCH[dtype], dim, float(np.linalg.norm(stored, axis=1).max()))
        assert np.linalg.norm(frames - stored, axis=1).max() <= bound


def test_frame_rounding_bound_is_nearly_attained():
    """A value just below a float16 rounding midpoint moves by almost u |x|: the bound is tight."""
    stored = rounded([[X]], "float16")
    bound = store_rounding_error(torch.float16, 1, float(np.abs(stored).max()))
    assert 0.99 * bound < abs(X - stored[0, 0]) <= bound


def test_distance_moves_by_at_most_twice_the_bound_and_nearly_that():
    a, b = np.array([[SEED]]), np.array([[X]])
    moved = abs(chamfer_distance(rounded(a, "float16"), rounded(b, "float16")) - chamfer_distance(a, b))
    bound = store_rounding_error(torch.float16, 1, float(rounded([[X]], "float16").max()))
    assert 0.99 * 2 * bound < moved <= 2 * bound


def exact_objectives(frames, difficulty, selected, candidates, lam):
    return np.array([difficulty[x] + lam * np.mean([chamfer_distance(frames[x], frames[s]) for s in selected])
                     for x in candidates])


def check_near_greedy(frames, difficulty, result, initial, lam):
    """Every pick given the run's own earlier picks, judged with the originals' exact objectives:
    its reported objective within the run's documented bound, and at most twice that (plus the tie
    tolerance) below the best one. Returns the largest reported-vs-exact gap relative to the bound."""
    bound = result.stats["objective_error_bound"]
    selected = list(initial)
    remaining = [i for i in range(len(frames)) if i not in selected]
    worst = 0.0
    for pick, reported in zip(result.picks.tolist(), result.objectives):
        if selected:
            exact = exact_objectives(frames, difficulty, selected, remaining, lam)
        else:
            exact = np.asarray(difficulty, dtype=np.float64)[remaining]
        mine = exact[remaining.index(pick)]
        assert abs(reported - mine) <= bound
        assert mine >= exact.max() - TIE_TOLERANCE * max(1.0, abs(exact.max()) + bound) - 2 * bound
        worst = max(worst, abs(reported - mine) / bound)
        selected.append(pick)
        remaining.remove(pick)
    return worst


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_half_store_picks_within_documented_bound_on_clustered_pools(dtype, seed):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((5, 32))
    frames = []
    for _ in range(120):
        video = centres[rng.integers(5)] + 0.4 * rng.standard_normal(32) + 0.15 * rng.standard_normal((5, 32))
        frames.append((video / np.linalg.norm(video, axis=1, keepdims=True)).astype(np.float32))
    difficulty = np.round(rng.uniform(1, 5, 120), 2)
    result = select_greedy(difficulty, frames, 15, 0.25, [0, 5], store_dtype=dtype)
    exact_bound = 0.25 * (2 * store_rounding_error(TORCH[dtype], 32, 1.0 + 1e-2))
    assert exact_bound <= result.stats["objective_error_bound"] < 1.1 * exact_bound + 1e-4
    check_near_greedy(frames, difficulty, result, [0, 5], 0.25)
    assert "objective_error_bound" not in select_greedy(difficulty, frames, 3, 0.25).stats  # float32: exact


def test_half_store_may_pick_otherwise_but_within_the_bound():
    """Rounding turns Y's lead over X into a tie that X (lower index) wins: another pick than float32's,
    its reported objective off by almost the whole bound, and still near-greedy."""
    frames = [np.array([[SEED]], dtype=np.float32), np.array([[X]], dtype=np.float32),
              np.array([[Y]], dtype=np.float32), np.array([[0.5]], dtype=np.float32)]
    difficulty = [np.nan, 3.0, 3.0, 1.0]
    exact = select_greedy(difficulty, frames, 2, lam=1.0, initial=[0])
    half = select_greedy(difficulty, frames, 2, lam=1.0, initial=[0], store_dtype="float16")
    assert exact.picks.tolist() == [2, 1] and half.picks.tolist() == [1, 2]
    assert check_near_greedy(frames, difficulty, half, [0], 1.0) > 0.95  # the bound is nearly attained
