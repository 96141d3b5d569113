"""The background scoring queue: fetch media in parallel, score in batches, one model.

Why a queue rather than scoring inside /predict: Label Studio waits at most 100 s
for /predict and retrieves whole projects in one call. /predict therefore waits on
jobs only until its deadline; jobs it could not wait for keep running here, and their
predictions are pushed to Label Studio when ready (never a placeholder, which would
block the real prediction: SPEC 7).

Jobs are keyed by model version and media reference, so a video asked for by two
requests (or two tasks) is fetched and scored once. Smaller requests go first: a user
opening one task is not stuck behind a 1000-task retrieval or a project backfill.

Each job is scored by the scorer of the model version it was submitted for: when the
backend switches to a newly trained version, work already queued for the old one
finishes on the old one (still loaded) and is stored under the old version, never
under the new one.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import queue as stdqueue
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ..labelstudio.client import Connection
from ..labelstudio.config import ProjectConfig
from ..labelstudio.media import LocalMedia, MediaError, MediaResolver, describe
from .metrics import BackendMetrics
from .store import BackendStore, StoredOutcome

log = logging.getLogger(__name__)

PRIORITY_INTERACTIVE = 1
PRIORITY_BACKFILL = 1_000_000_000


class Scorer(Protocol):
    """What the queue needs from ml_backend.scoring.DifficultyScorer."""

    @property
    def model_version(self) -> str: ...

    def cached_result(self, path: Path): ...

    def score_paths(self, paths: list[Path]): ...


@dataclass(frozen=True)
class MediaRequest:
    key: str  # identity in the score store
    ref: str  # as written in the task data
    task_id: int | None  # presigning cloud URIs needs it
    connection: Connection | None


@dataclass(frozen=True)
class PushTarget:
    """Where a late result goes: one task of one project (its connection is looked up when pushed),
    and how to phrase the prediction."""

    task_id: int
    project_id: int | None
    config: ProjectConfig


@dataclass(frozen=True)
class JobOutcome:
    difficulty: float | None
    error: str | None
    final: bool  # True: stored (a score, or a video the model cannot read); False: fetch failure, retry later

    @property
    def ok(self) -> bool:
        return self.difficulty is not None


class ScoreJob:
    """One video to score under one model version, shared by every request and task that needs it."""

    def __init__(self, request: MediaRequest, priority: int, model_version: str = "") -> None:
        self.request = request
        self.priority = priority
        self.model_version = model_version
        self.taken = False  # a fetcher has it
        self.outcome: JobOutcome | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._watchers: Counter[int] = Counter()  # task ids with a /predict waiting on them
        self._push: dict[int, PushTarget] = {}

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    def watch(self, task_id: int) -> None:
        """A /predict will answer for this task itself if the job finishes in time."""
        with self._lock:
            self._watchers[task_id] += 1

    def unwatch(self, task_id: int, late_target: PushTarget | None) -> JobOutcome | None:
        """The waiter's deadline is up: its outcome if finished meanwhile, else push later to late_target."""
        with self._lock:
            self._watchers[task_id] -= 1
            if self._watchers[task_id] <= 0:
                del self._watchers[task_id]
            if self.outcome is not None:
                return self.outcome
            if late_target is not None:
                self._push[task_id] = late_target
            return None

    def push_to(self, target: PushTarget) -> bool:
        """Push the result to target when done; False if already done (caller pushes itself)."""
        with self._lock:
            if self.outcome is not None:
                return False
            self._push[target.task_id] = target
            return True

    def finish(self, outcome: JobOutcome) -> list[PushTarget]:
        """Record the outcome; return the targets no live /predict will answer for."""
        with self._lock:
            if self.outcome is not None:
                return []
            self.outcome = outcome
            self._done.set()
            return [t for task_id, t in self._push.items() if task_id not in self._watchers]


class ScoringQueue:
    """``scorer``: the current scorer; ``scorer_for``: the scorer of an earlier model version, if still loaded."""

    def __init__(self, *, scorer: Callable[[], Scorer], resolver: MediaResolver, store: BackendStore,
                 metrics: BackendMetrics, on_late_result: Callable[[PushTarget, JobOutcome, str], None],
                 batch_size: int, download_workers: int,
                 scorer_for: Callable[[str], Scorer | None] | None = None,
                 on_features: Callable[[str, Any], None] | None = None) -> None:
        self._scorer = scorer
        self._scorer_for = scorer_for
        self._resolver = resolver
        self._store = store
        self._metrics = metrics
        self._on_late_result = on_late_result
        self._on_features = on_features  # (media key, features) of every scored result that carries them
        self._batch_size = batch_size
        self._download_workers = download_workers
        self._lock = threading.Condition()
        self._heap: list[tuple[int, int, ScoreJob]] = []
        self._jobs: dict[tuple[str, str], ScoreJob] = {}  # (model version, media key)
        self._seq = itertools.count()
        # Bounded: fetchers wait when the scorer lags, so temporary files stay few.
        self._ready: stdqueue.Queue[tuple[ScoreJob, LocalMedia] | None] = stdqueue.Queue(maxsize=2 * batch_size)
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    # Lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        for i in range(self._download_workers):
            self._threads.append(threading.Thread(target=self._fetch_loop, name=f"mdsvqa-fetch-{i}", daemon=True))
        self._threads.append(threading.Thread(target=self._score_loop, name="mdsvqa-score", daemon=True))
        for thread in self._threads:
            thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        with self._lock:
            self._lock.notify_all()
        with contextlib.suppress(stdqueue.Full):  # a full queue wakes the scorer anyway
            self._ready.put_nowait(None)
        for thread in self._threads:
            thread.join(timeout)

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._jobs)

    # Submitting ------------------------------------------------------------------------------
    def submit(self, request: MediaRequest, *, priority: int, model_version: str) -> ScoreJob | StoredOutcome:
        """The job for this video (new or shared), or the stored outcome if it finished meanwhile."""
        with self._lock:
            stored = self._store.outcome(model_version, request.key)
            if stored is not None:
                return stored
            job = self._jobs.get((model_version, request.key))
            if job is None:
                job = self._jobs[(model_version, request.key)] = ScoreJob(request, priority, model_version)
                heapq.heappush(self._heap, (priority, next(self._seq), job))
                self._lock.notify()
            elif priority < job.priority and not job.taken:
                job.priority = priority  # an older, lower-priority heap entry is skipped when popped
                heapq.heappush(self._heap, (priority, next(self._seq), job))
                self._lock.notify()
            self._metrics.queue_length.set(len(self._jobs))
            return job

    # Workers ------------------------------------------------------------------------------------
    def _next_job(self) -> ScoreJob | None:
        with self._lock:
            while not self._stopping.is_set():
                while self._heap:
                    _priority, _seq, job = heapq.heappop(self._heap)
                    if not job.taken:
                        job.taken = True
                        return job
                self._lock.wait(1.0)
            return None

    def _fetch_loop(self) -> None:
        while (job := self._next_job()) is not None:
            try:
                media = self._resolver.fetch(job.request.ref, task_id=job.request.task_id,
                                             connection=job.request.connection)
            except MediaError as exc:
                self._metrics.media_failures.labels(type(exc).__name__).inc()
                log.warning("task %s: cannot fetch video: %s", job.request.task_id, exc)
                self._complete(job, JobOutcome(None, str(exc), final=False))
                continue
            except Exception as exc:  # a bug must not kill the fetcher thread
                log.exception("task %s: unexpected error fetching %s", job.request.task_id, describe(job.request.ref))
                self._complete(job, JobOutcome(None, f"internal error fetching the video: {exc}", final=False))
                continue
            self._ready.put((job, media))

    def _score_loop(self) -> None:
        while not self._stopping.is_set():
            first = self._ready.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self._batch_size:
                try:
                    item = self._ready.get_nowait()
                except stdqueue.Empty:
                    break
                if item is None:
                    self._stopping.set()
                    break
                batch.append(item)
            try:
                self._score_batch(batch)
            finally:
                for _job, media in batch:
                    media.release()

    def _scorer_of(self, version: str) -> Scorer | None:
        """The scorer of ``version``: the current one, or an earlier one still loaded; None if gone."""
        scorer = self._scorer()
        if scorer.model_version == version:
            return scorer
        return self._scorer_for(version) if self._scorer_for is not None else None

    def _score_batch(self, batch: list[tuple[ScoreJob, LocalMedia]]) -> None:
        by_version: dict[str, list[tuple[ScoreJob, LocalMedia]]] = {}
        for job, media in batch:
            by_version.setdefault(job.model_version, []).append((job, media))
        for version, items in by_version.items():
            self._score_version(version, items)

    def _score_version(self, version: str, batch: list[tuple[ScoreJob, LocalMedia]]) -> None:
        try:
            scorer = self._scorer_of(version)
        except Exception as exc:  # noqa: BLE001 - the model failed to load: every job of the batch says so
            for job, _media in batch:
                self._complete(job, JobOutcome(None, f"model unavailable: {exc}", final=False))
            return
        if scorer is None:
            for job, _media in batch:
                self._complete(job, JobOutcome(None, f"model version {version} is no longer served; ask again for "
                                                     "the current one", final=False))
            return
        todo: dict[Path, list[ScoreJob]] = {}
        media_of = {job: media for job, media in batch}
        for job, media in batch:
            cached = scorer.cached_result(media.path)
            if cached is not None:
                self._metrics.videos_scored.labels("content_cache").inc()
                self._complete(job, self._outcome_of(cached, media, job))
            else:
                todo.setdefault(media.path, []).append(job)
        if not todo:
            return
        with self._metrics.scoring_seconds.time():
            try:
                for result in scorer.score_paths(list(todo)):
                    for job in todo.pop(Path(result.path), []):
                        features = getattr(result, "features", None)
                        if features is not None and self._on_features is not None:
                            self._on_features(job.request.key, features)
                        self._metrics.videos_scored.labels("ok" if result.ok else "error").inc()
                        self._complete(job, self._outcome_of(result, media_of[job], job))
            except Exception as exc:
                log.exception("scoring a batch of %d videos failed", len(batch))
                for jobs in todo.values():
                    for job in jobs:
                        self._complete(job, JobOutcome(None, f"scoring failed: {exc}", final=False))
                return
        for jobs in todo.values():  # the scorer skipped them: never leave a waiter hanging
            for job in jobs:
                self._complete(job, JobOutcome(None, "the scorer returned no result for this video", final=False))

    @staticmethod
    def _outcome_of(result, media: LocalMedia, job: ScoreJob) -> JobOutcome:
        if result.ok and result.difficulty is not None:
            return JobOutcome(float(result.difficulty), None, final=True)
        message = result.error or "the model gave no usable difficulty"
        # name the video as the task does, not by our temporary download path
        return JobOutcome(None, message.replace(str(media.path), describe(job.request.ref)), final=True)

    def _complete(self, job: ScoreJob, outcome: JobOutcome) -> None:
        version = job.model_version or None
        if outcome.final and version is not None:
            self._store.save_outcome(version, job.request.key, StoredOutcome(outcome.difficulty, outcome.error))
        with self._lock:
            if self._jobs.get((job.model_version, job.request.key)) is job:
                del self._jobs[(job.model_version, job.request.key)]
            self._metrics.queue_length.set(len(self._jobs))
        for target in job.finish(outcome):
            try:
                self._on_late_result(target, outcome, version or "")
            except Exception:
                log.exception("task %s: handing over a late result failed", target.task_id)

