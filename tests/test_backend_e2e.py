"""End to end against a real Label Studio 1.23.2 and a real ``mdsvqa serve`` (waitress) with the tiny model.

What a user would see: a difficulty on every good video after "Retrieve predictions",
the Prediction score column filled (project model_version == prediction model_version)
and sortable, broken media skipped while the backend stays healthy, a task predicted
when opened, Start Training acknowledged at once, the cache surviving a restart.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from ml_backend.prioritize.order import new_prediction_priority
from tests.backend_fakes import FakeServer
from tests.labelstudio_support import REPO, LabelStudio, read_backend_events, start_backend, stop_process, wait_for
from tests.media import SHARED_VIDEO_NAMES

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

LABEL_CONFIG = (REPO / "label_config.xml").read_text()
AUTH = ("label-studio", "e2e-basic-auth-password")
# These tests check the /predict scores themselves; queue ordering (which rewrites them) has test_prioritize_e2e.
NO_ORDERING = {"MDSVQA_PRIORITY_ENABLED": "false"}


# -- fixtures (label_studio: one server per session, tests/conftest.py) ------------------------------

@pytest.fixture(scope="module")
def media_server():
    with FakeServer() as server:
        yield server


@pytest.fixture(scope="module")
def backend_home(tmp_path_factory):
    return tmp_path_factory.mktemp("backend")


class BackendSlot:
    """The running backend; restart() replaces it on the same port with the same cache."""

    def __init__(self, tiny_model, home: Path) -> None:
        self.base, self.adapter = tiny_model
        self.cache_dir = home / "cache"
        self.log = home / "backend.log"
        self.current = start_backend(base=self.base, adapter=self.adapter, cache_dir=self.cache_dir, log=self.log,
                                     auth=AUTH, extra_env=NO_ORDERING)

    def restart(self):
        port = self.current.port
        stop_process(self.current.process)
        self.current = start_backend(base=self.base, adapter=self.adapter, cache_dir=self.cache_dir,
                                     log=self.log, port=port, auth=AUTH, extra_env=NO_ORDERING)
        return self.current

    def stop(self) -> None:
        stop_process(self.current.process)


@pytest.fixture(scope="module")
def backend(tiny_model, backend_home):
    slot = BackendSlot(tiny_model, backend_home)
    yield slot
    slot.stop()


@pytest.fixture(scope="module")
def corrupt_videos(tmp_path_factory, shared_videos) -> list[Path]:
    folder = tmp_path_factory.mktemp("corrupt")
    text = folder / "notes_renamed.mp4"
    text.write_text("this is a text file, not a video\n")
    truncated = folder / "truncated.mp4"
    data = (shared_videos / "bikes.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    return [text, truncated]


@pytest.fixture(scope="module")
def project(label_studio: LabelStudio, backend, shared_videos, corrupt_videos, media_server):
    """A project from label_config.xml: the 4 shared videos, 2 corrupt uploads, 3 bad URLs; backend connected."""
    project_id = label_studio.create_project("mdsvqa e2e", LABEL_CONFIG)
    good = label_studio.upload(project_id, [shared_videos / name for name in SHARED_VIDEO_NAMES])
    corrupt = label_studio.upload(project_id, corrupt_videos)
    bad_urls = label_studio.import_tasks(project_id, [
        {"video": f"{media_server.url}/status/401"},
        {"video": f"{media_server.url}/status/404"},
        {"video": f"{media_server.url}/hang"},
    ])
    assert len(bad_urls) == 3
    ml = label_studio.api("POST", "/api/ml", json={
        "url": backend.current.url, "project": project_id, "title": "MDS-VQA",
        "auth_method": "BASIC_AUTH", "basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1],
    })
    assert ml["state"] == "CO", ml
    return {"id": project_id, "ml": ml["id"], "good": dict(zip(good, SHARED_VIDEO_NAMES)), "corrupt": corrupt,
            "bad_urls": bad_urls}


@pytest.fixture(scope="module")
def version(backend, project) -> str:
    return backend.current.health()["model_version"]


@pytest.fixture(scope="module")
def retrieved(label_studio, project, version):
    """Data Manager > Retrieve predictions on every task (one synchronous /predict batch)."""
    return {"reply": label_studio.dm_action(project["id"], "retrieve_tasks_predictions")}


def current_predictions(label_studio, project_id, version) -> dict[int, list[dict]]:
    found: dict[int, list[dict]] = {}
    for prediction in label_studio.predictions(project_id):
        if prediction["model_version"] == version:
            found.setdefault(prediction["task"], []).append(prediction)
    return found


# -- tests ----------------------------------------------------------------------------------------

def test_connecting_keeps_model_version_equal(label_studio, project, version):
    """The model_version trap: the project must end up on our version, not on the title we typed."""
    assert version.startswith("TINY-RANDOM-")
    wait_for(lambda: label_studio.project(project["id"])["model_version"] == version, timeout=60,
             what="project model_version == backend version")
    assert label_studio.api("GET", f"/api/ml/{project['ml']}")["title"] == version


def test_retrieve_predictions_gives_every_good_video_a_difficulty(label_studio, backend, project, version,
                                                                    retrieved):
    # every /predict answered within Label Studio's 100 s, by the backend's own histogram
    slot = backend.current
    assert slot.metric('mdsvqa_http_request_seconds_bucket{le="100.0",route="/predict"}') == \
        slot.metric('mdsvqa_http_request_seconds_count{route="/predict"}') > 0
    predictions = current_predictions(label_studio, project["id"], version)
    assert set(predictions) == set(project["good"]), "exactly the good videos get predictions"
    for task_id, found in predictions.items():
        assert len(found) == 1, f"task {task_id}: one prediction, no placeholders: {found}"
        prediction = found[0]
        (result,) = prediction["result"]
        assert (result["from_name"], result["to_name"], result["type"]) == ("difficulty", "video", "number")
        difficulty = result["value"]["number"]
        assert 1.0 <= difficulty <= 5.0
        assert prediction["score"] == new_prediction_priority(difficulty, task_id), "the score the queue gives it"
    health = backend.current.health()
    assert health["status"] == "UP" and health["model"] == "ready"


def test_broken_media_is_skipped_and_backend_stays_healthy(label_studio, backend, project, version, retrieved):
    predictions = current_predictions(label_studio, project["id"], version)
    for task_id in project["corrupt"] + project["bad_urls"]:
        assert task_id not in predictions
    assert backend.current.metric('mdsvqa_videos_scored_total{result="error"}') == len(project["corrupt"])
    assert backend.current.metric('mdsvqa_media_failures_total{error="MediaAccessDeniedError"}') == 1
    assert backend.current.metric('mdsvqa_media_failures_total{error="MediaNotFoundError"}') == 1
    assert backend.current.metric('mdsvqa_media_failures_total{error="MediaTimeoutError"}') == 1
    assert backend.current.health()["status"] == "UP"


def test_prediction_score_column_and_sorting(label_studio, project, version, retrieved):
    tasks = {t["id"]: t for t in label_studio.tasks(project["id"])}
    predictions = current_predictions(label_studio, project["id"], version)
    for task_id in project["good"]:
        assert tasks[task_id]["predictions_score"] == pytest.approx(predictions[task_id][0]["score"], abs=1e-6)
    for ordering, descending in (("-tasks:predictions_score", True), ("tasks:predictions_score", False)):
        view = label_studio.api("POST", "/api/dm/views", json={
            "project": project["id"], "data": {"title": ordering, "ordering": [ordering]}})
        ordered = [t for t in label_studio.tasks(project["id"], view=view["id"]) if t["id"] in project["good"]]
        scores = [t["predictions_score"] for t in ordered]
        assert scores == sorted(scores, reverse=descending), (ordering, scores)


def test_opening_a_task_predicts_it(label_studio, project, version, shared_videos, tmp_path):
    """The labeling UI loads GET /api/tasks/<id>/; a task without predictions is predicted right there."""
    copy = tmp_path / "opened_later.mp4"
    shutil.copy(shared_videos / "carphone_distorted.mp4", copy)
    (task_id,) = label_studio.upload(project["id"], [copy])
    assert task_id not in current_predictions(label_studio, project["id"], version)
    task = label_studio.api("GET", f"/api/tasks/{task_id}/", params={"project": project["id"]})
    mine = [p for p in task["predictions"] if p["model_version"] == version]
    assert len(mine) == 1 and 1 <= mine[0]["result"][0]["value"]["number"] <= 5


def test_webhook_is_protected_and_annotation_events_arrive(label_studio, backend, project, version, retrieved):
    """Label Studio's automatic webhook gets our secret header; an annotation event then reaches us."""
    def protected_hook():
        hooks = label_studio.api("GET", "/api/webhooks", params={"project": project["id"]})
        return [h for h in hooks if h["url"].rstrip("/") == backend.current.url + "/webhook"
                and "X-Mdsvqa-Webhook-Secret" in (h["headers"] or {})]

    wait_for(protected_hook, timeout=60, what="webhook secret header installed")
    unauthenticated = requests.post(backend.current.url + "/webhook", timeout=5,
                                    json={"action": "ANNOTATION_CREATED", "project": {"id": project["id"]}})
    assert unauthenticated.status_code == 401
    task_id = next(iter(project["good"]))
    label_studio.api("POST", f"/api/tasks/{task_id}/annotations", json={"result": [
        {"from_name": "mos", "to_name": "video", "type": "number", "value": {"number": 3.7}}]})
    events = wait_for(lambda: read_backend_events(backend.cache_dir, "ANNOTATION_CREATED"), timeout=30,
                      what="ANNOTATION_CREATED recorded by the backend")
    assert events[0]["project_id"] == project["id"]
    annotation = label_studio.api("GET", f"/api/tasks/{task_id}/annotations")[0]
    # ids only: the label itself and the task's media URL are not copied into the backend's state
    assert events[0]["payload"] == {"annotation": annotation["id"], "task": task_id, "project": project["id"]}


def test_start_training_is_acknowledged_within_a_second(label_studio, backend, project):
    before = backend.current.metric('mdsvqa_http_request_seconds_count{route="/webhook"}')
    label_studio.api("POST", f"/api/ml/{project['ml']}/train")
    events = wait_for(lambda: read_backend_events(backend.cache_dir, "START_TRAINING"), timeout=10,
                      what="START_TRAINING recorded")
    assert events[-1]["project_id"] == project["id"]
    slot = backend.current
    after = slot.metric('mdsvqa_http_request_seconds_count{route="/webhook"}')
    within = slot.metric('mdsvqa_http_request_seconds_bucket{le="1.0",route="/webhook"}')
    assert after > before and within == after, "every webhook answered within 1 s (server-side histogram)"


def test_score_project_command(label_studio, tiny_model, shared_videos, tmp_path):
    base, adapter = tiny_model
    project_id = label_studio.create_project("mdsvqa score-project", LABEL_CONFIG)
    tasks = label_studio.upload(project_id, [shared_videos / "bikes.mp4", shared_videos / "carphone_pristine.mp4"])
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "MDSVQA_CACHE_DIR": str(tmp_path / "cache"), "MDSVQA_OFFLINE": "true", "HF_HUB_OFFLINE": "1"}
    command = [sys.executable, "-m", "ml_backend.cli", "score-project", "--project", str(project_id),
               "--base", str(base), "--adapter", str(adapter), "--no-progress"]
    run = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "predictions posted:         2" in run.stdout
    assert label_studio.token not in run.stdout + run.stderr
    version = label_studio.project(project_id)["model_version"]
    assert version.startswith("TINY-RANDOM-")
    assert set(current_predictions(label_studio, project_id, version)) == set(tasks)
    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "tasks lacking a prediction: 0" in again.stdout


def test_restarted_backend_keeps_its_cache(label_studio, backend, project, version, retrieved):
    before = {t: p[0]["result"][0]["value"]["number"]
              for t, p in current_predictions(label_studio, project["id"], version).items()}
    fresh = backend.restart()
    assert fresh.health()["model_version"] == version
    label_studio.dm_action(project["id"], "delete_tasks_predictions")
    assert current_predictions(label_studio, project["id"], version) == {}
    label_studio.dm_action(project["id"], "retrieve_tasks_predictions")
    after = {t: p[0]["result"][0]["value"]["number"]
             for t, p in current_predictions(label_studio, project["id"], version).items()}
    assert after == before
    assert fresh.metric('mdsvqa_videos_scored_total{result="ok"}') == 0, "nothing went through the model again"
    assert fresh.metric('mdsvqa_task_predictions_total{outcome="cached"}') >= len(project["good"])


def test_background_pass_and_late_predictions(label_studio, tiny_model, tmp_path):
    """A backend with MDSVQA_SCORE_PROJECT_ON_SETUP predicts a new project by itself; with a tiny
    /predict deadline, a retrieval answers at once and the predictions arrive later, once each."""
    from tests.media import encode_video, moving_pattern

    base, adapter = tiny_model
    fresh = [encode_video(tmp_path / f"fresh{i}.mp4", moving_pattern(50, 240, 320, seed=i)) for i in range(4)]
    backend = start_backend(base=base, adapter=adapter, cache_dir=tmp_path / "cache", log=tmp_path / "backend.log",
                            extra_env={"MDSVQA_SCORE_PROJECT_ON_SETUP": "true", "MDSVQA_PREDICT_DEADLINE_S": "0.1",
                                       **NO_ORDERING})
    try:
        version = backend.health()["model_version"]
        project_id = label_studio.create_project("mdsvqa background", LABEL_CONFIG)
        first = label_studio.upload(project_id, fresh[:2])
        label_studio.api("POST", "/api/ml", json={"url": backend.url, "project": project_id, "title": "bg"})
        wait_for(lambda: set(current_predictions(label_studio, project_id, version)) == set(first), timeout=120,
                 what="background pass predicted the project")

        later = label_studio.upload(project_id, fresh[2:])
        deferred = backend.metric('mdsvqa_task_predictions_total{outcome="deferred"}')
        label_studio.dm_action(project_id, "retrieve_tasks_predictions")
        # the retrieval came back before its videos were scored: they were deferred, to be pushed later
        assert backend.metric('mdsvqa_task_predictions_total{outcome="deferred"}') > deferred
        wait_for(lambda: set(current_predictions(label_studio, project_id, version)) == set(first + later),
                 timeout=120, what="late predictions pushed")
        label_studio.dm_action(project_id, "retrieve_tasks_predictions")
        wait_for(lambda: backend.metric("mdsvqa_queue_length") == 0, timeout=30, what="queue drained")
        predictions = current_predictions(label_studio, project_id, version)
        assert all(len(found) == 1 for found in predictions.values()), predictions
        assert label_studio.project(project_id)["model_version"] == version
    finally:
        stop_process(backend.process)
