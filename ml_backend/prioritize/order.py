"""The queue order and its prediction scores: pure functions, no I/O.

Label Studio serves tasks in the order of a Data Manager view sorted by prediction score,
descending. The queue is: the greedy picks in pick order, then every other unlabeled task
by difficulty, descending. Each gets a score in (0, 1], strictly decreasing along that
order; labeled tasks get 0.

Two bands keep re-ordering cheap (every changed score is one PATCH in Label Studio):

- picks: ``1 - 0.5 * rank / n_picks``, in (0.5, 1]; only these move when a label arrives;
- the rest: a function of the task alone, ``0.5 * (hundredths + 1 - task_id / 2**40) / 401``,
  in (0, 0.5), where ``hundredths`` is the difficulty in hundredths above 1 (0 ... 400, the
  two decimals the Number control shows). Ties in difficulty go to the older task (lower
  id). A task's score in this band does not depend on the other tasks, so it changes only
  when the task enters or leaves the picks.

Scores stay distinct after a round trip through JSON and a double-precision column:
401 * 2**40 < 2**53.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ..labelstudio.predictions import DIFFICULTY_MAX, DIFFICULTY_MIN

PICK_FLOOR = 0.5  # picks are above it, the rest below
LABELED_PRIORITY = 0.0
_LEVELS = 401  # 1.00 ... 5.00 in hundredths
_ID_SCALE = float(2**40)


@dataclass(frozen=True)
class QueueEntry:
    task_id: int
    priority: float
    picked: bool  # a greedy pick (else: ordered by difficulty)


def difficulty_level(difficulty: float) -> int:
    """The difficulty in hundredths above 1, 0 ... 400 (what the Number control shows, two decimals)."""
    if not math.isfinite(difficulty):
        raise ValueError(f"difficulty must be finite, got {difficulty!r}")
    clamped = min(DIFFICULTY_MAX, max(DIFFICULTY_MIN, float(difficulty)))
    return round((clamped - DIFFICULTY_MIN) * 100)


def pick_priority(rank: int, n_picks: int) -> float:
    """Score of the pick at ``rank`` (0 = first) of ``n_picks``: 1 down to just above 0.5."""
    if not 0 <= rank < n_picks:
        raise ValueError(f"rank {rank} outside 0..{n_picks - 1}")
    return 1.0 - PICK_FLOOR * rank / n_picks


def rest_priority(difficulty: float, task_id: int) -> float:
    """Score of a task ordered by difficulty (not picked): in (0, 0.5), independent of other tasks."""
    if isinstance(task_id, bool) or not isinstance(task_id, int) or not 0 < task_id < _ID_SCALE:
        raise ValueError(f"task id must be an integer in [1, 2**40), got {task_id!r}")
    return PICK_FLOOR * (difficulty_level(difficulty) + 1 - task_id / _ID_SCALE) / _LEVELS


def new_prediction_priority(difficulty: float, task_id: object) -> float:
    """The score a new prediction carries (/predict, pushes): the one the next pass gives it unless picked.

    Without a usable task id, the band's value for the difficulty alone (as if the id were 1/2).
    """
    if isinstance(task_id, int) and not isinstance(task_id, bool) and 0 < task_id < _ID_SCALE:
        return rest_priority(difficulty, task_id)
    return PICK_FLOOR * (difficulty_level(difficulty) + 1 - 0.5 / _ID_SCALE) / _LEVELS


def rest_sort_key(difficulty: float, task_id: int) -> tuple[int, int]:
    """Sort key of the tasks after the picks: difficulty (two decimals) descending, then task id."""
    return (-difficulty_level(difficulty), task_id)


def queue_order(picks: Sequence[int], difficulty: Mapping[int, float]) -> list[QueueEntry]:
    """The whole queue: ``picks`` (task ids, greedy order) first, then the rest of ``difficulty``'s tasks.

    ``difficulty`` holds every unlabeled task to order (picks included) with its raw 1-5
    difficulty. Returns one entry per task, priorities strictly decreasing in (0, 1].
    """
    seen: set[int] = set()
    for task_id in picks:
        if task_id in seen:
            raise ValueError(f"task {task_id} picked twice")
        if task_id not in difficulty:
            raise ValueError(f"picked task {task_id} has no difficulty")
        seen.add(task_id)
    entries = [QueueEntry(task_id, pick_priority(rank, len(picks)), True) for rank, task_id in enumerate(picks)]
    rest = sorted((task_id for task_id in difficulty if task_id not in seen),
                  key=lambda task_id: rest_sort_key(difficulty[task_id], task_id))
    entries += [QueueEntry(task_id, rest_priority(difficulty[task_id], task_id), False) for task_id in rest]
    return entries


def default_budget(pool_size: int, fraction: float) -> int:
    """K when none is set: ``fraction`` of the pool, rounded up, at least 1 (0 for an empty pool)."""
    if pool_size <= 0:
        return 0
    return max(1, math.ceil(pool_size * fraction - 1e-9))
