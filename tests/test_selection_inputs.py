"""Every bad input fails with its own SelectionError subclass, in both implementations, before any work."""

from __future__ import annotations

import numpy as np
import pytest

from selection.errors import (
    BudgetError,
    DifficultyError,
    EmptyPoolError,
    FrameError,
    InitialSetError,
    LambdaError,
    SelectionError,
)
from selection.greedy import select_greedy
from selection.reference import reference_select

IMPLEMENTATIONS = [pytest.param(select_greedy, id="fast"), pytest.param(reference_select, id="reference")]


def good_frames(n: int = 3, dim: int = 4) -> list[np.ndarray]:
    return [np.full((2, dim), float(i), dtype=np.float32) for i in range(n)]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("kwargs, error, message", [
    ({"difficulty": [], "frames": []}, EmptyPoolError, "empty"),
    ({"difficulty": [], "frames": np.zeros((0, 4)), "offsets": [0]}, EmptyPoolError, "empty"),
    ({"budget": -1}, BudgetError, ">= 0"),
    ({"budget": 2.5}, BudgetError, "integer"),
    ({"budget": True}, BudgetError, "integer"),
    ({"lam": -0.1}, LambdaError, ">= 0"),
    ({"lam": float("nan")}, LambdaError, "finite"),
    ({"lam": float("inf")}, LambdaError, "finite"),
    ({"lam": "big"}, LambdaError, "number"),
    ({"difficulty": [1.0, float("nan"), 2.0]}, DifficultyError, "videos 1"),
    ({"difficulty": [1.0, float("inf"), 2.0]}, DifficultyError, "NaN, infinite"),
    ({"difficulty": [1.0, None, 2.0]}, DifficultyError, "missing"),
    ({"difficulty": [1.0, 2.0]}, DifficultyError, "one score per video"),
    ({"difficulty": [[1.0, 2.0, 3.0]]}, DifficultyError, "one score per video"),
    ({"difficulty": [0.5, 2.0, 3.0]}, DifficultyError, r"outside \[1, 5\]"),
    ({"difficulty": [1.0, 5.01, 3.0]}, DifficultyError, r"outside \[1, 5\]"),
    ({"difficulty": ["a", 2.0, 3.0]}, DifficultyError, "numbers"),
    ({"frames": [np.zeros((2, 4)), np.zeros((2, 5)), np.zeros((2, 4))]}, FrameError, "dimensions differ"),
    ({"frames": [np.zeros((2, 4)), np.zeros((0, 4)), np.zeros((2, 4))]}, FrameError, "video 1: has no frames"),
    ({"frames": [np.zeros((2, 4)), np.zeros(4), np.zeros((2, 4))]}, FrameError, "video 1"),
    ({"frames": [np.zeros((2, 0))] * 3}, FrameError, "dimension 0"),
    ({"frames": [np.zeros((2, 4)), np.array([[0, 0, np.nan, 0]]), np.zeros((2, 4))]}, FrameError, "videos 1"),
    ({"frames": [np.zeros((2, 4)), np.zeros((2, 4)), np.full((1, 4), np.inf)]}, FrameError, "videos 2"),
    ({"frames": [np.zeros((2, 4), dtype=complex)] * 3}, FrameError, "real numbers"),
    ({"frames": np.zeros((6, 4))}, FrameError, "needs offsets"),
    ({"frames": np.zeros((6, 4)), "offsets": [0, 2, 2, 6]}, FrameError, "no frames"),
    ({"frames": np.zeros((6, 4)), "offsets": [0, 2, 4, 5]}, FrameError, "run from 0"),
    ({"frames": np.zeros((6, 4)), "offsets": [0.0, 2.0, 4.0, 6.0]}, FrameError, "integer"),
    ({"frames": np.zeros(6), "offsets": [0, 2, 4, 6]}, FrameError, "total_frames, dim"),
    ({"initial": [0, 0]}, InitialSetError, "more than once"),
    ({"initial": [3]}, InitialSetError, "outside the pool"),
    ({"initial": [-1]}, InitialSetError, "outside the pool"),
    ({"initial": [0.5]}, InitialSetError, "integer"),
    ({"initial": [True]}, InitialSetError, "integer"),
])
def test_bad_inputs_raise_typed_errors(implementation, kwargs, error, message):
    arguments = {"difficulty": [1.0, 2.0, 3.0], "frames": good_frames(), "budget": 2, "lam": 0.25, "initial": ()}
    arguments.update(kwargs)
    with pytest.raises(error, match=message) as caught:
        implementation(arguments.pop("difficulty"), arguments.pop("frames"), arguments.pop("budget"),
                       arguments.pop("lam"), arguments.pop("initial"), **arguments)
    assert isinstance(caught.value, SelectionError) and isinstance(caught.value, ValueError)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_difficulty_range_can_be_widened_or_dropped(implementation):
    frames = good_frames()
    assert implementation([0.5, 9.0, 3.0], frames, 1, difficulty_range=None).picks.tolist() == [1]
    assert implementation([0.5, 9.0, 3.0], frames, 1, difficulty_range=(0, 10)).picks.tolist() == [1]


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_labeled_videos_need_no_valid_score(implementation):
    result = implementation([float("nan"), 7.0, 3.0, 2.0], good_frames(4), 2, initial=[0, 1])
    # first pick already averages over both labeled videos: 3 + 0.25 * (4 + 2) / 2 beats 2 + 0.25 * (6 + 4) / 2
    assert result.picks.tolist() == [2, 3]
    np.testing.assert_allclose(result.objectives[0], 3.75)


def test_error_message_lists_offending_videos_compactly():
    difficulty = [float("nan")] * 9
    with pytest.raises(DifficultyError, match=r"0, 1, 2, 3, 4 and 4 more"):
        select_greedy(difficulty, good_frames(9), 1)


def test_unknown_store_dtype():
    with pytest.raises(SelectionError, match="store_dtype"):
        select_greedy([1.0, 2.0, 3.0], good_frames(), 1, store_dtype="int8")


def test_integer_and_float64_frames_are_accepted():
    frames = [np.array([[0, 0]]), np.array([[3, 4]]), np.array([[1, 1]])]
    assert select_greedy([1.0, 1.0, 1.0], frames, 3).picks.tolist() == [0, 1, 2]
    frames64 = [f.astype(np.float64) for f in frames]
    assert select_greedy([1.0, 2.0, 1.0], frames64, 2).picks.tolist() == [1, 0]
