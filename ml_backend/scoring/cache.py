"""Persistent score cache in sqlite: scoring a video again is a lookup, across restarts and processes.

The key hashes the video's bytes together with the model identity and every setting
that changes the answer, so a different checkpoint, prompt, sampling or frame budget
never reads a stale score. Only successful scores are stored; failures are retried.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scores (
    key TEXT PRIMARY KEY,
    score REAL NOT NULL,
    raw_text TEXT NOT NULL,
    model_version TEXT NOT NULL,
    created REAL NOT NULL
)
"""


@dataclass(frozen=True)
class CachedScore:
    score: float
    raw_text: str
    model_version: str


def cache_key(content_digest: str, identity: dict) -> str:
    blob = json.dumps({"content": content_digest, "identity": identity}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class ScoreCache:
    """Thread-safe; safe across processes through sqlite's own locking (WAL mode)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)

    def get(self, key: str) -> CachedScore | None:
        with self._lock:
            row = self._db.execute("SELECT score, raw_text, model_version FROM scores WHERE key = ?", (key,)).fetchone()
        return CachedScore(*row) if row else None

    def put(self, key: str, entry: CachedScore) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO scores (key, score, raw_text, model_version, created) VALUES (?, ?, ?, ?, ?)",
                (key, entry.score, entry.raw_text, entry.model_version, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM scores").fetchone()[0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
