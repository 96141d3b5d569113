"""Reward, loss and advantage math against hand-computed values (SPEC section 6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ml_backend.errors import TrainingDataError
from ml_backend.training import rewards as R

EPS = 1e-6


def phi(x: float) -> float:
    """Standard normal CDF written independently of scipy."""
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


def fid(p: float, gt: float) -> float:
    return math.sqrt(p * gt + EPS) + math.sqrt((1 - p) * (1 - gt) + EPS)


# --- MOS normalisation ---------------------------------------------------------------------------

def test_normalize_mos_uses_data_range_by_default():
    assert R.normalize_mos([0, 50, 100]).tolist() == [1.0, 3.0, 5.0]
    assert R.normalize_mos([2.0, 3.0]).tolist() == [1.0, 5.0]


def test_normalize_mos_with_explicit_scale():
    np.testing.assert_allclose(R.normalize_mos([25.0, 75.0], lo=0, hi=100), [2.0, 4.0])


@pytest.mark.parametrize("values,lo,hi", [([3.0, 3.0], None, None), ([1.0], None, None), ([1.0, 2.0], 5, 5),
                                          ([1.0, 2.0], 5, 1)])
def test_normalize_mos_refuses_degenerate_range(values, lo, hi):
    with pytest.raises(TrainingDataError, match="degenerate"):
        R.normalize_mos(values, lo=lo, hi=hi)


def test_normalize_mos_refuses_empty_and_nan():
    with pytest.raises(TrainingDataError):
        R.normalize_mos([])
    with pytest.raises(TrainingDataError):
        R.normalize_mos([1.0, float("nan")])


# --- formats -------------------------------------------------------------------------------------

@pytest.mark.parametrize("text,ok", [
    ("<answer>3.25</answer>", True),
    ("  <answer>3.25</answer>\n", True),
    ("<answer></answer>", True),
    ("The score is <answer>3.25</answer>", False),
    ("<think>x</think><answer>3.25</answer>", False),
    ("<answer>3.25</answer><answer>4</answer>", False),
    ("<answer>3.25", False),
    ("3.25", False),
])
def test_answer_only_format(text, ok):
    assert R.is_answer_only(text) is ok


@pytest.mark.parametrize("text,ok", [
    ("<think>blurry, noisy</think><answer>2.10</answer>", True),
    ("<think>line 1\nline 2</think>\n <answer>2.10</answer>", True),
    ("<answer>2.10</answer>", False),
    ("<think>a</think>", False),
    ("<think>a</think><answer>2</answer> trailing words", False),
    ("preamble <think>a</think><answer>2</answer>", False),
    ("<answer>2</answer><think>a</think>", False),
])
def test_think_answer_format(text, ok):
    assert R.is_think_then_answer(text) is ok


def test_parse_scores_marks_unparseable_as_nan():
    scores = R.parse_scores(["<answer>3.5</answer>", "no number here", "<answer>9</answer>"])
    assert scores[0] == 3.5 and math.isnan(scores[1]) and scores[2] == 5.0  # clamped


# --- quality reward ------------------------------------------------------------------------------

def test_quality_fidelity_rewards_hand_computed():
    scores = np.array([[3.0, 5.0], [2.0, 2.0]])
    mos = np.array([4.0, 1.0])
    # video 0: mu 4, unbiased var 2; video 1: mu 2, var 0. Video 0 has the higher MOS: gt 1 for it, 0 for video 1.
    expected = np.array([
        [fid(phi((3 - 2) / math.sqrt(2 + 0 + EPS)), 1.0), fid(phi((5 - 2) / math.sqrt(2 + EPS)), 1.0)],
        [fid(phi((2 - 4) / math.sqrt(0 + 2 + EPS)), 0.0)] * 2,
    ])
    got = R.quality_fidelity_rewards(scores, mos)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    np.testing.assert_allclose(got, [[0.872924, 0.992490], [0.960870, 0.960870]], atol=2e-6)


def test_quality_reward_averages_over_other_videos_and_ties_give_half():
    scores = np.array([[3.0, 3.0], [3.0, 3.0], [1.0, 2.0]])
    mos = np.array([2.0, 2.0, 1.0])
    got = R.quality_fidelity_rewards(scores, mos)
    # video 0 vs 1: equal MOS -> gt 0.5, p = Phi(0) = 0.5; vs 2 (mu 1.5, var 0.5): gt 1.
    vs1 = fid(0.5, 0.5)
    vs2 = fid(phi((3 - 1.5) / math.sqrt(0 + 0.5 + EPS)), 1.0)
    np.testing.assert_allclose(got[0], [(vs1 + vs2) / 2] * 2, rtol=1e-9)


def test_quality_reward_unparsed_samples_earn_zero_and_are_left_out_of_the_statistics():
    scores = np.array([[3.0, np.nan, 5.0], [2.0, 2.0, 2.0]])
    mos = np.array([4.0, 1.0])
    got = R.quality_fidelity_rewards(scores, mos)
    assert got[0, 1] == 0.0
    # video 0's mean/var come from {3, 5} only: identical to the hand-computed case above.
    np.testing.assert_allclose(got[0, [0, 2]], [0.872924, 0.992490], atol=2e-6)
    np.testing.assert_allclose(got[1], [fid(phi(-2 / math.sqrt(2 + EPS)), 0.0)] * 3, rtol=1e-9)


def test_quality_reward_needs_two_videos():
    with pytest.raises(ValueError, match="at least two"):
        R.quality_fidelity_rewards([[3.0, 4.0]], [3.0])


def test_quality_rewards_total_is_fidelity_plus_format_and_advantages_are_group_normalised():
    texts = [["<think>ok</think><answer>3</answer>", "<answer>5</answer>"],
             ["<think>bad</think><answer>2</answer>", "<think>bad</think><answer>2</answer>"]]
    out = R.quality_rewards(texts, [4.0, 1.0])
    np.testing.assert_array_equal(out["format"], [[1.0, 0.0], [1.0, 1.0]])
    np.testing.assert_allclose(out["reward"], out["fidelity"] + out["format"])
    r0 = out["reward"][0]
    std = np.std(r0, ddof=1)
    np.testing.assert_allclose(out["advantage"][0], (r0 - r0.mean()) / (std + 1e-4))
    np.testing.assert_array_equal(out["advantage"][1], [0.0, 0.0])  # identical answers: no signal


def test_group_advantages_hand_computed():
    np.testing.assert_allclose(R.group_advantages([[1.0, 2.0, 3.0]]), [[-1 / 1.0001, 0.0, 1 / 1.0001]])
    with pytest.raises(ValueError):
        R.group_advantages([1.0, 2.0])


# --- failure predictor ---------------------------------------------------------------------------

def test_failure_pair_losses_hand_computed():
    g = np.array([4.0, 2.0, 3.0])
    f = np.array([3.0, 3.0, 3.0])
    mos = np.array([1.0, 3.0, 2.5])  # e = [2, 0, 0.5]

    def pair(gi, gj, gt):
        return 1 - fid(phi((gi - gj) / math.sqrt(2)), gt)

    expected = [
        (pair(4, 2, 1) + pair(4, 3, 1)) / 2,  # e0 = 2 >= 0 and >= 0.5
        (pair(2, 4, 0) + pair(2, 3, 0)) / 2,  # e1 = 0 < both
        (pair(3, 4, 0) + pair(3, 2, 1)) / 2,  # e2 = 0.5: < 2, >= 0
    ]
    got = R.failure_pair_losses(g, f, mos)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    assert abs(pair(4, 2, 1) - 0.039130) < 2e-6  # one pair by hand: 1 - sqrt(Phi(1.414)) - sqrt(eps)


def test_failure_pair_losses_equal_errors_count_as_greater_or_equal():
    got = R.failure_pair_losses([3.0, 3.0], [2.0, 4.0], [3.0, 3.0])  # e = [1, 1]: gt 1 both ways
    np.testing.assert_allclose(got, [1 - fid(0.5, 1.0)] * 2)


def test_failure_pair_losses_unparsed_prediction_gets_worst_loss():
    got = R.failure_pair_losses([np.nan, 4.0, 1.0], [3.0, 3.0, 3.0], [3.0, 1.0, 3.0])
    assert got[0] == 1.0
    # The remaining pair (1, 2) is computed without video 0: e1 = 2 >= e2 = 0.
    np.testing.assert_allclose(got[1], 1 - fid(phi(3 / math.sqrt(2)), 1.0))


def test_difficulty_rewards_advantage_is_minus_loss_plus_penalty():
    texts = ["<answer>4.0</answer>", "I think <answer>2.0</answer>", "nothing"]
    out = R.difficulty_rewards(texts, f=[3.0, 3.0, 3.0], mos=[1.0, 3.0, 2.5])
    np.testing.assert_array_equal(out["penalty"], [0.0, 1.0, 1.0])
    assert math.isnan(out["scores"][2]) and out["loss"][2] == 1.0
    np.testing.assert_allclose(out["advantage"], -(out["loss"] + out["penalty"]))
    assert out["advantage"][0] > out["advantage"][1] > out["advantage"][2]


# --- properties ----------------------------------------------------------------------------------

score = st.floats(1.0, 5.0, allow_nan=False)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5).flatmap(lambda b: st.tuples(
    st.lists(st.lists(score, min_size=3, max_size=3), min_size=b, max_size=b),
    st.lists(score, min_size=b, max_size=b))))
def test_quality_rewards_are_bounded_and_permutation_equivariant(case):
    scores, mos = np.array(case[0]), np.array(case[1])
    got = R.quality_fidelity_rewards(scores, mos)
    assert np.all(got >= 0) and np.all(got <= 1 + 2 * math.sqrt(EPS) + 1e-12)
    order = np.arange(len(mos))[::-1]
    np.testing.assert_allclose(R.quality_fidelity_rewards(scores[order], mos[order]), got[order], atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6).flatmap(lambda b: st.lists(st.tuples(score, score, score), min_size=b, max_size=b)))
def test_failure_losses_are_bounded(rows):
    g, f, mos = (np.array(col) for col in zip(*rows))
    got = R.failure_pair_losses(g, f, mos)
    assert np.all(got <= 1.0) and np.all(got >= -2 * math.sqrt(EPS) - 1e-12)
