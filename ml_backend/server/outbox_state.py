"""The outbox's decisions, as pure functions of (policy, the key's entry, now).

Every piece of background work the backend sends to Label Studio is an *action*: a kind
(push a prediction, sync a project, order its queue...) and a key (the task and version,
the project). Per key there is at most one ``Entry``: what to do (``payload``, the latest
ask wins), when (``due``) and how often it has failed (``attempt``). Each ask draws a new
``token``; a scheduled run whose token is no longer the entry's is stale and does nothing.
That one rule gives dedupe (two asks, one run), debounce (a later ask moves the run) and
safe rescheduling after a restart (old runs are stale once new ones are issued).

No clock, thread or storage here: ``ml_backend.server.outbox`` persists entries and runs
them; these functions are tested directly (tests/test_outbox_state.py).
"""

from __future__ import annotations

import secrets
from dataclasses import asdict, dataclass, field, replace
from typing import Any


@dataclass(frozen=True)
class ActionPolicy:
    """How one kind of action is scheduled, deduplicated and retried.

    ``debounce_s``: a run waits this long after the latest ask, but never longer than
    ``max_wait_s`` after the first ask still waiting (so a steady stream of asks still gets
    runs). ``retry_delays_s``: the waits after the 1st, 2nd... transient failure. After the
    last one, ``retry_forever`` keeps retrying at the last delay (work that must never be
    lost: predictions); otherwise the entry is dropped and logged (work the next ask redoes).
    ``lane``: the worker group that runs it (slow passes must not hold up quick pushes).
    ``earliest_wins``: an ask may bring the run forward instead of pushing it back (polling,
    where a nudge means "look now").
    """

    kind: str
    lane: str = "fast"
    debounce_s: float = 0.0
    max_wait_s: float | None = None
    retry_delays_s: tuple[float, ...] = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
    retry_forever: bool = False
    earliest_wins: bool = False

    def __post_init__(self) -> None:
        if self.debounce_s < 0 or any(delay < 0 for delay in self.retry_delays_s):
            raise ValueError(f"{self.kind}: delays must not be negative")
        if self.retry_forever and not self.retry_delays_s:
            raise ValueError(f"{self.kind}: retry_forever needs at least one retry delay")

    def retry_delay(self, attempt: int) -> float | None:
        """The wait after failure number ``attempt`` (1-based), or None: give up."""
        if attempt < 1:
            raise ValueError("attempt counts failures from 1")
        if attempt <= len(self.retry_delays_s):
            return self.retry_delays_s[attempt - 1]
        return self.retry_delays_s[-1] if self.retry_forever else None


@dataclass(frozen=True)
class Entry:
    """The one pending action of a key."""

    kind: str
    key: str
    payload: dict[str, Any]
    due: float  # wall-clock seconds (survives restarts, unlike a monotonic clock)
    first_ask: float  # the first ask still waiting: bounds the debounce
    token: str = field(default_factory=lambda: secrets.token_hex(8))
    attempt: int = 0  # failures so far
    last_error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        return cls(kind=str(data["kind"]), key=str(data["key"]), payload=dict(data["payload"]),
                   due=float(data["due"]), first_ask=float(data["first_ask"]), token=str(data["token"]),
                   attempt=int(data.get("attempt", 0)), last_error=data.get("last_error"))


def on_ask(policy: ActionPolicy, existing: Entry | None, key: str, payload: dict[str, Any], now: float,
           delay: float | None = None) -> Entry:
    """The entry after an ask: a fresh token, the latest payload, the debounced due time.

    ``delay`` replaces the policy's debounce for this ask (e.g. "look again in 5 s").
    A failing entry that is asked again starts its retries afresh: the ask is new information.
    """
    wait = policy.debounce_s if delay is None else max(0.0, delay)
    if existing is None:
        return Entry(policy.kind, key, dict(payload), now + wait, now)
    if policy.earliest_wins:
        due = min(existing.due, now + wait) if existing.attempt == 0 else now + wait
    else:
        due = max(existing.due if existing.attempt == 0 else now, now + wait)
    limit = policy.max_wait_s
    if limit is not None:
        due = min(due, existing.first_ask + max(limit, wait))
    return Entry(policy.kind, key, dict(payload), due, existing.first_ask)


def should_run(entry: Entry | None, token: str) -> bool:
    """A scheduled run does its work only while its token is the entry's (else a newer ask owns it)."""
    return entry is not None and entry.token == token


def on_success(entry: Entry | None, token: str) -> bool:
    """True: remove the entry. False: it was asked again while running, so its newer run stays."""
    return entry is not None and entry.token == token


@dataclass(frozen=True)
class FailureDecision:
    entry: Entry | None  # the rescheduled entry, None when given up or superseded
    gave_up: bool
    delay: float | None = None


def on_failure(policy: ActionPolicy, entry: Entry | None, token: str, now: float, *, transient: bool,
               error: str, delay: float | None = None) -> FailureDecision:
    """After a failed run: retry by the policy (``delay`` overrides it, e.g. Retry-After), or give up.

    A run whose entry moved on (asked again meanwhile) changes nothing: the newer run decides.
    A permanent failure gives up at once.
    """
    if entry is None or entry.token != token:
        return FailureDecision(None, gave_up=False)
    attempt = entry.attempt + 1
    wait = policy.retry_delay(attempt) if transient else None
    if wait is None:
        return FailureDecision(None, gave_up=True)
    if delay is not None:
        wait = max(0.0, delay)
    rescheduled = replace(entry, due=now + wait, attempt=attempt, last_error=error[:500],
                          token=secrets.token_hex(8))
    return FailureDecision(rescheduled, gave_up=False, delay=wait)


def on_restart(entry: Entry, now: float) -> Entry:
    """Re-issue an entry found on disk at start: new token (runs scheduled before are stale)."""
    return replace(entry, due=max(entry.due, now), token=secrets.token_hex(8))
