"""The fast greedy against the per-pair float64 reference, and the documented behaviours:
tie rule, labeled seed, budget edge cases, store dtypes, pruning."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selection.chamfer import chamfer_distance
from selection.greedy import select_greedy
from selection.reference import reference_select

KINDS = ["gaussian", "integer", "unit", "offset", "clustered"]


def make_frames(rng: np.random.Generator, n: int, dim: int, kind: str, ragged: bool) -> list[np.ndarray]:
    lengths = rng.integers(1, 6, n) if ragged else np.full(n, int(rng.integers(1, 5)))
    if kind == "clustered":
        centres = rng.standard_normal((3, dim))
        frames = [centres[rng.integers(3)] + 0.1 * rng.standard_normal((m, dim)) for m in lengths]
    else:
        frames = [rng.standard_normal((m, dim)) for m in lengths]
    if kind == "integer":  # many exactly equal distances
        frames = [np.round(2 * f) for f in frames]
    elif kind == "unit":
        frames = [f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-3) for f in frames]
    elif kind == "offset":  # far from the origin: float32 cancellation territory
        shift = rng.uniform(1, 1000) * rng.standard_normal(dim)
        frames = [shift + 0.05 * f for f in frames]
    return [f.astype(np.float32) for f in frames]


@st.composite
def pools(draw, max_videos: int = 14):
    n = draw(st.integers(1, max_videos))
    dim = draw(st.integers(1, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    frames = make_frames(rng, n, dim, draw(st.sampled_from(KINDS)), draw(st.booleans()))
    difficulty = np.round(rng.uniform(1, 5, n), draw(st.sampled_from([0, 1, 2])))
    for _ in range(draw(st.integers(0, 3))):  # duplicate videos, sometimes with the same score
        source, target = rng.integers(0, n, 2)
        frames[target] = frames[source].copy()
        if rng.random() < 0.5:
            difficulty[target] = difficulty[source]
    initial = draw(st.lists(st.integers(0, n - 1), unique=True, max_size=n // 2))
    return {
        "difficulty": difficulty,
        "frames": frames,
        "budget": draw(st.integers(0, n + 2)),
        "lam": draw(st.sampled_from([0.0, 0.075, 0.25, 1.0, 4.0])),
        "initial": initial,
    }


def assert_same_selection(fast, reference):
    np.testing.assert_array_equal(fast.picks, reference.picks)
    np.testing.assert_array_equal(fast.difficulties, reference.difficulties)
    np.testing.assert_allclose(fast.objectives, reference.objectives, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fast.mean_distances, reference.mean_distances, rtol=1e-6, atol=1e-6)


@settings(max_examples=120, deadline=None)
@given(pools(), st.booleans(), st.sampled_from([(4096, 2048), (7, 5), (1, 1)]))
def test_fast_matches_reference(pool, prune, chunks):
    reference = reference_select(pool["difficulty"], pool["frames"], pool["budget"], pool["lam"], pool["initial"])
    fast = select_greedy(pool["difficulty"], pool["frames"], pool["budget"], pool["lam"], pool["initial"],
                         prune=prune, max_row_frames=chunks[0], max_col_frames=chunks[1])
    assert_same_selection(fast, reference)
    # objective == difficulty + lam * mean distance, step by step
    np.testing.assert_allclose(fast.objectives, fast.difficulties + pool["lam"] * fast.mean_distances, rtol=1e-12)


@settings(max_examples=25, deadline=None)
@given(pools(max_videos=60))
def test_fast_matches_reference_on_larger_pools(pool):
    reference = reference_select(pool["difficulty"], pool["frames"], pool["budget"], pool["lam"], pool["initial"])
    fast = select_greedy(pool["difficulty"], pool["frames"], pool["budget"], pool["lam"], pool["initial"],
                         max_row_frames=16, max_col_frames=8)
    assert_same_selection(fast, reference)


def test_objective_terms_by_hand():
    frames = [np.array([[0.0, 0.0]]), np.array([[3.0, 4.0]]), np.array([[0.0, 1.0]]), np.array([[6.0, 8.0]])]
    difficulty = [4.0, 3.0, 3.9, 1.0]
    result = select_greedy(difficulty, frames, 3, lam=0.5)
    # step 0: argmax difficulty -> 0
    # step 1: video 1: 3 + 0.5*5 = 5.5, video 2: 3.9 + 0.5*1 = 4.4, video 3: 1 + 0.5*10 = 6.0 -> 3
    # step 2 (mean over {0, 3}): video 1: 3 + 0.5*(5 + 5)/2 = 5.5, video 2: 3.9 + 0.5*(1 + sqrt(85))/2 -> 2
    mean_2 = (1 + np.sqrt(85)) / 2
    assert result.picks.tolist() == [0, 3, 2]
    np.testing.assert_allclose(result.objectives, [4.0, 6.0, 3.9 + 0.5 * mean_2])
    np.testing.assert_allclose(result.mean_distances, [0.0, 10.0, mean_2])
    assert [step.index for step in result.steps()] == [0, 3, 2]
    assert reference_select(difficulty, frames, 3, lam=0.5).picks.tolist() == [0, 3, 2]


def test_ties_go_to_the_lowest_index():
    frames = [np.ones((2, 3)) * position for position in (0.0, 1.0, 2.0)]
    frames.append(frames[1].copy())  # video 3 duplicates video 1, same score: always tied with it
    difficulty = [3.0, 5.0, 3.0, 5.0]
    for implementation in (select_greedy, reference_select):
        # lam 0: by difficulty, ties by index
        assert implementation(difficulty, frames, 4, lam=0.0).picks.tolist() == [1, 3, 0, 2]
        # 1 before its twin 3; then 0 and 2 tie exactly (both sqrt(3) from 1): 0 wins
        assert implementation(difficulty, frames, 4, lam=2.0).picks.tolist() == [1, 0, 2, 3]
    assert select_greedy([3.0, 3.0, 3.0], [np.zeros((1, 2))] * 3, 3, lam=1.0).picks.tolist() == [0, 1, 2]


def test_near_ties_within_tolerance_count_as_ties():
    frames = [np.zeros((1, 2)), np.zeros((1, 2))]
    for implementation in (select_greedy, reference_select):
        assert implementation([3.0, 3.0 + 1e-8], frames, 1).picks.tolist() == [0]
        assert implementation([3.0, 3.0 + 1e-4], frames, 1).picks.tolist() == [1]


def test_initial_set_counts_in_the_mean_from_the_first_pick():
    frames = [np.array([[0.0]]), np.array([[1.0]]), np.array([[10.0]]), np.array([[5.0]])]
    difficulty = [np.nan, 5.0, 4.0, 1.0]  # the labeled video's score is not used (may be NaN)
    for implementation in (select_greedy, reference_select):
        result = implementation(difficulty, frames, 3, lam=1.0, initial=[0])
        # first pick already uses diversity: 4 + 10 beats 5 + 1
        assert result.picks.tolist() == [2, 1, 3]
        # second pick: means over {0, 2}: video 1: 5 + (1 + 9)/2 = 10, video 3: 1 + (5 + 5)/2 = 6
        np.testing.assert_allclose(result.objectives, [14.0, 10.0, 1 + (5 + 5 + 4) / 3])
        np.testing.assert_allclose(result.mean_distances, [10.0, 5.0, 14 / 3])
        assert 0 not in result.picks.tolist()
        assert result.initial.tolist() == [0]


def test_initial_set_mean_matches_explicit_chamfer_sums():
    rng = np.random.default_rng(11)
    frames = make_frames(rng, 12, 4, "gaussian", ragged=True)
    difficulty = rng.uniform(1, 5, 12)
    initial = [3, 7]
    result = select_greedy(difficulty, frames, 4, lam=0.25, initial=initial)
    selected = list(initial)
    for pick, mean in zip(result.picks, result.mean_distances):
        expected = np.mean([chamfer_distance(frames[pick], frames[s]) for s in selected])
        assert mean == pytest.approx(expected, rel=1e-6)
        selected.append(int(pick))


@pytest.mark.parametrize("implementation", [select_greedy, reference_select])
def test_budget_edges(implementation):
    frames = [np.full((2, 2), float(i)) for i in range(4)]
    difficulty = [1.0, 2.0, 3.0, 4.0]
    empty = implementation(difficulty, frames, 0)
    assert empty.picks.tolist() == [] and not empty.budget_clipped
    everything = implementation(difficulty, frames, 10, initial=[0])
    assert sorted(everything.picks.tolist()) == [1, 2, 3]
    assert everything.budget_clipped and everything.requested_budget == 10
    assert implementation(difficulty, frames, 3, initial=[0, 1, 2, 3]).picks.tolist() == []


def test_packed_input_equals_list_input():
    rng = np.random.default_rng(5)
    frames = make_frames(rng, 30, 6, "clustered", ragged=True)
    difficulty = np.round(rng.uniform(1, 5, 30), 2)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
    from_list = select_greedy(difficulty, frames, 10, initial=[2])
    packed = select_greedy(difficulty, np.concatenate(frames), 10, initial=[2], offsets=offsets)
    assert_same_selection(packed, from_list)


@pytest.mark.parametrize("store_dtype", ["float64", "float16", "bfloat16"])
def test_store_dtypes_are_exact_on_the_stored_values(store_dtype):
    import torch

    rng = np.random.default_rng(6)
    frames = make_frames(rng, 25, 8, "unit", ragged=True)
    difficulty = np.round(rng.uniform(1, 5, 25), 2)
    torch_dtype = {"float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16}[store_dtype]
    rounded = [torch.from_numpy(f).to(torch_dtype).to(torch.float64).numpy() for f in frames]
    reference = reference_select(difficulty, rounded, 12, 0.25, [1])
    fast = select_greedy(difficulty, frames, 12, 0.25, [1], store_dtype=store_dtype)
    assert_same_selection(fast, reference)


def test_pruning_skips_work_and_keeps_the_result():
    rng = np.random.default_rng(7)
    n = 400
    frames = make_frames(rng, n, 16, "clustered", ragged=False)
    frames = [f / np.linalg.norm(f, axis=1, keepdims=True) for f in frames]  # like CLIP features
    difficulty = np.round(rng.uniform(1, 5, n), 2)
    pruned = select_greedy(difficulty, frames, 20, max_row_frames=64)
    full = select_greedy(difficulty, frames, 20, prune=False, max_row_frames=64)
    reference = reference_select(difficulty, frames, 20)
    assert_same_selection(pruned, reference)
    assert_same_selection(full, reference)
    assert pruned.stats["mode"] == "pruned" and full.stats["mode"] == "full"
    assert pruned.distance_evaluations < full.distance_evaluations / 4


def test_pruning_falls_back_to_full_updates_when_nothing_can_be_pruned():
    rng = np.random.default_rng(8)
    frames = make_frames(rng, 60, 4, "gaussian", ragged=True)
    difficulty = np.full(60, 3.0)  # all equal and a large lambda: every bound stays in reach
    result = select_greedy(difficulty, frames, 15, lam=5.0, initial=[0, 1, 2])
    assert result.stats["mode"] == "full"
    assert_same_selection(result, reference_select(difficulty, frames, 15, lam=5.0, initial=[0, 1, 2]))


def test_device_argument_cpu_and_input_not_modified():
    rng = np.random.default_rng(9)
    frames = make_frames(rng, 10, 3, "gaussian", ragged=True)
    packed = np.concatenate(frames)
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])])
    before = packed.copy()
    difficulty = rng.uniform(1, 5, 10)
    result = select_greedy(difficulty, packed, 5, offsets=offsets, device="cpu")
    np.testing.assert_array_equal(packed, before)
    assert len(result.picks) == 5


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_reference():
    rng = np.random.default_rng(10)
    frames = make_frames(rng, 80, 8, "clustered", ragged=True)
    difficulty = np.round(rng.uniform(1, 5, 80), 2)
    fast = select_greedy(difficulty, frames, 20, initial=[4], device="cuda")
    assert_same_selection(fast, reference_select(difficulty, frames, 20, initial=[4]))
