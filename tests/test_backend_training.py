"""Start Training through the backend's protocol: a job process at once, one at a time, status and log.

The job target is a probe (tests/training_job_targets.py) that records what it received and
waits; the real target is exercised end to end in tests/test_training_e2e.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from pathlib import Path

import pytest

from ml_backend.server.app import create_app
from ml_backend.server.service import BackendService
from ml_backend.server.training import BackendTraining
from ml_backend.settings import Settings
from tests.backend_fakes import FakeScorer
from tests.conditions import wait_for

REPO = Path(__file__).resolve().parents[1]
LABEL_CONFIG = (REPO / "label_config.xml").read_text()
PROBE = "tests.training_job_targets:backend_probe"
LS_TOKEN = "ls-token-0123456789abcdef"
AUTH = ("label-studio", "basic-pass-word")
WEBHOOK_SECRET = "server-only-secret"
HOOK = {"X-Mdsvqa-Webhook-Secret": WEBHOOK_SECRET}  # what Label Studio's automatic webhook carries


def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setenv("MDSVQA_WEBHOOK_SECRET", WEBHOOK_SECRET)  # the server's; must not reach the job
    made = []

    def make(*, auth: bool = False, **training):
        values = {"cache_dir": tmp_path / "cache", "model_dir": tmp_path / "models", "training": training}
        if auth:
            values.update(basic_auth_user=AUTH[0], basic_auth_password=AUTH[1])
        service = BackendService(Settings(**values), scorer_factory=FakeScorer)
        service.training = BackendTraining(service.settings, service.store, connection_for=service.connection_for,
                                           config_for=service.config_for, target=PROBE)
        made.append(service)
        client = create_app(service=service).test_client()
        wait_for(lambda: client.get("/health").json["model"] == "ready", what="ready")
        return client, service

    yield make
    for service in made:
        for child in service.training.jobs._children:
            if child.poll() is None:
                child.kill()
                child.wait()
        service.stop()
        service.store.close()


def setup(client, project: int = 5, schema: str = LABEL_CONFIG, headers=None):
    response = client.post("/setup", headers=headers or {}, json={
        "project": f"{project}.1700000000", "schema": schema, "hostname": "http://127.0.0.1:8080",
        "access_token": LS_TOKEN})
    assert response.status_code == 200, response.json


def press(client, project: int = 5, headers=None):
    return client.post("/webhook", headers=headers or HOOK, json={"action": "START_TRAINING",
                                                                 "project": {"id": project, "title": "p"}})


def job_state(client) -> str | None:
    job = client.get("/train/status").json["job"]
    return job["state"] if job else None


def test_start_training_starts_a_job_at_once_and_refuses_a_second(backend, tmp_path, caplog):
    client, service = backend()
    setup(client)
    first = press(client)
    assert first.status_code == 200, first.json
    assert first.json["status"] == "started" and first.json["job"] == first.json["job_id"]
    # The answer came while the job provably had not finished: the probe waits for MODEL_DIR/release,
    # which nobody has written yet (a route waiting on the job would answer only after it failed, 120 s on).
    assert not (tmp_path / "models" / "release").exists()
    assert job_state(client) in ("queued", "running")
    job_id = first.json["job_id"]
    running = wait_for(lambda: (s := client.get("/train/status").json)["job"]["message"] == "probing" and s,
                         timeout=60, what="job running")
    assert running["running"] and running["job"]["state"] == "running" and running["job"]["job_id"] == job_id

    with caplog.at_level(logging.WARNING, logger="ml_backend.server.training"):
        second = press(client)
    assert second.status_code == 409
    assert job_state(client) == "running", "refused while the first job still runs, without waiting for it"
    assert second.json["status"] == "refused" and second.json["job_id"] == job_id
    assert "already running" in second.json["error"] and "/train/status" in second.json["error"]
    assert any("training not started" in r.getMessage() and job_id in r.getMessage() for r in caplog.records)
    assert [e["project_id"] for e in service.store.events("START_TRAINING")] == [5, 5]  # both presses recorded

    (tmp_path / "models" / "release").touch()
    done = wait_for(lambda: (s := client.get("/train/status?log=20").json)["job"]["state"] == "succeeded" and s,
                      timeout=60, what="job done")
    assert not done["running"] and done["job"]["result"]["runs"] == [{"summary": "probe run"}]
    assert "probe done" in done["log"]
    assert [j["job_id"] for j in client.get("/train/jobs").json["jobs"]] == [job_id]
    third = press(client)
    assert third.status_code == 200 and third.json["job_id"] != job_id, "a finished job frees the slot"


def test_the_token_reaches_the_job_only_through_its_environment(backend, tmp_path):
    client, _service = backend(objectives=["difficulty"])
    setup(client)
    reply = press(client)
    job_id = reply.json["job_id"]
    job_dir = tmp_path / "models" / "jobs" / job_id
    probe_file = tmp_path / "models" / f"probe-{job_id}.json"
    wait_for(probe_file.exists, timeout=60, what="probe written")
    probe = json.loads(probe_file.read_text())
    assert probe["token_sha256"] == hashlib.sha256(LS_TOKEN.encode()).hexdigest()
    assert probe["url"] == "http://127.0.0.1:8080" and probe["secret_env"] == []
    assert probe["objectives"] == ["difficulty"] and probe["project_id"] == 5 and probe["trigger"] == "button"
    assert "basic_auth_password" not in probe["settings_keys"] and "label_studio_api_key" not in probe["settings_keys"]
    pid = client.get("/train/status").json["job"]["pid"]
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    assert "ml_backend.training.run" in cmdline and LS_TOKEN not in cmdline
    (tmp_path / "models" / "release").touch()
    wait_for(lambda: client.get("/train/status").json["job"]["state"] == "succeeded", timeout=60, what="done")
    for path in job_dir.iterdir():
        assert LS_TOKEN not in path.read_text(errors="replace"), path.name
    assert LS_TOKEN not in json.dumps(client.get("/train/status?log=100").json)


def test_refusals_without_connection_or_mos_control(backend):
    client, _ = backend()
    client.post("/setup", json={"project": "5.1", "schema": LABEL_CONFIG})  # no hostname/token from Label Studio
    response = press(client)
    assert response.status_code == 422
    assert response.json["status"] == "refused" and "LABEL_STUDIO_API_KEY" in response.json["error"]
    no_mos = '<View><Video name="v" value="$video"/><Number name="difficulty" toName="v" min="1" max="5"/></View>'
    setup(client, project=6, schema=no_mos)
    response = press(client, project=6)
    assert response.status_code == 422 and 'mdsvqa-role="mos"' in response.json["error"]
    assert client.get("/train/status").json == {"running": False, "job": None}
    assert client.post("/train", json={"project": "6.1"}).status_code == 422  # the older route, same answer
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 6}}).status_code == 401


def test_auto_train_after_n_annotation_events(backend, tmp_path):
    client, _service = backend(auto_after_labels=3)
    setup(client)

    def annotate():
        return client.post("/webhook", headers=HOOK, json={"action": "ANNOTATION_CREATED", "project": {"id": 5},
                                             "annotation": {"id": 1, "result": []}}).json

    assert "training" not in annotate() and "training" not in annotate()
    third = annotate()
    assert third["status"] == "recorded" and third["training"]["status"] == "started"
    probe = tmp_path / "models" / f"probe-{third['training']['job_id']}.json"
    wait_for(probe.exists, timeout=60, what="probe written")
    assert json.loads(probe.read_text())["trigger"] == "auto after 3 annotation events"
    assert "training" not in annotate(), "counting starts again after a run started"
    (tmp_path / "models" / "release").touch()
    wait_for(lambda: client.get("/train/status").json["job"]["state"] == "succeeded", timeout=60, what="done")
    assert "training" not in annotate()
    assert annotate()["training"]["status"] == "started"  # 3 more since the last start


def test_auto_train_is_off_by_default(backend):
    client, _ = backend()
    setup(client)
    for _ in range(30):
        reply = client.post("/webhook", headers=HOOK, json={"action": "ANNOTATION_CREATED", "project": {"id": 5}}).json
        assert "training" not in reply
    assert client.get("/train/status").json["job"] is None


def test_training_routes_need_basic_auth(backend):
    client, _ = backend(auth=True)
    ok = basic(*AUTH)
    setup(client, headers=ok)
    assert client.get("/train/status").status_code == 401 and client.get("/train/jobs").status_code == 401
    assert client.get("/versions").status_code == 401
    assert client.get("/train/status", headers=ok).status_code == 200
    assert client.get("/train/status?log=x", headers=ok).status_code == 400
    assert client.get("/train/status?job=job-20990101-000000-000000", headers=ok).status_code == 404
    response = press(client, headers=ok)  # Label Studio sends basic auth with START_TRAINING
    assert response.status_code == 200 and response.json["status"] == "started"
