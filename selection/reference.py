"""The straightforward per-pair greedy: ground truth for tests and the benchmark baseline.

Same algorithm as the published one (first pick = argmax difficulty, then argmax of
difficulty + lam * mean Chamfer distance to the selected set), computed pair by pair in
float64 from ``chamfer_distance``. Each (candidate, selected) pair is evaluated once and
kept in a running sum per candidate, so the cost is about budget x pool Chamfer
distances: fine for hundreds or a few thousand videos, hopeless for 100k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .chamfer import chamfer_distance
from .inputs import DEFAULT_DIFFICULTY_RANGE, check_budget, check_lambda, prepare_pool
from .objective import TIE_TOLERANCE, tie_floor
from .result import SelectionResult


def reference_select(difficulty, frames, budget: int, lam: float = 0.25, initial: Sequence[int] = (), *,
                     offsets=None, tie_tolerance: float = TIE_TOLERANCE,
                     difficulty_range: tuple[float, float] | None = DEFAULT_DIFFICULTY_RANGE) -> SelectionResult:
    """Greedy difficulty-diversity order, pair by pair. Arguments as in ``select_greedy``."""
    budget = check_budget(budget)
    lam = check_lambda(lam)
    pool = prepare_pool(difficulty, frames, offsets=offsets, initial=initial, difficulty_range=difficulty_range)
    video = [pool.video_frames(i).astype(np.float64) for i in range(pool.size)]

    selected = [int(i) for i in pool.initial]
    remaining = [i for i in range(pool.size) if pool.candidates()[i]]
    distance_sum = {i: 0.0 for i in remaining}
    evaluations = 0
    for s in selected:
        for x in remaining:
            distance_sum[x] += chamfer_distance(video[x], video[s])
            evaluations += 1

    picks, objectives, difficulties, mean_distances = [], [], [], []
    n_picks = min(budget, len(remaining))
    for _step in range(n_picks):
        k = len(selected)
        scored = []
        for x in remaining:  # ascending index: the first tied candidate is the lowest index
            mean = distance_sum[x] / k if k else 0.0
            scored.append((x, float(pool.difficulty[x]) + lam * mean, mean))
        best = max(value for _x, value, _mean in scored)
        floor = tie_floor(best, tie_tolerance)
        pick, value, mean = next(item for item in scored if item[1] >= floor)

        picks.append(pick)
        objectives.append(value)
        difficulties.append(float(pool.difficulty[pick]))
        mean_distances.append(mean)
        selected.append(pick)
        remaining.remove(pick)
        if len(picks) == n_picks:
            break
        for x in remaining:
            distance_sum[x] += chamfer_distance(video[x], video[pick])
            evaluations += 1

    return SelectionResult(
        picks=np.array(picks, dtype=np.int64), objectives=np.array(objectives, dtype=np.float64),
        difficulties=np.array(difficulties, dtype=np.float64),
        mean_distances=np.array(mean_distances, dtype=np.float64),
        lam=lam, requested_budget=budget, initial=pool.initial.copy(), distance_evaluations=evaluations)
