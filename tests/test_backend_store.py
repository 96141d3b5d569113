"""Backend store and job hand-over: persistence, failure expiry, no double answers."""

from __future__ import annotations

import json
import time

from ml_backend.labelstudio.config import parse_label_config
from ml_backend.server import store as store_module
from ml_backend.server.queue import JobOutcome, MediaRequest, PushTarget, ScoreJob
from ml_backend.server.store import BackendStore, StoredOutcome

CONFIG = parse_label_config('<View><Video name="v" value="$video"/><Number name="difficulty" toName="v"/></View>')


def test_outcomes_survive_reopening(tmp_path):
    store = BackendStore(tmp_path / "s.sqlite")
    store.save_outcome("v1", "http://ls/data/upload/1/a.mp4", StoredOutcome(2.5, None))
    store.record_project(4)
    store.close()
    reopened = BackendStore(tmp_path / "s.sqlite")
    assert reopened.outcome("v1", "http://ls/data/upload/1/a.mp4").difficulty == 2.5
    assert reopened.outcome("v2", "http://ls/data/upload/1/a.mp4") is None  # per model version
    assert reopened.is_known_project(4) and not reopened.is_known_project(5)


def test_stored_failures_expire(tmp_path, monkeypatch):
    store = BackendStore(tmp_path / "s.sqlite")
    store.save_outcome("v1", "k", StoredOutcome(None, "cannot decode"))
    assert store.outcome("v1", "k").error == "cannot decode"
    monkeypatch.setattr(store_module.time, "time", lambda: time.monotonic() + 10**10)
    assert store.outcome("v1", "k") is None


def _job() -> ScoreJob:
    return ScoreJob(MediaRequest("k", "/data/upload/1/a.mp4", 1, None), priority=1)


def _target(task_id: int) -> PushTarget:
    return PushTarget(task_id, 1, CONFIG)


def test_watched_task_is_not_pushed():
    job = _job()
    job.watch(1)
    job.push_to(_target(2))
    late = job.finish(JobOutcome(3.0, None, True))
    assert [t.task_id for t in late] == [2]
    assert job.unwatch(1, _target(1)).difficulty == 3.0  # finished meanwhile: the response carries it


def test_deadline_passed_turns_watch_into_push():
    job = _job()
    job.watch(1)
    assert job.unwatch(1, _target(1)) is None
    assert [t.task_id for t in job.finish(JobOutcome(3.0, None, True))] == [1]
    assert job.finish(JobOutcome(4.0, None, True)) == []  # first outcome wins
    assert job.push_to(_target(3)) is False


def test_events_keep_ids_only_and_are_bounded(tmp_path):
    store = BackendStore(tmp_path / "s.sqlite")
    store.max_events = 1500
    body = {"action": "ANNOTATION_CREATED", "project": {"id": 3, "title": "t"},
            "task": {"id": 9, "data": {"video": "https://user:pw@host/v.mp4?X-Amz-Signature=abc"}},
            "annotation": {"id": 77, "result": [{"value": {"number": 3.7}}]}}
    first = store.record_event("ANNOTATION_CREATED", 3, body)
    (event,) = store.events()
    assert event["payload"] == {"annotation": 77, "task": 9, "project": 3}
    assert "pw" not in json.dumps(event) and "X-Amz" not in json.dumps(event)
    marker = store.record_event("TRAINING_STARTED", 3, {"job_id": "job-1", "trigger": "button"})
    for _ in range(3000):
        store.record_event("ANNOTATION_CREATED", 3, body)
    ids = [e["id"] for e in store.events()]
    assert first not in ids and marker in ids, "old label events pruned, training markers kept"
    assert len(ids) <= store.max_events + 1000 + 1
    assert store.last_event_id(3, "TRAINING_STARTED") == marker
