"""The backend's behaviour behind the HTTP routes: setup, predict, webhooks.

One BackendService per process holds the scorer (model loaded once, in the background,
so the port opens at once and /health answers while a 7B model loads), the score store,
the scoring queue and the background workers. The Flask layer (app.py) only parses
HTTP and maps errors to status codes.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import MdsVqaError
from ..labelstudio.client import Connection, LabelStudioApi, choose_connection
from ..labelstudio.config import ConfigCache, ProjectConfig
from ..labelstudio.media import MediaResolver, media_key
from ..labelstudio.predictions import build_prediction
from ..prioritize.backend import BackendPriority
from ..prioritize.features import FeatureRecorder
from ..settings import Settings
from .actions import LabelStudioActions, ProjectSync, push_payload
from .auth import AccessPolicy
from .backfill import enqueue_project
from .metrics import BackendMetrics
from .outbox import Outbox
from .queue import PRIORITY_INTERACTIVE, JobOutcome, MediaRequest, PushTarget, ScoreJob, Scorer, ScoringQueue
from .store import BackendStore, StoredOutcome
from .webhooks import TrainingHook, WebhookReply, handle_event

log = logging.getLogger(__name__)

SETUP_WAIT_S = 2.0  # Label Studio gives /setup 3 s


class BadRequestError(MdsVqaError):
    """The request cannot be understood (400)."""


class ModelNotReadyError(MdsVqaError):
    """The model is still loading (503) or failed to load (500, ``failed`` set)."""

    def __init__(self, message: str, *, failed: bool = False) -> None:
        super().__init__(message)
        self.failed = failed


def parse_project_id(value: Any) -> int | None:
    """Label Studio sends the project as "<id>.<created timestamp>"; a bad id is a BadRequestError.

    The one parser of project ids (webhooks use it too): ``project_ids.parse_project_id``.
    """
    from .project_ids import ProjectIdError
    from .project_ids import parse_project_id as parse

    try:
        return parse(value)
    except ProjectIdError as exc:
        raise BadRequestError(str(exc)) from exc


class ScorerHandle:
    """Loads the scorer on a background thread; get() waits a bounded time for it."""

    def __init__(self, factory: Callable[[], Scorer]) -> None:
        self._factory = factory
        self._ready = threading.Event()
        self._scorer: Scorer | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        self._swap_lock = threading.Lock()

    def start(self, on_ready: Callable[[Scorer], None] | None = None) -> None:
        """Load on a thread of its own (minutes for a 7B model); ``on_ready`` runs there once loaded."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._load, args=(on_ready,), name="mdsvqa-model-load",
                                            daemon=True)
            self._thread.start()

    def _load(self, on_ready: Callable[[Scorer], None] | None) -> None:
        started = time.monotonic()
        try:
            scorer = self._scorer = self._factory()
            log.info("model ready: %s (%.1f s)", scorer.model_version, time.monotonic() - started)
        except BaseException as exc:  # noqa: BLE001 - reported through get() and /health
            self._error = exc
            log.error("loading the model failed: %s", exc)
            return
        finally:
            self._ready.set()
        if on_ready is not None:
            try:
                on_ready(scorer)
            except Exception:
                log.exception("after loading the model")

    @property
    def state(self) -> str:
        if not self._ready.is_set():
            return "loading"
        return "ready" if self._scorer is not None else "failed"

    @property
    def error(self) -> str | None:
        return f"{type(self._error).__name__}: {self._error}" if self._error else None

    def get(self, timeout: float | None = 0.0) -> Scorer:
        if not self._ready.wait(timeout):
            raise ModelNotReadyError("the model is still loading; try again in a moment")
        scorer = self._scorer  # one read: a concurrent replace() gives the old or the new scorer, whole
        if scorer is None:
            raise ModelNotReadyError(f"the model failed to load: {self.error}", failed=True)
        return scorer

    def wait(self, timeout: float | None) -> bool:
        """Wait until loading finished (successfully or not)."""
        return self._ready.wait(timeout)

    def replace(self, scorer: Scorer) -> Scorer | None:
        """Serve ``scorer`` from now on; requests that already took the old one finish with it."""
        with self._swap_lock:
            old, self._scorer = self._scorer, scorer
        return old


@dataclass
class _Pending:
    position: int
    task_id: int | None
    job: ScoreJob


class BackendService:
    """``scorer_factory``: a fixed scorer (tests); by default the active difficulty version of
    MODEL_DIR is served and followed (``follower``, see ``live.py``). ``training``: the
    START_TRAINING hook; by default training jobs of MODEL_DIR (``training.py``)."""

    def __init__(self, settings: Settings, *, scorer_factory: Callable[[], Scorer] | None = None,
                 training: TrainingHook | None = None, follower: Any = None) -> None:
        self.settings = settings
        self.instance_id = uuid.uuid4().hex
        self.started_at = time.time()
        self.metrics = BackendMetrics()
        self.access = AccessPolicy.from_settings(settings)
        self.store = BackendStore(settings.backend_state_path)
        self.configs = ConfigCache()
        # Selection features of every scored video are kept for the queue ordering (ml_backend/prioritize).
        self.features = FeatureRecorder(settings.cache_dir / "features")
        if follower is None and scorer_factory is None:
            from .live import VersionFollower

            follower = VersionFollower(settings, prepare=self.features.attach)
        self.follower = follower
        if follower is not None:
            self.scorer = ScorerHandle(follower.initial_scorer)
        else:
            assert scorer_factory is not None
            self.scorer = ScorerHandle(self.features.attaching(scorer_factory))
        self.media = MediaResolver(settings.download_dir, max_bytes=settings.media_max_bytes,
                                   timeout_s=settings.media_timeout_s, local_files_root=settings.local_files_root)
        self.queue = ScoringQueue(
            scorer=lambda: self.scorer.get(None), resolver=self.media, store=self.store, metrics=self.metrics,
            on_late_result=self.push_late, batch_size=settings.batch_size,
            download_workers=settings.download_workers, scorer_for=self._earlier_scorer,
            on_features=self.features.record,
        )
        self.project_sync = ProjectSync(instance_id=self.instance_id, public_url=settings.public_url,
                                        webhook_header=self.access.webhook_header)
        if training is None:
            from .training import BackendTraining

            training = BackendTraining(settings, self.store, connection_for=self.connection_for,
                                       config_for=self.config_for, on_finished=self.nudge)
        self.training = training
        self.priority = BackendPriority(
            settings.priority, recorder=self.features, scorer=lambda: self.scorer.get(None), resolver=self.media,
            registry=self.metrics.registry, ask=self._ask_priority,
            busy=lambda: self.queue.pending > 0 or bool(self.outbox.pending("push")),
        )
        actions = LabelStudioActions(
            connection_for=self.connection_for, config_for=self.config_for, project_sync=self.project_sync,
            backfill=self._backfill, priority_pass=self.priority.run, priority_debounce_s=settings.priority.debounce_s,
            on_push=lambda result: self.metrics.pushes.labels(result).inc())
        kinds = actions.kinds()
        if self.follower is not None:
            kinds["follow"] = self.follower.action()
        if hasattr(training, "action"):
            kinds["job"] = training.action()
        # All background work goes through here: durable, keyed, retried (server/outbox.py).
        self.outbox = Outbox(settings.outbox_path, kinds, lanes={"fast": 2, "slow": 1, "model": 1},
                             on_outcome=lambda kind, outcome: self.metrics.outbox.labels(kind, outcome).inc())
        if hasattr(training, "attach"):
            training.attach(lambda job_id: self.outbox.ask("job", job_id))
        self._synced: dict[tuple[int, str], float] = {}  # (project, version) -> monotonic time of the last sync ask
        self._backfilled: set[tuple[int, str]] = set()
        self._setup_connections: dict[int, Connection] = {}
        self._setup_configs: dict[int, ProjectConfig] = {}
        self._refresh_wanted: set[int] = set()  # projects whose predictions a new version must refresh
        self._lock = threading.Lock()
        self._components = contextlib.ExitStack()
        self._started = False

    def start(self) -> None:
        """Start loading the model and every background component (once the server is about to listen).

        Each component is started here and its stop registered on one exit stack, so stop()
        ends them all, in reverse order, even when a later start failed.
        """
        if self._started:
            return
        self._started = True
        stack = self._components
        try:
            stack.callback(self.media.close)
            stack.callback(self.store.close)
            self.outbox.start()
            stack.callback(self.outbox.stop)
            self.queue.start()
            stack.callback(self.queue.stop)
            self.scorer.start(on_ready=self._model_ready)
            if self.follower is not None:
                self.follower.start(self.scorer, self._on_new_version,
                                    lambda delay: self.outbox.ask("follow", "difficulty", delay=delay))
                stack.callback(self.follower.stop)
        except BaseException:
            stack.close()
            raise

    def stop(self) -> None:
        self._components.close()

    def _model_ready(self, scorer: Scorer) -> None:
        self.metrics.model_info.info({"version": scorer.model_version})
        self.metrics.model_ready.set(1)
        if self.follower is not None and self.follower.active_id is not None:
            # Serving a trained version from the start (it may have been activated while we were down):
            # make sure known projects get its predictions once Label Studio calls /setup again.
            with self._lock:
                self._refresh_wanted.update(self.store.projects())

    # Model versions --------------------------------------------------------------------------
    def nudge(self) -> None:
        """Look for a newly activated version now (cheap; the follower thread does the work)."""
        if self.follower is not None:
            self.follower.nudge()

    def _earlier_scorer(self, model_version: str) -> Scorer | None:
        return self.follower.scorer_for(model_version) if self.follower is not None else None

    def _on_new_version(self, old: str, new: str) -> None:
        """After a switch: keep Label Studio's model_version equal to ours and refresh predictions."""
        self.metrics.model_info.info({"version": new})
        for project_id in self.store.projects():
            connection = self.connection_for(project_id)
            config = self.config_for(project_id)
            if connection is None or config is None:
                with self._lock:  # done on its next /setup, which brings URL, token and config
                    self._refresh_wanted.add(project_id)
                continue
            self.request_sync(project_id, new, force=True)  # a rollback returns to a synced version
            self.request_backfill(project_id, new, force=True)
        log.info("model version %s -> %s: Label Studio projects follow, predictions are refreshed", old, new)

    def config_for(self, project_id: int) -> ProjectConfig | None:
        with self._lock:
            return self._setup_configs.get(project_id)

    # Connections -------------------------------------------------------------------------------
    def connection_for(self, project_id: int | None) -> Connection | None:
        """Label Studio URL and token for a project; each token goes only where it belongs (choose_connection)."""
        with self._lock:
            from_setup = self._setup_connections.get(project_id) if project_id is not None else None
        key = self.settings.label_studio_api_key
        try:
            return choose_connection(self.settings.label_studio_url, key.get_secret_value() if key else None,
                                     from_setup)
        except ValueError:
            log.warning("ignoring LABEL_STUDIO_URL %r: not an http(s) URL", str(self.settings.label_studio_url)[:80])
            return None

    # Background work, all through the outbox ---------------------------------------------------
    def request_sync(self, project_id: int, version: str, *, force: bool = False) -> bool:
        """Sync the project with our model version, unless asked recently (``force``: a rollback to it)."""
        key = (project_id, version)
        now = time.monotonic()
        with self._lock:
            last = self._synced.get(key)
            if not force and last is not None and now - last < self.settings.model_version_recheck_s:
                return False
            self._synced[key] = now
        self.outbox.ask("sync", str(project_id), {"project": project_id, "version": version})
        return True

    def request_backfill(self, project_id: int, version: str, *, force: bool = False) -> bool:
        """Score every task lacking a prediction of ``version``: once per process and version unless forced."""
        with self._lock:
            if (project_id, version) in self._backfilled and not force:
                return False
            self._backfilled.add((project_id, version))
        self.outbox.ask("backfill", f"{project_id}:{version}", {"project": project_id, "version": version})
        return True

    def push_late(self, target: PushTarget, outcome: JobOutcome, model_version: str) -> None:
        """A result no /predict answered: post it to Label Studio through the outbox (never a placeholder)."""
        if outcome.difficulty is None:
            log.warning("task %s: no prediction stored: %s", target.task_id, outcome.error)
            self.metrics.pushes.labels("skipped_failed").inc()
            return
        score = self.priority.score_for(target.project_id, target.task_id, outcome.difficulty, model_version)
        key, payload = push_payload(target.task_id, target.project_id,
                                    build_prediction(outcome.difficulty, target.config, model_version, score=score))
        self.outbox.ask("push", key, payload)

    def _backfill(self, api: LabelStudioApi, project_id: int, config: ProjectConfig, version: str) -> None:
        work = enqueue_project(api, project_id, config, version, self.queue, self.store)
        for task_id, outcome in work.done:
            self.push_late(PushTarget(task_id, project_id, config), JobOutcome(outcome.difficulty, outcome.error, True),
                           version)
        for task_id, job in work.queued:
            target = PushTarget(task_id, project_id, config)
            if not job.push_to(target) and job.outcome is not None:
                self.push_late(target, job.outcome, version)
        log.info("project %s: background pass: %d tasks lacked a prediction (%d known, %d queued, %d unusable)",
                 project_id, work.total, len(work.done), len(work.queued), len(work.unusable))

    def _ask_priority(self, project_id: int, reason: str, delay: float | None) -> None:
        self.outbox.ask("priority", str(project_id), {"project": project_id, "reason": reason}, delay=delay)

    # Routes ---------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        self.nudge()
        body: dict[str, Any] = {
            "status": "UP",
            "model_class": "MDS-VQA difficulty",
            "model": self.scorer.state,
            "instance_id": self.instance_id,
            "queue_length": self.queue.pending,
        }
        if self.scorer.state == "ready":
            body["model_version"] = self.scorer.get().model_version
        elif self.scorer.state == "failed":
            body["error"] = self.scorer.error
        if self.follower is not None:
            body["active_version"] = self.follower.active_id
            if self.follower.error:
                body["version_error"] = self.follower.error
        return body

    def setup(self, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequestError("/setup body must be a JSON object")
        project_id = parse_project_id(body.get("project"))
        config = self.configs.get(body.get("schema") or "")  # LabelConfigError: the project cannot work
        self.nudge()
        scorer = self.scorer.get(SETUP_WAIT_S)
        version = scorer.model_version
        if project_id is not None:
            hostname, token = body.get("hostname"), body.get("access_token")
            if isinstance(hostname, str) and isinstance(token, str) and hostname and token:
                try:
                    with self._lock:
                        self._setup_connections[project_id] = Connection(hostname, token)
                except ValueError:
                    log.warning("/setup: ignoring hostname %r: not an http(s) URL", hostname[:80])
            self.store.record_project(project_id)
            with self._lock:
                self._setup_configs[project_id] = config
            connection = self.connection_for(project_id)
            if connection is None:
                log.warning("project %s: no Label Studio URL/token known: cannot keep model_version in sync or "
                            "push late predictions (set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)", project_id)
            else:
                with self._lock:
                    refresh = project_id in self._refresh_wanted  # a version switch this project missed
                    self._refresh_wanted.discard(project_id)
                self.request_sync(project_id, version, force=refresh)
                if self.settings.score_project_on_setup or refresh:
                    self.request_backfill(project_id, version, force=refresh)
                self.priority.on_setup(project_id, connection, version)
        return {"model_version": version}

    def predict(self, body: Any, *, wait: bool = True) -> dict[str, Any]:
        """``wait=False`` (every waiting slot taken, see app.py): answer at once with what is cached;
        tasks still to score are deferred as at the deadline, and never wait for the model to load."""
        started = time.monotonic()
        deadline = started + self.settings.predict_deadline_s
        if not isinstance(body, dict):
            raise BadRequestError("/predict body must be a JSON object")
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequestError("/predict body needs 'tasks': a list of tasks")
        project_id = parse_project_id(body.get("project"))
        label_config = body.get("label_config") or ""
        if not isinstance(label_config, str):
            raise BadRequestError("'label_config' must be the label config: a string of XML")
        config = self.configs.get(label_config)
        self.nudge()
        scorer = self.scorer.get(min(SETUP_WAIT_S, self.settings.predict_deadline_s) if wait else 0.0)
        version = scorer.model_version
        connection = self.connection_for(project_id)

        results: list[Any] = [[] for _ in tasks]  # [] = no prediction for this task (never a placeholder)
        errors: list[dict[str, Any]] = []
        pending: list[_Pending] = []
        counts = {"cached": 0, "scored": 0, "deferred": 0, "failed": 0}

        def settle(position: int, task_id: Any, outcome: JobOutcome | StoredOutcome, how: str) -> None:
            if outcome.difficulty is not None:
                score = self.priority.score_for(project_id, task_id, outcome.difficulty, version)  # the queue's
                results[position] = build_prediction(outcome.difficulty, config, version, score=score)
                counts[how] += 1
            else:
                errors.append({"task": task_id, "error": outcome.error})
                counts["failed"] += 1

        for position, task in enumerate(tasks):
            task_id = task.get("id") if isinstance(task, dict) else None
            ref, why = config.media_ref(task.get("data") if isinstance(task, dict) else None)
            if ref is None:
                errors.append({"task": task_id, "error": why})
                counts["failed"] += 1
                continue
            key = media_key(ref, connection)
            stored = self.store.outcome(version, key)
            if stored is not None:
                self.metrics.cache.labels("hit").inc()
                settle(position, task_id, stored, "cached")
                continue
            self.metrics.cache.labels("miss").inc()
            job = self.queue.submit(
                MediaRequest(key, ref, task_id if isinstance(task_id, int) else None, connection),
                priority=max(PRIORITY_INTERACTIVE, len(tasks)), model_version=version,
            )
            if isinstance(job, StoredOutcome):
                settle(position, task_id, job, "cached")
                continue
            if isinstance(task_id, int):
                job.watch(task_id)
            pending.append(_Pending(position, task_id, job))

        for item in pending:
            item.job.wait(max(0.0, deadline - time.monotonic()) if wait else 0.0)
        for item in pending:
            outcome: JobOutcome | None
            if isinstance(item.task_id, int):
                late = PushTarget(item.task_id, project_id, config) if connection is not None else None
                outcome = item.job.unwatch(item.task_id, late)
            else:
                outcome = item.job.outcome
            if outcome is not None:
                settle(item.position, item.task_id, outcome, "scored")
            else:
                counts["deferred"] += 1
                errors.append({"task": item.task_id,
                               "error": "still scoring at the deadline; the prediction will be added when ready"
                               if connection else "still scoring at the deadline; retrieve predictions again later"})
        for how, count in counts.items():
            if count:
                self.metrics.predictions.labels(how).inc(count)
        if counts["deferred"] or counts["failed"]:
            log.info("/predict: %d tasks: %s (%.2f s)", len(tasks), counts, time.monotonic() - started)
        self.priority.on_predict(project_id, connection, counts["cached"] + counts["scored"] + counts["deferred"])
        response: dict[str, Any] = {"results": results, "model_version": version}
        if errors:
            response["errors"] = errors
        return response

    def webhook(self, body: Any) -> WebhookReply:
        reply = handle_event(body, store=self.store, training=self.training)
        action = body.get("action") if isinstance(body, dict) else None
        action = action if isinstance(action, str) else "none"
        if reply.handling == "recorded":  # label events: re-order the queue later, never in this request
            project_id = reply.body.get("project")
            self.priority.on_event(project_id, self.connection_for(project_id), recorded=True)
        self.metrics.webhooks.labels(action[:40], reply.handling).inc()
        return reply

    def versions(self) -> dict[str, Any]:
        """Label Studio's model-version list (``versions``: ours first, then every other difficulty
        version of MODEL_DIR) plus the version store: ids, kinds, active flags, metrics."""
        from ..training.reporting import store_summary
        from ..training.versions import VersionStore

        scorer = self.scorer.get(SETUP_WAIT_S)
        summary = store_summary(VersionStore(self.settings.model_dir))
        names = [scorer.model_version]
        for entry in summary["versions"]:
            if entry["kind"] == "difficulty" and self.follower is not None:
                entry["model_version"] = self.follower.model_version_of(entry["id"])
                if entry["model_version"] and entry["model_version"] not in names:
                    names.append(entry["model_version"])
        stock = self.follower.stock_version if self.follower is not None else None
        if stock and stock not in names:
            names.append(stock)
        body: dict[str, Any] = {"versions": names, "model_version": scorer.model_version,
                                "serving": self.follower.active_id if self.follower is not None else None,
                                "active": summary["active"], "store": summary["versions"]}
        if self.follower is not None and self.follower.error:
            body["version_error"] = self.follower.error
        return body

    def train_status(self, job_id: str | None = None, log_lines: int = 0) -> dict[str, Any]:
        status = getattr(self.training, "status", None)
        if status is None:
            return {"running": False, "job": None, "detail": "this backend does not train"}
        return status(job_id, log_lines=log_lines)


def _load_real_scorer(settings: Settings) -> Scorer:
    from ..scoring import DifficultyScorer

    scorer = DifficultyScorer.from_settings(settings)
    _ = scorer.loaded  # load the weights now, not on the first request (/health says "loading" meanwhile)
    return scorer

