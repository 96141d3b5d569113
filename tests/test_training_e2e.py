"""Active fine-tuning from Label Studio, end to end: real Label Studio 1.23.2, real ``mdsvqa serve``, real jobs.

What a user does and sees: annotate MOS, press "Start Training" (``POST /api/ml/{id}/train``),
get an answer at once, a second press refused while the job runs, the job training f then
g on the tiny model (one step each), the project and its refreshed predictions moving to the
new ``model_version``; a job killed with SIGKILL or dying while it saves leaves the active
version serving and the next run works; ``mdsvqa activate`` rolls back without a restart.

The tests of this module run in order and share one backend, one project and one model dir.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.labelstudio_support import REPO, start_backend, stop_process, wait_for
from tests.media import SHARED_VIDEO_NAMES

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

LABEL_CONFIG = (REPO / "label_config.xml").read_text()
AUTH = ("label-studio", "e2e-training-password")
SMALL_VIDEO = {"MDSVQA_VIDEO_MAX_FRAMES": "8", "MDSVQA_VIDEO_MAX_PIXELS": str(16 * 28 * 28),
               "MDSVQA_VIDEO_MIN_PIXELS": str(4 * 28 * 28)}
TRAINING = {"max_steps": 1, "max_frames": 4, "frame_side": 56, "max_new_tokens": 8, "group_size": 2,
            "videos_per_step": 3, "learning_rate": 1e-3, "min_train_labels": 2, "min_held_out_labels": 3,
            "held_out_fraction": 0.5, "promote": "always",
            # the random tiny f never writes a parseable answer: short budget, constrained answers instead
            "f_max_new_tokens": 8, "f_unparsed": "constrained"}
TRAIN_ENV = {f"MDSVQA_TRAIN_{k.upper()}": str(v) for k, v in TRAINING.items()} | SMALL_VIDEO | {
    "MDSVQA_VERSION_POLL_S": "0.5"}
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_TIMEOUT = 300
STATE: dict = {}  # what earlier tests of this module leave for later ones


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("training-e2e")


@pytest.fixture(scope="module")
def model_dir(home) -> Path:
    return home / "models"  # start_backend: MDSVQA_MODEL_DIR = <cache_dir parent>/models


@pytest.fixture(scope="module")
def backend(tiny_model, home, model_dir):
    base, adapter = tiny_model
    served = start_backend(base=base, adapter=adapter, cache_dir=home / "cache", log=home / "backend.log",
                           auth=AUTH, extra_env=TRAIN_ENV)
    yield served
    stop_process(served.process)
    _kill_leftover_jobs(model_dir)


def _kill_leftover_jobs(model_dir: Path) -> None:
    """Job processes have their own session: stop any a failed test left running (by pid, SIGKILL)."""
    for status_file in (model_dir / "jobs").glob("job-*/status.json"):
        status = json.loads(status_file.read_text())
        if status.get("state") in ("queued", "running") and status.get("pid"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(status["pid"], signal.SIGKILL)


@pytest.fixture(scope="module")
def project(label_studio, backend, shared_videos, home):
    """Six uploaded videos (the four shared ones and two renamed copies), backend connected with basic auth."""
    videos = [shared_videos / name for name in SHARED_VIDEO_NAMES]
    for extra, source in (("copy_a.mp4", "bikes.mp4"), ("copy_b.mp4", "carphone_distorted.mp4")):
        shutil.copy(shared_videos / source, home / extra)
        videos.append(home / extra)
    project_id = label_studio.create_project("mdsvqa training e2e", LABEL_CONFIG)
    tasks = label_studio.upload(project_id, videos)
    ml = label_studio.api("POST", "/api/ml", json={
        "url": backend.url, "project": project_id, "title": "MDS-VQA",
        "auth_method": "BASIC_AUTH", "basic_auth_user": AUTH[0], "basic_auth_pass": AUTH[1]})
    stock = backend.health()["model_version"]
    wait_for(lambda: label_studio.project(project_id)["model_version"] == stock, timeout=60,
             what="project model_version == stock version", log=backend.log)
    return {"id": project_id, "ml": ml["id"], "tasks": tasks, "stock": stock}


# -- helpers --------------------------------------------------------------------------------------

def annotate(label_studio, task_id: int, mos: float, *, cancelled: bool = False) -> None:
    label_studio.api("POST", f"/api/tasks/{task_id}/annotations", json={
        "result": [{"from_name": "mos", "to_name": "video", "type": "number", "value": {"number": mos}}],
        "was_cancelled": cancelled})


def press(label_studio, project) -> dt.datetime:
    """The "Start Training" button; returns when Label Studio answered (UTC, the clock job statuses use)."""
    label_studio.api("POST", f"/api/ml/{project['ml']}/train")
    return dt.datetime.now(dt.UTC)


def answered_before_the_job_ended(answered: dt.datetime, job: dict) -> bool:
    """Ordering, not speed: Label Studio's train call (which waits for our /webhook) came back before
    the job it started finished, so the webhook did not wait on the job."""
    return answered < dt.datetime.fromisoformat(job["finished"])


def train_status(backend, log: int = 0) -> dict:
    response = requests.get(backend.url + "/train/status", params={"log": log}, auth=AUTH, timeout=5)
    response.raise_for_status()
    return response.json()


def job_of(backend) -> dict:
    return train_status(backend)["job"] or {}


def wait_job_done(backend, job_id: str) -> dict:
    def done():
        job = job_of(backend)
        return job if job.get("job_id") == job_id and job.get("state") in TERMINAL else None

    return wait_for(done, timeout=JOB_TIMEOUT, what=f"training job {job_id} finished", log=backend.log)


def wait_new_job(backend, previous: str | None) -> dict:
    return wait_for(lambda: (j := job_of(backend)).get("job_id") not in (None, previous) and j, timeout=30,
                    what="a new training job", log=backend.log)


def latest_job_id(backend) -> str | None:
    return job_of(backend).get("job_id")


def predictions_of(label_studio, project_id: int, version: str) -> set[int]:
    return {p["task"] for p in label_studio.predictions(project_id) if p["model_version"] == version}


def mdsvqa(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MDSVQA_", "LABEL_STUDIO_"))}
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", "ml_backend.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def webhook_sample(backend, handling: str) -> float:
    return backend.metric(f'mdsvqa_webhook_events_total{{action="START_TRAINING",handling="{handling}"}}')


# -- tests ----------------------------------------------------------------------------------------

def test_too_few_labels_are_refused_visibly_in_the_job_status(label_studio, backend, project):
    first, second = project["tasks"][:2]
    annotate(label_studio, first, 4.2)
    annotate(label_studio, second, 2.0)
    answered = press(label_studio, project)
    job = wait_new_job(backend, None)
    done = wait_job_done(backend, job["job_id"])
    assert done["state"] == "failed" and not done["stale"]
    assert "too few labels to train" in done["error"] and "2 labelled task(s)" in done["error"]
    assert "at least 5" in done["error"], done["error"]  # 2 to train, 3 held out
    assert answered_before_the_job_ended(answered, done), (answered, done["finished"])
    assert not (Path(done["log_path"]).parent / "media").exists()


def test_start_training_trains_f_then_g_and_the_project_follows(label_studio, backend, project, model_dir):
    tasks = project["tasks"]
    annotate(label_studio, tasks[0], 3.0)  # second annotator: (4.2 + 3.0) / 2
    annotate(label_studio, tasks[1], 5.0, cancelled=True)  # a skipped annotation: ignored
    for task, mos in zip(tasks[2:], (1.5, 4.8, 2.7, 3.9)):
        annotate(label_studio, task, mos)
    previous = latest_job_id(backend)
    refused_before = webhook_sample(backend, "refused")

    answered = press(label_studio, project)
    job = wait_new_job(backend, previous)
    # A second press while the job runs: refused (409, with the reason), no second job.
    press(label_studio, project)
    direct = requests.post(backend.url + "/webhook", auth=AUTH, timeout=5,
                           json={"action": "START_TRAINING", "project": {"id": project["id"]}})
    assert direct.status_code == 409 and direct.json()["status"] == "refused"
    assert job["job_id"] in direct.json()["error"] and "already running" in direct.json()["error"]
    assert webhook_sample(backend, "refused") == refused_before + 2
    assert "training not started" in backend.log.read_text()
    # The refusals above came while the first job still ran (409 "already running"), and the first
    # press's answer came before that job ended (below): no press waited on the job.

    done = wait_job_done(backend, job["job_id"])
    assert answered_before_the_job_ended(answered, done), (answered, done["finished"])
    assert done["state"] == "succeeded", "\n".join(train_status(backend, log=60).get("log", []))
    result = done["result"]
    assert [run["kind"] for run in result["runs"]] == ["quality", "difficulty"]
    assert result["labels"]["labelled_tasks"] == 6 and result["labels"]["rows"] == 6
    assert result["labels"]["ignored_annotations"] == 1 and result["labels"]["scale"] == [1.0, 5.0]
    for run in result["runs"]:
        assert run["activated"] and run["steps"] == 1
        assert run["metrics_before"]["total"] == 3 and run["metrics_after"]["total"] == 3
        assert "held-out SRCC" in run["summary"] and "PLCC" in run["summary"]
    quality_id, difficulty_id = result["version_ids"]
    assert result["active"] == {"quality": quality_id, "difficulty": difficulty_id}
    log = "\n".join(train_status(backend, log=400)["log"])
    assert "promoted (active)" in log and label_studio.token not in log

    # The serving process switches to the new g without a restart; Label Studio follows.
    new_version = wait_for(lambda: difficulty_id in (v := backend.health()["model_version"]) and v, timeout=60,
                           what="backend serves the new version", log=backend.log)
    assert new_version != project["stock"]
    wait_for(lambda: label_studio.project(project["id"])["model_version"] == new_version, timeout=90,
             what="project model_version follows", log=backend.log)
    wait_for(lambda: predictions_of(label_studio, project["id"], new_version) == set(tasks), timeout=180,
             what="predictions refreshed for the new version", log=backend.log)

    listing = requests.get(backend.url + "/versions", auth=AUTH, timeout=10).json()
    assert listing["versions"][0] == new_version and listing["active"]["difficulty"] == difficulty_id
    entries = {v["id"]: v for v in listing["store"]}
    assert entries[difficulty_id]["model_version"] == new_version and entries[difficulty_id]["f_model"] == quality_id
    assert entries[quality_id]["source"]["label_studio_project"] == project["id"]

    cli = mdsvqa("versions", "--model-dir", str(model_dir), "--json")
    assert cli.returncode == 0, cli.stderr
    listed = {v["id"]: v for v in json.loads(cli.stdout)["versions"]}
    assert set(listed) == {quality_id, difficulty_id} and all(v["active"] for v in listed.values())
    assert listed[quality_id]["metrics_after"]["total"] == 3 and "srcc" in listed[quality_id]["improvement"]
    text = mdsvqa("versions", "--model-dir", str(model_dir)).stdout
    assert f"* {difficulty_id}" in text and "held-out SRCC" in text
    jobs = mdsvqa("jobs", "--model-dir", str(model_dir), "--log", "5")
    assert jobs.returncode == 0 and job["job_id"] in jobs.stdout and "succeeded" in jobs.stdout
    STATE.update(first_difficulty=difficulty_id, first_version=new_version)


def test_a_crash_while_saving_leaves_no_half_written_version(label_studio, backend, project, model_dir, tiny_model,
                                                              home, shared_videos):
    """Through the backend path (webhook -> job -> real labels and training), dying in the middle of the save."""
    from ml_backend.server.app import create_app
    from ml_backend.server.service import BackendService
    from ml_backend.server.training import BackendTraining
    from ml_backend.settings import Settings
    from ml_backend.training.project_job import TARGET
    from ml_backend.training.versions import VersionStore

    base, adapter = tiny_model
    source = home / "source.jsonl"  # a source-domain set (0-100 MOS scale) merged into training
    source.write_text("".join(json.dumps({"video": str(shared_videos / name), "mos": mos}) + "\n"
                              for name, mos in zip(SHARED_VIDEO_NAMES, (20, 85, 40, 60))))
    settings = Settings(base=str(base), adapter=str(adapter), offline=True, device="cpu",
                        cache_dir=home / "cache-in-process", model_dir=model_dir, public_url="http://unlisted.invalid",
                        video={"max_frames": 8, "max_pixels": 16 * 28 * 28, "min_pixels": 4 * 28 * 28},
                        training=TRAINING | {"objectives": ["quality"], "source_labels": str(source)})
    service = BackendService(settings)
    service.training = BackendTraining(settings, service.store, connection_for=service.connection_for,
                                       config_for=service.config_for, on_finished=service.nudge,
                                       target="tests.training_job_targets:project_job_crashing_while_saving")
    client = create_app(service=service).test_client()
    store = VersionStore(model_dir)
    try:
        wait_for(lambda: client.get("/health").json["model"] == "ready", timeout=120, what="in-process backend")
        assert client.post("/setup", json={"project": f"{project['id']}.1", "schema": LABEL_CONFIG,
                                           "hostname": label_studio.url,
                                           "access_token": label_studio.token}).status_code == 200
        serving = backend.health()["model_version"]
        pointers = {kind: store.pointer(kind) for kind in ("quality", "difficulty")}
        versions = {v.id for v in store.list()}

        reply = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project["id"]}})
        assert reply.status_code == 200, reply.json
        done = wait_for(lambda: (j := service.train_status()["job"])["state"] in TERMINAL and j, timeout=JOB_TIMEOUT,
                        what="crashing job ended")
        assert done["state"] == "failed" and done["stale"] and "crashing while saving" in done["message"]
        assert {v.id for v in store.list()} == versions, "the half-written version is not a version"
        assert {kind: store.pointer(kind) for kind in pointers} == pointers
        (leftover,) = store.leftovers()
        assert leftover.path.name.startswith(".staging-quality-") and "died" in leftover.reason
        assert backend.health()["model_version"] == serving
        assert client.get("/health").json["model_version"] == serving  # same MODEL_DIR, same active version
        shown = mdsvqa("versions", "--model-dir", str(model_dir), "--leftovers", "--json")
        assert json.loads(shown.stdout)["leftovers"][0]["path"] == str(leftover.path)

        service.training.target = TARGET  # the next run, the real job: cleans up and publishes
        reply = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": project["id"]}})
        assert reply.status_code == 200, reply.json
        done = wait_for(lambda: (j := service.train_status()["job"])["job_id"] == reply.json["job_id"]
                        and j["state"] in TERMINAL and j, timeout=JOB_TIMEOUT, what="next run")
        assert done["state"] == "succeeded", done
        assert store.leftovers() == []
        assert store.pointer("quality").version == done["result"]["version_id"]
        published = store.get(done["result"]["version_id"]).metadata
        assert published["settings"]["labels"] == {"train": 3, "held_out": 3, "source": 4, "skipped": 0}
        assert store.pointer("difficulty") == pointers["difficulty"]
        assert backend.health()["model_version"] == serving
    finally:
        service.stop()
        service.store.close()


def test_kill_9_of_the_job_keeps_the_version_serving_and_the_next_run_works(label_studio, backend, project,
                                                                            model_dir):
    from ml_backend.training.versions import VersionStore

    store = VersionStore(model_dir)
    serving = backend.health()["model_version"]
    active = store.pointer("difficulty").version
    previous = latest_job_id(backend)
    press(label_studio, project)
    job = wait_new_job(backend, previous)
    training = wait_for(lambda: (j := job_of(backend)).get("state") == "running" and j.get("pid")
                        and j["message"].startswith("quality:") and j, timeout=JOB_TIMEOUT,
                        what="job past label collection", log=backend.log)
    os.kill(training["pid"], signal.SIGKILL)

    dead = wait_job_done(backend, job["job_id"])
    assert dead["state"] == "failed" and dead["stale"] and "died" in dead["error"]
    assert backend.health()["model_version"] == serving
    assert store.pointer("difficulty").version == active
    assert label_studio.project(project["id"])["model_version"] == serving

    press(label_studio, project)
    again = wait_new_job(backend, job["job_id"])
    done = wait_job_done(backend, again["job_id"])
    assert done["state"] == "succeeded", "\n".join(train_status(backend, log=60).get("log", []))
    newest = done["result"]["active"]["difficulty"]
    assert newest != active
    version = wait_for(lambda: newest in (v := backend.health()["model_version"]) and v, timeout=60,
                       what="backend serves the newest version", log=backend.log)
    wait_for(lambda: label_studio.project(project["id"])["model_version"] == version, timeout=90,
             what="project follows", log=backend.log)


def test_rollback_with_mdsvqa_activate_is_picked_up_without_restart(label_studio, backend, project, model_dir):
    first, first_version = STATE["first_difficulty"], STATE["first_version"]
    assert backend.health()["model_version"] != first_version
    rolled = mdsvqa("activate", first, "--model-dir", str(model_dir))
    assert rolled.returncode == 0 and f"active difficulty: {first}" in rolled.stdout, rolled.stderr
    wait_for(lambda: backend.health()["model_version"] == first_version, timeout=60, what="backend rolled back",
             log=backend.log)
    wait_for(lambda: label_studio.project(project["id"])["model_version"] == first_version, timeout=90,
             what="project rolled back", log=backend.log)
    assert backend.health()["active_version"] == first
