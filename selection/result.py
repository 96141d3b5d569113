"""What a selection run returns: the ordered picks and, per step, the objective and its terms."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SelectionStep:
    """One greedy step: ``objective == difficulty + lam * mean_distance``.

    ``mean_distance`` is the mean Chamfer distance to everything selected before this
    step (labeled seed included); it is 0.0 when nothing was selected yet, where the
    objective is the difficulty alone.
    """

    index: int
    objective: float
    difficulty: float
    mean_distance: float


@dataclass(frozen=True)
class SelectionResult:
    picks: np.ndarray  # (n_picks,) int64 pool indices in pick order
    objectives: np.ndarray  # (n_picks,) float64
    difficulties: np.ndarray  # (n_picks,) float64
    mean_distances: np.ndarray  # (n_picks,) float64
    lam: float
    requested_budget: int
    initial: np.ndarray  # the labeled seed, pool indices
    # Work counters: how many (video, selected video) Chamfer distances were evaluated.
    distance_evaluations: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def budget_clipped(self) -> bool:
        """True when the budget exceeded the unlabeled pool and every candidate was returned."""
        return len(self.picks) < self.requested_budget

    def steps(self) -> list[SelectionStep]:
        return [SelectionStep(int(i), float(o), float(g), float(m))
                for i, o, g, m in zip(self.picks, self.objectives, self.difficulties, self.mean_distances)]
