"""Rewards, losses and advantages of the two training objectives (SPEC section 6), as pure numpy.

Nothing here touches a model: the training loop turns sampled texts into scores,
calls these functions, and feeds the advantages to its policy-gradient loss. Keeping
the math pure makes it testable against hand-computed numbers.

Unparseable answers are ``NaN`` scores. The reference replaced them with a random
number; here they earn the worst reward instead (documented per function), so a
model is never rewarded for an answer that holds no score.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import ndtr

from ..answers import parse_score
from ..errors import AnswerParseError, TrainingDataError

# The reference's epsilon, both inside the square roots and under the variance sum.
FIDELITY_EPS = 1e-6
# Added to the group standard deviation before dividing (as TRL's GRPO does).
ADVANTAGE_EPS = 1e-4

_THINK_ANSWER = re.compile(r"<think>.*?</think>\s*<answer>[^<]*</answer>", re.DOTALL)
_ANSWER_ONLY = re.compile(r"<answer>[^<]*</answer>")


# --- MOS scale -----------------------------------------------------------------------------------

def normalize_mos(mos: ArrayLike, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """Map MOS values onto the model's 1-5 scale: (mos - lo) / (hi - lo) * 4 + 1.

    ``lo``/``hi`` default to the smallest and largest value given (the reference uses the
    dataset's range); pass the nominal scale (e.g. 0 and 100) to keep scores comparable
    across label sets. A zero-width range cannot be mapped and is an error.
    """
    values = np.asarray(mos, dtype=np.float64)
    if values.size == 0:
        raise TrainingDataError("no MOS values to normalise")
    if not np.all(np.isfinite(values)):
        raise TrainingDataError("MOS values must be finite numbers")
    lo = float(values.min()) if lo is None else float(lo)
    hi = float(values.max()) if hi is None else float(hi)
    if not hi > lo:
        raise TrainingDataError(
            f"MOS range is degenerate (min {lo:g}, max {hi:g}): all labels are equal or the range is "
            "inverted, so they cannot be mapped to 1-5. Label videos of different quality or give the "
            "scale's bounds explicitly."
        )
    return (values - lo) / (hi - lo) * 4.0 + 1.0


# --- answer format -------------------------------------------------------------------------------

def is_answer_only(text: str) -> bool:
    """Exactly one ``<answer>..</answer>`` and nothing else (surrounding whitespace allowed)."""
    return _ANSWER_ONLY.fullmatch(text.strip()) is not None


def is_think_then_answer(text: str) -> bool:
    """``<think>..</think>`` followed by ``<answer>..</answer>`` and nothing else (surrounding whitespace allowed)."""
    return _THINK_ANSWER.fullmatch(text.strip()) is not None


def parse_scores(texts: Sequence[str]) -> np.ndarray:
    """Scores of answer texts (clamped to 1-5 by :func:`parse_score`); ``NaN`` where none can be read."""
    scores = np.full(len(texts), np.nan)
    for index, text in enumerate(texts):
        with contextlib.suppress(AnswerParseError):
            scores[index] = parse_score(text)
    return scores


# --- shared pieces ------------------------------------------------------------------------------

def fidelity(p: ArrayLike, gt: ArrayLike, eps: float = FIDELITY_EPS) -> np.ndarray:
    """Fidelity between predicted and true preference probabilities: about 1 when they agree, 0 when opposite."""
    p = np.asarray(p, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    return np.sqrt(p * gt + eps) + np.sqrt((1.0 - p) * (1.0 - gt) + eps)


def preference_label(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """1 where a > b, 0 where a < b, 0.5 on ties (elementwise, broadcasting)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))


def group_advantages(rewards: ArrayLike, eps: float = ADVANTAGE_EPS) -> np.ndarray:
    """GRPO advantages: each row (one video's G samples) centred and divided by its std (ddof 1) + eps.

    A group whose samples all earned the same reward gets zero advantages: it carries no signal.
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    if rewards.ndim != 2 or rewards.shape[1] < 2:
        raise ValueError(f"expected rewards of shape (videos, G >= 2), got {rewards.shape}")
    mean = rewards.mean(axis=1, keepdims=True)
    std = rewards.std(axis=1, ddof=1, keepdims=True)
    return (rewards - mean) / (std + eps)


# --- quality objective (VQR1 GRPO reward) -------------------------------------------------------

def quality_fidelity_rewards(scores: ArrayLike, mos: ArrayLike, eps: float = FIDELITY_EPS) -> np.ndarray:
    """VQR1 ranking reward of every sampled score, shape (videos, G).

    Video i has G sampled scores with mean mu_i and unbiased variance var_i. Sample s of i
    is compared with every other video z of the batch:
    p = Phi((s - mu_z) / sqrt(var_i + var_z + eps)), gt = 1 / 0 / 0.5 as MOS_i >, <, = MOS_z,
    reward = fidelity(p, gt), averaged over z.

    ``NaN`` scores (no number in the answer) are left out of mu and var and earn 0; a
    video with fewer than two parsed samples has variance 0; a video with no parsed
    sample is not used as an opponent. Needs at least two videos.
    """
    scores = np.asarray(scores, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[0] != mos.shape[0]:
        raise ValueError(f"scores {scores.shape} must be (videos, G) with one MOS per video ({mos.shape})")
    if scores.shape[0] < 2:
        raise ValueError("the ranking reward compares videos: a batch needs at least two")
    parsed = np.isfinite(scores)
    counts = parsed.sum(axis=1)
    safe = np.where(parsed, scores, 0.0)
    mean = np.divide(safe.sum(axis=1), counts, out=np.full(len(counts), np.nan), where=counts > 0)
    centred = np.where(parsed, scores - mean[:, None], 0.0)
    var = np.divide((centred**2).sum(axis=1), counts - 1, out=np.zeros(len(counts)), where=counts > 1)

    videos = scores.shape[0]
    rewards = np.zeros_like(scores)
    for i in range(videos):
        opponents = [z for z in range(videos) if z != i and counts[z] > 0]
        if not opponents:
            continue
        z = np.asarray(opponents)
        # (G, opponents) probabilities that sample s of i beats video z.
        p = ndtr((scores[i][:, None] - mean[z][None, :]) / np.sqrt(var[i] + var[z][None, :] + eps))
        gt = preference_label(mos[i], mos[z])[None, :]
        per_sample = fidelity(p, gt, eps).mean(axis=1)
        rewards[i] = np.where(parsed[i], per_sample, 0.0)
    return rewards


def quality_rewards(texts: Sequence[Sequence[str]], mos: ArrayLike) -> dict[str, np.ndarray]:
    """Total GRPO reward (fidelity + 0/1 think-answer format) and advantages for (videos, G) answer texts."""
    groups = [list(group) for group in texts]
    if len({len(group) for group in groups}) != 1:
        raise ValueError("every video needs the same number of sampled answers")
    scores = np.stack([parse_scores(group) for group in groups])
    fidelity_part = quality_fidelity_rewards(scores, mos)
    format_part = np.array([[float(is_think_then_answer(t)) for t in group] for group in groups])
    total = fidelity_part + format_part
    return {"scores": scores, "fidelity": fidelity_part, "format": format_part, "reward": total,
            "advantage": group_advantages(total)}


# --- difficulty objective (failure predictor, REINFORCE) -----------------------------------------

def failure_pair_losses(g: ArrayLike, f: ArrayLike, mos: ArrayLike, eps: float = FIDELITY_EPS) -> np.ndarray:
    """Per-video pairwise fidelity loss of the failure predictor, shape (videos,).

    e_i = |f_i - MOS_i| is how wrong the quality model f was on video i. For every ordered
    pair (i, j), i != j: gt = 1 if e_i >= e_j else 0, p = Phi((g_i - g_j) / sqrt(2)),
    loss = 1 - fidelity(p, gt). Video i's loss is the mean over its pairs.

    A ``NaN`` g (no number in the answer) is left out of every pair and gets loss 1, the
    worst a parsed answer can approach. Needs at least two videos.
    """
    g = np.asarray(g, dtype=np.float64)
    f = np.asarray(f, dtype=np.float64)
    mos = np.asarray(mos, dtype=np.float64)
    if not g.shape == f.shape == mos.shape or g.ndim != 1:
        raise ValueError(f"g {g.shape}, f {f.shape} and mos {mos.shape} must be equal-length vectors")
    if g.size < 2:
        raise ValueError("the pairwise loss compares videos: a batch needs at least two")
    if not np.all(np.isfinite(f)) or not np.all(np.isfinite(mos)):
        raise ValueError("f scores and MOS must be finite (videos without a quality score cannot be used)")
    errors = np.abs(f - mos)
    parsed = np.isfinite(g)
    losses = np.ones_like(g)
    for i in np.flatnonzero(parsed):
        others = np.asarray([j for j in np.flatnonzero(parsed) if j != i])
        if others.size == 0:
            continue
        gt = (errors[i] >= errors[others]).astype(np.float64)
        p = ndtr((g[i] - g[others]) / math.sqrt(2.0))
        losses[i] = float(np.mean(1.0 - fidelity(p, gt, eps)))
    return losses


def difficulty_rewards(texts: Sequence[str], f: ArrayLike, mos: ArrayLike) -> dict[str, np.ndarray]:
    """REINFORCE advantages of one answer per video: -(pair loss + format penalty), no baseline."""
    g = parse_scores(texts)
    loss = failure_pair_losses(g, f, mos)
    penalty = np.array([0.0 if is_answer_only(text) else 1.0 for text in texts])
    return {"scores": g, "loss": loss, "penalty": penalty, "advantage": -(loss + penalty)}
