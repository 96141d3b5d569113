"""No prediction is lost when Label Studio is down and the backend restarts meanwhile.

Real processes on loopback: Label Studio, an outage proxy in front of its API
(tests/ls_proxy.py) and ``mdsvqa serve`` with the tiny model. /predict answers with a
tiny deadline, so every prediction goes through the outbox; the API is down the whole
time the backend scores, the backend is stopped and started again during the outage,
and once the API is back every task has exactly one prediction of the model version.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
import requests

from tests.labelstudio_support import REPO, LabelStudio, start_backend, stop_process, wait_for
from tests.ls_proxy import OutageProxy

pytestmark = pytest.mark.labelstudio

LABEL_CONFIG = (REPO / "label_config.xml").read_text()


def pending_pushes(cache_dir: Path) -> int:
    """Push entries in the outbox file, read as a separate reader would (the file is the state)."""
    with sqlite3.connect(cache_dir / "outbox.sqlite") as db:
        rows = db.execute("SELECT key FROM kv WHERE key LIKE 'mdsvqa.entry:push:%'").fetchall()
    return len(rows)


def test_predictions_survive_an_outage_and_a_restart(label_studio: LabelStudio, tiny_model, tmp_path):
    from tests.media import encode_video, moving_pattern

    base, adapter = tiny_model
    videos = [encode_video(tmp_path / f"v{i}.mp4", moving_pattern(24, 48, 64, seed=i)) for i in range(6)]
    project_id = label_studio.create_project("mdsvqa outage", LABEL_CONFIG)
    task_ids = label_studio.upload(project_id, videos)
    tasks = [t for t in label_studio.tasks(project_id) if t["id"] in task_ids]
    cache = tmp_path / "cache"

    with OutageProxy(label_studio.url) as proxy:
        env = {"LABEL_STUDIO_URL": proxy.url, "LABEL_STUDIO_API_KEY": label_studio.token,
               "MDSVQA_PREDICT_DEADLINE_S": "0.01", "MDSVQA_PRIORITY_ENABLED": "false"}

        def start():
            return start_backend(base=base, adapter=adapter, cache_dir=cache, log=tmp_path / "backend.log",
                                 extra_env=env)

        backend = start()
        try:
            version = backend.health()["model_version"]
            proxy.down.set()
            body = {"tasks": [{"id": t["id"], "data": t["data"]} for t in tasks], "project": f"{project_id}.1",
                    "label_config": LABEL_CONFIG}
            reply = requests.post(backend.url + "/predict", json=body, timeout=60).json()
            # tasks answered in the reply are covered by it (Label Studio stores the reply); the rest are pushed
            deferred = sorted(t["id"] for t, result in zip(tasks, reply["results"]) if not result)
            assert deferred, "the tiny deadline leaves predictions to push"
            wait_for(lambda: backend.health()["queue_length"] == 0, timeout=180, what="every video scored")
            wait_for(lambda: proxy.refused >= len(deferred), timeout=60, what="pushes refused by the outage")
            assert pending_pushes(cache) > 0
            stop_process(backend.process)  # a restart in the middle of the outage
            waiting = pending_pushes(cache)
            assert waiting > 0, "pushes are kept on disk across the restart"
            backend = start()
            refused = proxy.refused
            wait_for(lambda: proxy.refused > refused, timeout=120, what="the restarted backend retrying")
            assert label_studio.predictions(project_id) == [], "nothing got through the outage"
            proxy.down.clear()

            def delivered():
                found = label_studio.predictions(project_id)
                return len(found) >= len(deferred) and found

            found = wait_for(delivered, timeout=180, what="every prediction delivered after the outage")
            by_task = {}
            for prediction in found:
                by_task.setdefault(prediction["task"], []).append(prediction["model_version"])
            assert sorted(by_task) == deferred
            assert all(versions == [version] for versions in by_task.values()), by_task
            wait_for(lambda: pending_pushes(cache) == 0, timeout=60, what="outbox emptied")
        finally:
            stop_process(backend.process)
