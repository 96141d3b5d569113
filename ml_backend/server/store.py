"""The backend's persistent state in one SQLite file: scores by media reference, projects, events.

The scorer caches by file content, which needs the file; a /predict for 100 cached
tasks must not download 100 videos. So the backend also remembers the outcome per
(model version, media reference) and answers those from memory. It survives restarts.
Only final outcomes are stored: a score, or a video the model cannot read. Download
failures are not (the next request retries them), and stored failures expire after an
hour, in case the cause was passing (a model error under memory pressure).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ERROR_RETRY_S = 3600.0
MAX_EVENTS = 100_000  # label events kept (oldest pruned); training markers are always kept
_PRUNE_EVERY = 1000
_KEPT_ACTIONS = ("START_TRAINING", "TRAINING_STARTED")


def event_summary(payload: dict[str, Any]) -> dict[str, Any]:
    """What an event row keeps of a webhook body: ids only.

    Label Studio sends whole tasks and annotations (task data with media URLs, the
    annotator's results); nothing here needs them, and keeping them would store every
    label twice and every media URL (maybe presigned) in clear.
    """
    summary: dict[str, Any] = {}
    for name in ("annotation", "task", "project"):
        value = payload.get(name)
        if isinstance(value, dict):
            value = value.get("id")
        if isinstance(value, (int, str)):
            summary[name] = value
    for name in ("annotations", "tasks"):
        items = payload.get(name)
        if isinstance(items, list):
            summary[name] = [item.get("id") for item in items[:1000] if isinstance(item, dict)]
    for name in ("job_id", "trigger"):
        if isinstance(payload.get(name), str):
            summary[name] = payload[name][:200]
    return summary

_SCHEMA = """
CREATE TABLE IF NOT EXISTS media_scores (
    model_version TEXT NOT NULL,
    media_key TEXT NOT NULL,
    difficulty REAL,
    error TEXT,
    updated_at REAL NOT NULL,
    PRIMARY KEY (model_version, media_key)
);
CREATE TABLE IF NOT EXISTS projects (
    project_id INTEGER PRIMARY KEY,
    first_setup REAL NOT NULL,
    last_setup REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER,
    action TEXT NOT NULL,
    received_at REAL NOT NULL,
    payload TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS webhook_events_project ON webhook_events (project_id, action, id);
"""


@dataclass(frozen=True)
class StoredOutcome:
    """A final outcome for one video under one model version: a difficulty or why there is none."""

    difficulty: float | None
    error: str | None
    updated_at: float = 0.0

    @property
    def ok(self) -> bool:
        return self.difficulty is not None


class BackendStore:
    def __init__(self, path: Path, *, memory_items: int = 200_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._memory: OrderedDict[tuple[str, str], StoredOutcome] = OrderedDict()
        self._memory_items = memory_items
        self.max_events = MAX_EVENTS
        self._projects: set[int] = {row[0] for row in self._db.execute("SELECT project_id FROM projects")}

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # Scores -----------------------------------------------------------------------------------
    def outcome(self, model_version: str, media_key: str) -> StoredOutcome | None:
        key = (model_version, media_key)
        with self._lock:
            hit = self._memory.get(key)
            if hit is None:
                row = self._db.execute(
                    "SELECT difficulty, error, updated_at FROM media_scores WHERE model_version=? AND media_key=?",
                    key,
                ).fetchone()
                if row is None:
                    return None
                hit = StoredOutcome(row[0], row[1], row[2])
            self._remember(key, hit)
        if not hit.ok and time.time() - hit.updated_at > ERROR_RETRY_S:
            return None
        return hit

    def save_outcome(self, model_version: str, media_key: str, outcome: StoredOutcome) -> None:
        key = (model_version, media_key)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO media_scores VALUES (?, ?, ?, ?, ?)",
                (*key, outcome.difficulty, outcome.error, time.time()),
            )
            self._remember(key, StoredOutcome(outcome.difficulty, outcome.error, time.time()))

    def _remember(self, key: tuple[str, str], outcome: StoredOutcome) -> None:
        self._memory[key] = outcome
        self._memory.move_to_end(key)
        while len(self._memory) > self._memory_items:
            self._memory.popitem(last=False)

    # Projects ---------------------------------------------------------------------------------
    def record_project(self, project_id: int) -> None:
        now = time.time()
        with self._lock:
            self._db.execute(
                "INSERT INTO projects VALUES (?, ?, ?) ON CONFLICT(project_id) DO UPDATE SET last_setup=?",
                (project_id, now, now, now),
            )
            self._projects.add(project_id)

    def is_known_project(self, project_id: int) -> bool:
        with self._lock:
            return project_id in self._projects

    # Webhook events (the training module reads these) ------------------------------------------
    def record_event(self, action: str, project_id: int | None, payload: dict[str, Any]) -> int:
        """Keep one event (ids only: ``event_summary``); beyond MAX_EVENTS the oldest label events go."""
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO webhook_events (project_id, action, received_at, payload) VALUES (?, ?, ?, ?)",
                (project_id, action, time.time(), json.dumps(event_summary(payload), default=str)),
            )
            event_id = int(cursor.lastrowid or 0)
            if event_id % _PRUNE_EVERY == 0:
                marks = ",".join("?" * len(_KEPT_ACTIONS))
                self._db.execute(
                    f"DELETE FROM webhook_events WHERE id <= ? AND action NOT IN ({marks})",
                    (event_id - self.max_events, *_KEPT_ACTIONS))
            return event_id

    def last_event_id(self, project_id: int, action: str) -> int:
        """Id of the project's latest event of ``action`` (0 when there is none)."""
        with self._lock:
            row = self._db.execute("SELECT MAX(id) FROM webhook_events WHERE project_id=? AND action=?",
                                   (project_id, action)).fetchone()
        return int(row[0] or 0)

    def count_events(self, project_id: int, actions: tuple[str, ...], *, after_id: int = 0) -> int:
        """How many of the project's events with one of ``actions`` came after event ``after_id``."""
        marks = ",".join("?" * len(actions))
        with self._lock:
            row = self._db.execute(
                f"SELECT COUNT(*) FROM webhook_events WHERE project_id=? AND id>? AND action IN ({marks})",
                (project_id, after_id, *actions)).fetchone()
        return int(row[0])

    def projects(self) -> list[int]:
        """Every project that ever called /setup here."""
        with self._lock:
            return sorted(self._projects)

    def events(self, action: str | None = None) -> list[dict[str, Any]]:
        query = "SELECT id, project_id, action, received_at, payload FROM webhook_events"
        args: tuple = ()
        if action:
            query += " WHERE action=?"
            args = (action,)
        with self._lock:
            rows = self._db.execute(query + " ORDER BY id", args).fetchall()
        return [dict(id=r[0], project_id=r[1], action=r[2], received_at=r[3], payload=json.loads(r[4]))
                for r in rows]
