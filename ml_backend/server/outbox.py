"""The one scheduler for the backend's background work: a durable, keyed, retrying outbox.

Built on huey's SQLite storage (``MDSVQA_CACHE_DIR/backend/outbox.sqlite``): huey gives the
persistent queue and schedule, the scheduler that releases delayed runs and the worker
threads. What huey lacks is per-key state: "order project 3's queue 2 s after the latest
label, once" or "this push supersedes the earlier one". That lives in huey's key-value
table as one ``Entry`` per key (``outbox_state``, pure); a huey task carries only
(kind, key, token) and runs the handler when its token is still the entry's.

Durability: an entry is written before its run is scheduled and removed only after its
handler succeeded (or its policy gave up), so work survives outages of any length (pushes
retry forever) and restarts: at start every entry on disk is scheduled again under a new
token and huey's own queue is cleared (runs left there would be stale anyway). A process
killed during a handler runs that handler again after the restart: handlers are idempotent
(a push first checks that the task lacks the prediction).

Lanes: ``fast`` (pushes, syncs: seconds) and ``slow`` (project passes: minutes) are two huey
queues in the same file, each with its own threads, so a long pass never holds up a push.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import MdsVqaError
from .outbox_state import ActionPolicy, Entry, on_ask, on_failure, on_restart, on_success, should_run

log = logging.getLogger(__name__)

POLL_S = 0.2  # how long an idle worker waits before looking at the queue again
_ENTRY_PREFIX = "mdsvqa.entry:"


class RetryLater(MdsVqaError):
    """A handler's "not now": retried by the policy (``delay`` overrides its next wait)."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


Handler = Callable[[str, dict[str, Any]], None]
Classifier = Callable[[BaseException], bool]


@dataclass(frozen=True)
class ActionKind:
    """A kind of action: its policy and the function that does it (``handler(key, payload)``)."""

    policy: ActionPolicy
    handler: Handler


def transient_by_default(exc: BaseException) -> bool:
    """Whether retrying can help: RetryLater and errors flagged transient (Label Studio's); not bugs."""
    if isinstance(exc, RetryLater):
        return True
    return bool(getattr(exc, "transient", False))


class Outbox:
    """``kinds``: the actions it runs; ``lanes``: worker threads per lane."""

    def __init__(self, path: Path, kinds: Mapping[str, ActionKind], *, lanes: Mapping[str, int] | None = None,
                 transient: Classifier = transient_by_default, on_outcome: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        from huey import SqliteHuey

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.kinds = dict(kinds)
        self._lanes = dict(lanes or {"fast": 2, "slow": 1})
        unknown = {k.policy.lane for k in self.kinds.values()} - set(self._lanes)
        if unknown:
            raise ValueError(f"actions use lanes without workers: {sorted(unknown)}")
        self._transient = transient
        self._on_outcome = on_outcome or (lambda _kind, _outcome: None)
        self._clock = clock
        self._lock = threading.RLock()  # entries are read-modify-written under it (one process owns the file)
        self._hueys = {lane: SqliteHuey(name=lane, filename=str(self.path), results=False, utc=True)
                       for lane in self._lanes}
        self._tasks = {lane: huey.task(name=f"mdsvqa.outbox.{lane}")(self._run) for lane, huey in self._hueys.items()}
        self._consumers: list[Any] = []
        self._running: Counter[str] = Counter()
        self._idle = threading.Condition(self._lock)

    # Lifecycle ---------------------------------------------------------------------------------
    def start(self) -> None:
        """Re-issue what is on disk, then start the workers."""
        from huey.consumer import Consumer

        class _QuietConsumer(Consumer):  # the host process (the server, a CLI) owns the signals
            def _set_signal_handlers(self) -> None:
                pass

        if self._consumers:
            return
        with self._lock:
            for huey in self._hueys.values():
                huey.storage.flush_queue()
                huey.storage.flush_schedule()
            restored = [on_restart(entry, self._clock()) for entry in self._entries()]
            for entry in restored:
                self._save(entry)
                self._schedule(entry)
        if restored:
            log.info("outbox: %d action(s) from before the restart scheduled again (%s)", len(restored),
                     dict(Counter(entry.kind for entry in restored)))
        for lane, workers in self._lanes.items():
            consumer = _QuietConsumer(self._hueys[lane], workers=workers, periodic=False, initial_delay=POLL_S,
                                      backoff=1.0, max_delay=POLL_S, check_worker_health=False)
            consumer.start()
            self._consumers.append(consumer)

    def stop(self, timeout: float = 10.0) -> None:
        """Let running handlers finish (bounded); what is pending stays on disk for the next start."""
        consumers, self._consumers = self._consumers, []
        for consumer in consumers:
            consumer.shutdown_timeout = timeout
            consumer.stop(graceful=True)

    # Asking --------------------------------------------------------------------------------------
    def ask(self, kind: str, key: str, payload: dict[str, Any] | None = None, *, delay: float | None = None) -> Entry:
        """Schedule ``kind`` for ``key`` by its policy (debounced, deduplicated). Never blocks on the work."""
        action = self.kinds[kind]
        json.dumps(payload or {})  # payloads are stored as JSON: fail here, not in a worker
        with self._lock:
            entry = on_ask(action.policy, self._load(kind, key), key, payload or {}, self._clock(), delay)
            self._save(entry)
            self._schedule(entry)
            self._idle.notify_all()
        return entry

    def cancel(self, kind: str, key: str) -> bool:
        with self._lock:
            found = self._load(kind, key) is not None
            self._hueys[self.kinds[kind].policy.lane].storage.pop_data(_storage_key(kind, key))
            self._idle.notify_all()
        return found

    # Looking -------------------------------------------------------------------------------------
    def pending(self, kind: str | None = None) -> list[Entry]:
        """Entries waiting or running (of one kind), soonest first."""
        with self._lock:
            entries = [entry for entry in self._entries() if kind is None or entry.kind == kind]
        return sorted(entries, key=lambda entry: entry.due)

    def entry(self, kind: str, key: str) -> Entry | None:
        with self._lock:
            return self._load(kind, key)

    def running(self, kind: str | None = None) -> int:
        with self._lock:
            return sum(self._running.values()) if kind is None else self._running[kind]

    def wait_idle(self, timeout: float, kinds: Iterable[str] | None = None) -> bool:
        """True once no entry (of ``kinds``) is pending or running; False at the timeout."""
        wanted = set(kinds) if kinds is not None else None
        deadline = time.monotonic() + timeout

        def busy() -> bool:
            return any(wanted is None or entry.kind in wanted for entry in self._entries())

        with self._idle:
            while busy():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.5))
        return True

    # Running -----------------------------------------------------------------------------------------
    def _run(self, kind: str, key: str, token: str) -> None:
        """A huey task: do the entry's work if this run is still the current one, then settle it."""
        action = self.kinds.get(kind)
        if action is None:
            log.error("outbox: no handler for %r (dropped %s)", kind, key)
            return
        with self._lock:
            entry = self._load(kind, key)
            if not should_run(entry, token):
                return
            assert entry is not None
            self._running[kind] += 1
        try:
            action.handler(key, entry.payload)
        except BaseException as exc:  # noqa: BLE001 - every failure is settled by the policy
            self._settle_failure(action.policy, entry, token, exc)
        else:
            with self._lock:
                if on_success(self._load(kind, key), token):
                    self._delete(kind, key)
            self._on_outcome(kind, "ok")
        finally:
            with self._lock:
                self._running[kind] -= 1
                self._idle.notify_all()

    def _settle_failure(self, policy: ActionPolicy, entry: Entry, token: str, exc: BaseException) -> None:
        transient = self._transient(exc)
        message = f"{type(exc).__name__}: {exc}"
        with self._lock:
            current = self._load(entry.kind, entry.key)
            decision = on_failure(policy, current, token, self._clock(), transient=transient, error=message,
                                  delay=exc.delay if isinstance(exc, RetryLater) else None)
            if decision.entry is not None:
                self._save(decision.entry)
                self._schedule(decision.entry)
            elif decision.gave_up:
                self._delete(entry.kind, entry.key)
        if decision.gave_up:
            if transient:
                log.error("%s %s: giving up after %d attempts: %s", entry.kind, entry.key, entry.attempt + 1, message)
            elif isinstance(exc, MdsVqaError):
                log.error("%s %s failed: %s", entry.kind, entry.key, message)
            else:
                log.error("%s %s failed", entry.kind, entry.key, exc_info=exc)
            self._on_outcome(entry.kind, "gave_up")
        elif decision.entry is not None:
            level = logging.DEBUG if isinstance(exc, RetryLater) else logging.INFO
            log.log(level, "%s %s: %s; again in %.1f s", entry.kind, entry.key, message, decision.delay or 0.0)
            self._on_outcome(entry.kind, "retry")

    # Storage (under self._lock) ---------------------------------------------------------------------
    def _storage(self, kind: str) -> Any:
        return self._hueys[self.kinds[kind].policy.lane].storage

    def _load(self, kind: str, key: str) -> Entry | None:
        from huey.constants import EmptyData

        raw = self._storage(kind).peek_data(_storage_key(kind, key))
        return None if raw is EmptyData else Entry.from_json(json.loads(raw))

    def _save(self, entry: Entry) -> None:
        self._storage(entry.kind).put_data(_storage_key(entry.kind, entry.key), json.dumps(entry.to_json()).encode())

    def _delete(self, kind: str, key: str) -> None:
        self._storage(kind).pop_data(_storage_key(kind, key))

    def _entries(self) -> list[Entry]:
        entries = []
        for huey in self._hueys.values():
            for name, raw in huey.storage.result_items().items():
                if str(name).startswith(_ENTRY_PREFIX):
                    entries.append(Entry.from_json(json.loads(raw)))
        return entries

    def _schedule(self, entry: Entry) -> None:
        lane = self.kinds[entry.kind].policy.lane
        delay = entry.due - self._clock()
        task = self._tasks[lane]
        if delay > 0:
            task.schedule(args=(entry.kind, entry.key, entry.token), delay=delay)
        else:
            task(entry.kind, entry.key, entry.token)


def _storage_key(kind: str, key: str) -> str:
    return f"{_ENTRY_PREFIX}{kind}:{key}"
