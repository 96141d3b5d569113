"""One ordering pass over a Label Studio project: read, select, write scores, keep the view.

1. Read the project (label config, ``model_version``, sampling) and every task with its
   predictions and annotation count.
2. Labeled tasks (at least one annotation that was not skipped) seed the selected set.
   Unlabeled tasks whose prediction of the model version holds a usable difficulty (the
   Number control's value, 1-5) are the pool. Unlabeled tasks without one are reported
   and left unscored: Label Studio sorts a missing score last.
3. Vision features of pool and seed tasks come from the feature store, computed where
   missing when a computer is given. Pool tasks without features cannot be picked (the
   diversity term needs them): they are ordered with the rest, by difficulty. Seeds
   without features are reported and do not count in the diversity term.
4. ``select_greedy`` picks K (``budget``, default ``ceil(fraction x pool)``; more than the
   pickable tasks picks them all and says so); the queue is the picks, then the rest by
   difficulty (``order.queue_order``).
5. Each task's prediction of the model version gets its queue score by PATCH (only where
   it changed; the Number control's difficulty is left as it is; nothing is created, so
   no duplicates and no placeholders). Labeled tasks get 0.
6. Each task's data gets its queue rank and difficulty (``view.py``: ``mdsvqa_rank``,
   ``mdsvqa_difficulty``), again only where they changed, so the Data Manager shows them
   as columns (the score is the priority, not a confidence, and looks alike at three decimals).
7. The view "MDS-VQA priority ..." (ordering ``-tasks:predictions_score``) is created with
   its columns (``hiddenColumns``: Label Studio computes only the columns a view lists as
   visible), or its ordering restored. Under Sequential sampling
   ``/api/projects/{id}/next?view=<id>`` serves tasks in the queue's order.

The model_version trap: Label Studio averages ``predictions_score`` over predictions of
the project's ``model_version`` only. The scores are written on the predictions of that
version (the backend's current version; the CLI's default is the project's own), and if
the project points elsewhere it is set to it (allowed: those predictions exist).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field, replace

import numpy as np

from selection.result import SelectionStep

from ..errors import MdsVqaError
from ..labelstudio.client import SEQUENTIAL, LabelStudioApi, LabelStudioApiError, ProjectTask, TaskPrediction
from ..labelstudio.config import ProjectConfig, parse_label_config
from ..labelstudio.media import media_key
from ..labelstudio.predictions import DIFFICULTY_MAX, DIFFICULTY_MIN, control_numbers
from .features import FeatureRequest, FeatureSource, LoadedTaskFeatures
from .order import LABELED_PRIORITY, QueueEntry, default_budget, queue_order
from .view import (
    DISPLAY_TYPES,
    VIEW_ORDERING,
    VIEW_TITLE,
    VIEW_TITLE_PREFIX,
    hidden_columns,
    view_data,
    wanted_fields,
    with_fields,
)

log = logging.getLogger(__name__)

SCORE_TOLERANCE = 1e-12  # a stored score this close to the wanted one is left alone


class PriorityError(MdsVqaError):
    """The project cannot be ordered as asked (says why and what to do)."""


class PriorityInterruptedError(LabelStudioApiError):
    """Label Studio failed part way through writing scores; running again finishes the job."""


@dataclass
class PrioritySummary:
    project_id: int
    model_version: str
    sampling: str = SEQUENTIAL
    tasks: int = 0
    labeled: list[int] = field(default_factory=list)
    pool: int = 0  # unlabeled tasks with a usable difficulty
    without_difficulty: dict[int, str] = field(default_factory=dict)  # unlabeled, left unscored
    without_features: dict[int, str] = field(default_factory=dict)  # unlabeled, ordered by difficulty only
    seeds_without_features: dict[int, str] = field(default_factory=dict)
    features_computed: int = 0
    budget: int = 0
    pickable: int = 0  # pool tasks with features
    budget_clipped: bool = False
    picks: list[int] = field(default_factory=list)
    order: list[QueueEntry] = field(default_factory=list)
    updated: int = 0
    unchanged: int = 0
    project_version_set: bool = False
    view_id: int | None = None
    view_action: str = ""  # created, updated, unchanged
    seconds: float = 0.0
    difficulty: dict[int, float] = field(default_factory=dict)  # unlabeled tasks with a usable difficulty
    steps: list[SelectionStep] = field(default_factory=list)  # per pick: objective and its terms (index = task id)
    media: dict[int, str] = field(default_factory=dict)  # task -> its video reference
    frames: dict[int, np.ndarray] = field(default_factory=dict)  # only with keep_frames=True (reports)
    extractor: str | None = None  # the features' extractor identity
    lam: float | None = None  # lambda the picks used (None: no pick was made)
    lam_source: str = ""
    predicted: int = 0  # tasks (labeled or not) holding a prediction of the model version
    fields_updated: int = 0  # tasks whose rank/difficulty fields were written
    finished: float = 0.0  # wall-clock time the pass ended (status page)

    @property
    def ranks(self) -> dict[int, int]:
        """Queue position of each ordered task, 1 = labeled next."""
        return {entry.task_id: rank for rank, entry in enumerate(self.order, start=1)}

    @property
    def queue(self) -> list[int]:
        return [entry.task_id for entry in self.order]

    @property
    def lacking_prediction(self) -> int:
        return sum(1 for reason in self.without_difficulty.values() if reason.startswith("no prediction"))

    def describe(self) -> str:
        lines = [
            f"project {self.project_id}, model version {self.model_version}",
            f"  tasks:                        {self.tasks} ({len(self.labeled)} labeled)",
            f"  ordered (unlabeled, scored):  {self.pool}",
            f"  greedy picks:                 {len(self.picks)} (budget {self.budget}"
            f"{f'; only {self.pickable} tasks with features' if self.budget_clipped else ''})",
            f"  features:                     {self.extractor or '-'}"
            f"{f', lambda {self.lam:g} ({self.lam_source})' if self.lam is not None else ''}",
            f"  prediction scores written:    {self.updated} ({self.unchanged} already right)",
            f"  task rank/difficulty written: {self.fields_updated}",
            f"  view:                         {VIEW_TITLE!r}, id {self.view_id} ({self.view_action})",
        ]
        if self.features_computed:
            lines.append(f"  features computed now:        {self.features_computed}")
        if self.project_version_set:
            lines.append(f"  project model_version is now {self.model_version}")
        if self.without_difficulty:
            lines.append(f"  left unscored (no usable difficulty; Label Studio lists them last): "
                         f"{len(self.without_difficulty)}")
        if self.without_features:
            lines.append(f"  not pickable (no features; ordered by difficulty after the picks): "
                         f"{len(self.without_features)}")
        if self.seeds_without_features:
            lines.append(f"  labeled tasks without features (not in the diversity term): "
                         f"{len(self.seeds_without_features)}")
        if self.sampling != SEQUENTIAL:
            lines.append(f"  warning: the project uses {self.sampling!r}; Label Studio follows the view only under "
                         f"{SEQUENTIAL!r} (Settings > General > Task Sampling > Sequential sampling)")
        if self.order:
            head = ", ".join(str(task_id) for task_id in self.queue[:10])
            lines.append(f"  queue head (task ids):        {head}{' ...' if len(self.order) > 10 else ''}")
        lines.append(f"  took {self.seconds:.1f} s")
        return "\n".join(lines)

    def problems(self) -> list[str]:
        """One line per task that could not be ordered fully, for logs and the CLI."""
        lines = [f"task {task_id}: left unscored: {reason}" for task_id, reason in self.without_difficulty.items()]
        lines += [f"task {task_id}: not pickable: {reason}" for task_id, reason in self.without_features.items()]
        lines += [f"labeled task {task_id}: not in the diversity term: {reason}"
                  for task_id, reason in self.seeds_without_features.items()]
        return lines


def difficulty_of(prediction: TaskPrediction, config: ProjectConfig) -> tuple[float | None, str]:
    """The difficulty a prediction holds in the project's difficulty control, or why there is none."""
    for number in control_numbers(prediction.result, config.difficulty.name)[:1]:
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            return None, f"the '{config.difficulty.name}' result holds no number: {str(number)[:80]}"
        if not DIFFICULTY_MIN <= number <= DIFFICULTY_MAX:
            return None, f"difficulty {number:g} is outside [{DIFFICULTY_MIN:g}, {DIFFICULTY_MAX:g}]"
        return float(number), ""
    return None, f"prediction {prediction.id} has no '{config.difficulty.name}' result"


def _feature_requests(tasks: list[ProjectTask], config: ProjectConfig, client: LabelStudioApi,
                      missing: dict[int, str]) -> dict[int, FeatureRequest]:
    requests: dict[int, FeatureRequest] = {}
    for task in tasks:
        ref, why = config.media_ref(task.data)
        if ref is None:
            missing[task.id] = why
            continue
        requests[task.id] = FeatureRequest(media_key(ref, client.connection), ref, task.id)
    return requests


def _select(candidates: list[int], seeds: list[int], difficulty: dict[int, float],
            frames: dict[int, np.ndarray], budget: int, lam: float, device: str
            ) -> tuple[list[int], bool, list[SelectionStep]]:
    from selection.errors import SelectionError

    if budget <= 0 or not candidates:
        return [], budget > len(candidates), []
    from selection import select_greedy

    values = np.array([difficulty[t] for t in candidates] + [np.nan] * len(seeds), dtype=np.float64)
    pool_frames = [frames[t] for t in candidates] + [frames[t] for t in seeds]
    initial = list(range(len(candidates), len(candidates) + len(seeds)))
    try:
        result = select_greedy(values, pool_frames, budget, lam, initial, device=device)
    except SelectionError as exc:
        raise PriorityError(f"selection refused its inputs: {exc}") from exc
    steps = [replace(step, index=candidates[step.index]) for step in result.steps()]
    return [candidates[int(i)] for i in result.picks], result.budget_clipped, steps


def _is_priority_view(view: dict) -> bool:
    return str((view.get("data") or {}).get("title") or "").startswith(VIEW_TITLE_PREFIX)


def ensure_view(client: LabelStudioApi, project_id: int) -> tuple[int, str]:
    """The project's "MDS-VQA priority" view, created or its ordering put back; (id, what was done).

    A new view gets its columns (``view.view_data``); an existing one keeps the columns someone
    chose, and gets ours only when it has none (views of older versions: Label Studio then
    computes only the sort key, so most columns show empty). Its title is brought up to date.
    """
    mine = sorted((v for v in client.views(project_id) if _is_priority_view(v)), key=lambda v: int(v.get("id", 0)))
    if not mine:
        view = client.create_view(project_id, view_data(VIEW_TITLE, VIEW_ORDERING, client.dm_columns(project_id)))
        return int(view["id"]), "created"
    view = mine[0]
    data = dict(view.get("data") or {})
    before = dict(data)
    data["title"] = VIEW_TITLE
    data["ordering"] = list(VIEW_ORDERING)
    if not data.get("hiddenColumns"):
        data["hiddenColumns"] = hidden_columns(client.dm_columns(project_id))
        data["columnsDisplayType"] = {**DISPLAY_TYPES, **(data.get("columnsDisplayType") or {})}
    if data == before:
        return int(view["id"]), "unchanged"
    client.update_view(int(view["id"]), project_id, data)
    return int(view["id"]), "updated"


def _write_fields(client: LabelStudioApi, tasks: list[ProjectTask], summary: PrioritySummary,
                  difficulty: dict[int, float]) -> None:
    """Rank and difficulty into each task's data, where they differ from what it holds."""
    ranks = summary.ranks
    changes = []
    for task in tasks:
        data = with_fields(task.data, wanted_fields(ranks, difficulty, task.id))
        if data is not None:
            changes.append((task.id, data))
    for task_id, data in changes:
        try:
            client.set_task_data(task_id, data)
        except LabelStudioApiError as exc:
            raise PriorityInterruptedError(
                f"{exc} (after the scores and {summary.fields_updated} of {len(changes)} task rank/difficulty "
                "fields were written; run again to finish)", status=exc.status, transient=exc.transient) from exc
        summary.fields_updated += 1


def prioritize_project(client: LabelStudioApi, project_id: int, *, model_version: str | None = None,
                       features: FeatureSource | None = None, budget: int | None = None,
                       budget_fraction: float = 0.05, lam: float | None = None, device: str = "cpu",
                       set_project_version: bool = True, write: bool = True,
                       keep_frames: bool = False, task_fields: bool = True) -> PrioritySummary:
    """Order the project's unlabeled tasks and write the order into Label Studio (see module doc).

    ``write=False`` computes the same order and changes nothing in Label Studio (reports);
    ``task_fields=False`` leaves task data alone (no rank/difficulty columns);
    ``keep_frames`` keeps each task's features in the summary. ``lam`` None: the default of
    the features' extractor (0.25 CLIP RN101, 0.075 SigLIP2; none for vision-tower features,
    which then refuse to be picked from with a PriorityError saying why).
    """
    started = time.monotonic()
    if budget is not None and budget < 0:
        raise PriorityError(f"budget must be >= 0, got {budget}")
    if lam is not None and (not math.isfinite(lam) or lam < 0):
        raise PriorityError(f"lambda must be a finite number >= 0, got {lam}")
    info = client.project(project_id)
    config = parse_label_config(info.label_config)  # LabelConfigError names what is missing
    version = model_version or info.model_version
    if not version:
        raise PriorityError(
            f"project {project_id} has no model_version, so there are no predictions to order: connect the "
            "backend and retrieve predictions, or run `mdsvqa score-project` first")
    summary = PrioritySummary(project_id, version, sampling=info.sampling)

    tasks = list(client.tasks(project_id))
    summary.tasks = len(tasks)
    current: dict[int, list[TaskPrediction]] = {}
    difficulty: dict[int, float] = {}
    shown: dict[int, float] = {}  # the difficulty column: every task with a usable prediction, labeled too
    seeds: list[ProjectTask] = []
    pool_tasks: list[ProjectTask] = []
    for task in tasks:
        mine = [p for p in task.predictions if p.model_version == version]
        if mine:
            current[task.id] = mine
        if task.labeled:
            seeds.append(task)
            labeled_value = difficulty_of(mine[0], config)[0] if mine else None
            if labeled_value is not None:
                shown[task.id] = labeled_value
            continue
        if not mine:
            summary.without_difficulty[task.id] = f"no prediction of model version {version}"
            continue
        value, reason = difficulty_of(mine[0], config)
        if value is None:
            summary.without_difficulty[task.id] = reason
            continue
        difficulty[task.id] = value
        shown[task.id] = value
        pool_tasks.append(task)
    summary.predicted = len(current)
    summary.labeled = sorted(task.id for task in seeds)
    summary.pool = len(pool_tasks)
    summary.budget = budget if budget is not None else default_budget(summary.pool, budget_fraction)

    # Features of the pool and the seeds
    no_media: dict[int, str] = {}
    requests = _feature_requests(pool_tasks + seeds, config, client, no_media)
    from selection.errors import SelectionError

    summary.extractor = features.store.extractor if features is not None else None
    if features is not None and pool_tasks and summary.budget > 0:
        try:
            loaded = features.features(list(requests.values()))
        except SelectionError as exc:  # a store holding another extractor's files
            raise PriorityError(f"{features.store.directory}: {exc}") from exc
        summary.features_computed = features.computed
    else:
        reason = "no feature store" if features is None else "not needed"
        loaded = LoadedTaskFeatures({}, {request.key: reason for request in requests.values()})
    frames: dict[int, np.ndarray] = {}
    missing = dict(no_media)
    for task_id, request in requests.items():
        if request.key in loaded.frames:
            frames[task_id] = loaded.frames[request.key]
        else:
            missing[task_id] = loaded.problems.get(request.key, "no features")
    seed_ids = sorted(task.id for task in seeds if task.id in frames)
    candidates = sorted(task.id for task in pool_tasks if task.id in frames)
    summary.pickable = len(candidates)
    if summary.budget > 0:
        summary.without_features = {t.id: missing[t.id] for t in pool_tasks if t.id in missing}
        summary.seeds_without_features = {t.id: missing[t.id] for t in seeds if t.id in missing}

    if summary.budget > 0 and candidates:
        from selection.lambdas import resolve_lambda

        try:
            summary.lam, summary.lam_source = resolve_lambda(lam, summary.extractor)
        except SelectionError as exc:
            raise PriorityError(f"project {project_id}: {exc}") from exc
    summary.picks, summary.budget_clipped, summary.steps = _select(candidates, seed_ids, difficulty, frames,
                                                                   summary.budget, summary.lam or 0.0, device)
    summary.order = queue_order(summary.picks, difficulty)
    summary.difficulty = difficulty
    summary.media = {task_id: request.ref for task_id, request in requests.items()}
    if keep_frames:
        summary.frames = frames
    if not write:
        summary.seconds = time.monotonic() - started
        summary.finished = time.time()
        return summary

    if set_project_version and info.model_version != version and current:
        client.set_project_model_version(project_id, version)
        summary.project_version_set = True

    wanted = [(p, entry.priority) for entry in summary.order for p in current.get(entry.task_id, [])]
    wanted += [(p, LABELED_PRIORITY) for task in seeds for p in current.get(task.id, [])]
    changes = [(p, score) for p, score in wanted if p.score is None or abs(p.score - score) > SCORE_TOLERANCE]
    summary.unchanged = len(wanted) - len(changes)
    for prediction, score in changes:
        try:
            client.set_prediction_score(prediction.id, score)
        except LabelStudioApiError as exc:
            raise PriorityInterruptedError(
                f"{exc} (after {summary.updated} of {len(changes)} prediction scores were written; run again to "
                "finish: nothing else was changed)", status=exc.status, transient=exc.transient) from exc
        summary.updated += 1
    if task_fields:
        _write_fields(client, tasks, summary, shown)

    summary.view_id, summary.view_action = ensure_view(client, project_id)
    summary.seconds = time.monotonic() - started
    summary.finished = time.time()
    if summary.order:
        log.info("project %s: queue ordered: %d tasks, %d picks, %d scores written (%.1f s)", project_id,
                 len(summary.order), len(summary.picks), summary.updated, summary.seconds)
    else:
        log.info("project %s: nothing to order yet (%d tasks, %d labeled, %d without a usable prediction)",
                 project_id, summary.tasks, len(summary.labeled), len(summary.without_difficulty))
    return summary
