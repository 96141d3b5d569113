"""The selection objective and its tie rule, shared by the fast and the reference greedy.

Step k (k videos already selected, labeled seed included) scores an unselected video x as

    objective(x) = difficulty(x) + lam * mean_{s in selected} chamfer_distance(x, s)

and with nothing selected yet the objective is the difficulty alone.

Tie rule: every candidate whose objective is within ``TIE_TOLERANCE * max(1, |best|)``
of the best one counts as tied, and the lowest pool index among the tied wins.
The tolerance is far below what the scores mean (they come with two decimals) and far
above float32 rounding, so the fast float32 path and the float64 reference break
ties the same way (e.g. duplicate videos) instead of by rounding noise.
"""

from __future__ import annotations

import numpy as np

TIE_TOLERANCE = 1e-6


def objective_values(difficulty: np.ndarray, distance_sum: np.ndarray, n_selected: int, lam: float) -> np.ndarray:
    """Objective for each candidate given the sum of its distances to the selected set."""
    if n_selected == 0:
        return np.asarray(difficulty, dtype=np.float64).copy()
    return difficulty + lam * (distance_sum / n_selected)


def tie_floor(best: float, tie_tolerance: float = TIE_TOLERANCE) -> float:
    """Lowest objective still tied with ``best``."""
    return best - tie_tolerance * max(1.0, abs(best))


def winner(indices: np.ndarray, objectives: np.ndarray, tie_tolerance: float = TIE_TOLERANCE) -> int:
    """Position (into ``indices``) of the winner: best objective, lowest index among ties."""
    if len(indices) == 0:
        raise ValueError("no candidate to choose from")
    floor = tie_floor(float(objectives.max()), tie_tolerance)
    tied = np.flatnonzero(objectives >= floor)
    return int(tied[np.argmin(indices[tied])])
