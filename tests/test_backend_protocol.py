"""The ML backend protocol through Flask's test client, with a scripted scorer and local media."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from ml_backend.prioritize.order import new_prediction_priority
from ml_backend.server.app import create_app
from ml_backend.server.auth import WEBHOOK_SECRET_HEADER
from ml_backend.server.service import BackendService
from ml_backend.settings import Settings
from tests.backend_fakes import FAKE_VERSION, FakeScorer, FakeServer
from tests.conditions import wait_for
from tests.stall_server import StallServer

REPO = Path(__file__).resolve().parents[1]
LABEL_CONFIG = (REPO / "label_config.xml").read_text()
GOOD = {"a.mp4": b"first video", "b.mp4": b"second, longer video", "c.mp4": b"third"}


@pytest.fixture
def media_root(tmp_path) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    for name, data in GOOD.items():
        (root / name).write_bytes(data)
    (root / "corrupt.mp4").write_bytes(b"BAD not a video")
    return root


@pytest.fixture
def make_backend(tmp_path, media_root):
    made: list[BackendService] = []

    def make(scorer: FakeScorer | None = None, **overrides):
        scorer = scorer or FakeScorer()
        values = {"cache_dir": tmp_path / "cache", "model_dir": tmp_path / "models", "local_files_root": media_root,
                  "batch_size": 2, **overrides}
        service = BackendService(Settings(**values), scorer_factory=lambda: scorer)
        made.append(service)
        app = create_app(service=service)
        return app.test_client(), service, scorer

    yield make
    for service in made:
        service.stop()
        service.store.close()


def task(task_id: int, name: str) -> dict:
    return {"id": task_id, "data": {"video": f"/data/local-files/?d={name}"}}


def predict(client, tasks, **extra):
    body = {"tasks": tasks, "project": "1.1700000000", "label_config": LABEL_CONFIG, "params": {}, **extra}
    return client.post("/predict", json=body)


def wait_ready(client):
    wait_for(lambda: client.get("/health").json["model"] == "ready", what="model ready")


# -- health, setup --------------------------------------------------------------------------------

def test_health_while_loading_and_ready(tmp_path):
    gate = threading.Event()
    scorer = FakeScorer()

    def slow_factory():
        assert gate.wait(10)
        return scorer

    service = BackendService(Settings(cache_dir=tmp_path), scorer_factory=slow_factory)
    client = create_app(service=service).test_client()
    try:
        body = client.get("/health").json
        assert body["status"] == "UP" and body["model"] == "loading" and "model_version" not in body
        response = client.post("/setup", json={"project": "1.1", "schema": LABEL_CONFIG})
        assert response.status_code == 503 and "loading" in response.json["error"]
        gate.set()
        wait_ready(client)
        assert client.get("/health").json["model_version"] == FAKE_VERSION
    finally:
        gate.set()
        service.stop()


def test_failed_model_load_is_reported(tmp_path):
    def broken():
        raise RuntimeError("weights not found")

    service = BackendService(Settings(cache_dir=tmp_path), scorer_factory=broken)
    client = create_app(service=service).test_client()
    wait_for(lambda: client.get("/health").json["model"] == "failed")
    assert "weights not found" in client.get("/health").json["error"]
    response = client.post("/setup", json={"project": "1.1", "schema": LABEL_CONFIG})
    assert response.status_code == 500 and "weights not found" in response.json["error"]
    service.stop()


def test_setup_returns_model_version(make_backend):
    """/setup answers from memory: the Label Studio calls it leads to (model_version sync) happen in
    the background, so a Label Studio that never replies cannot hold it up."""
    client, service, _ = make_backend()
    wait_ready(client)
    with StallServer() as label_studio:
        response = client.post("/setup", json={"project": "3.1700000000", "schema": LABEL_CONFIG,
                                               "hostname": label_studio.url, "access_token": "tok"})
        assert response.status_code == 200 and response.json == {"model_version": FAKE_VERSION}
        assert service.store.is_known_project(3)
        # answered, though the call to Label Studio that it asked for is still unanswered
        wait_for(lambda: label_studio.accepted >= 1, what="background call to Label Studio")
        assert label_studio.held >= 1


@pytest.mark.parametrize("schema, message", [
    ('<View><Image name="i" value="$image"/></View>', "no <Video>"),
    ('<View><Video name="v" value="$video"/></View>', "no Number control"),
])
def test_setup_rejects_configs_that_cannot_work(make_backend, schema, message):
    client, _, _ = make_backend()
    wait_ready(client)
    response = client.post("/setup", json={"project": "1.1", "schema": schema})
    assert response.status_code == 422 and message in response.json["error"]


# -- predict ----------------------------------------------------------------------------------------

def test_predict_one_result_per_task_in_order(make_backend):
    client, _, _scorer = make_backend()
    wait_ready(client)
    tasks = [task(10, "b.mp4"), task(11, "a.mp4"), task(12, "c.mp4")]
    response = predict(client, tasks)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == 3
    for result, name, task_id in zip(results, ["b.mp4", "a.mp4", "c.mp4"], [10, 11, 12]):
        difficulty = round(FakeScorer.difficulty_of(GOOD[name]), 2)
        assert result["model_version"] == FAKE_VERSION
        assert result["result"] == [{"from_name": "difficulty", "to_name": "video", "type": "number",
                                     "value": {"number": difficulty}}]
        # the score is the queue priority an ordering pass gives the task when it is not picked (not a confidence)
        assert result["score"] == new_prediction_priority(difficulty, task_id)
    assert "errors" not in response.json


def test_cached_tasks_answer_without_the_model(make_backend):
    client, _, scorer = make_backend()
    wait_ready(client)
    first = predict(client, [task(1, "a.mp4"), task(2, "b.mp4")]).json
    calls = len(scorer.calls)
    scorer.gate = threading.Event()  # the model is stuck from now on: only cached results can come back
    try:
        second = predict(client, [task(1, "a.mp4"), task(2, "b.mp4")]).json
    finally:
        scorer.gate.set()
    assert second["results"] == first["results"] and "errors" not in second
    assert len(scorer.calls) == calls, "a cached task must not reach the model"


def test_same_video_in_two_tasks_is_scored_once(make_backend):
    client, _, scorer = make_backend()
    wait_ready(client)
    results = predict(client, [task(1, "a.mp4"), task(2, "a.mp4")]).json["results"]
    assert results[0]["result"] == results[1]["result"]
    assert results[0]["score"] > results[1]["score"], "same difficulty: the older task first in the queue"
    assert sum(names.count("a.mp4") for names in scorer.calls) == 1


def test_bad_tasks_fail_alone(make_backend):
    client, _service, _ = make_backend()
    wait_ready(client)
    tasks = [
        task(1, "a.mp4"),
        task(2, "corrupt.mp4"),
        task(3, "missing.mp4"),
        {"id": 4, "data": {"image": "x.png"}},
        {"id": 5, "data": {"video": 17}},
        {"id": 6},
        "not a task",
        task(8, "b.mp4"),
    ]
    response = predict(client, tasks)
    assert response.status_code == 200
    results = response.json["results"]
    assert len(results) == len(tasks)
    assert results[0]["result"] and results[7]["result"]
    assert results[1:7] == [[]] * 6, "failed tasks get no prediction (never a placeholder)"
    errors = {e["task"]: e["error"] for e in response.json["errors"]}
    assert "cannot decode" in errors[2] and "corrupt.mp4" in errors[2]
    assert "missing.mp4" in errors[3]
    assert "no 'video' field" in errors[4]
    assert client.get("/health").json["status"] == "UP"


def test_deadline_defers_and_pushes_late_results(tmp_path, media_root):
    """Slow scoring: /predict answers by its deadline without the task, the result is posted later."""
    with FakeServer() as label_studio:
        scorer = FakeScorer()
        scorer.gate = threading.Event()
        settings = Settings(cache_dir=tmp_path / "cache", local_files_root=media_root, predict_deadline_s=0.5,
                            label_studio_url=label_studio.url, label_studio_api_key=label_studio.token)
        service = BackendService(settings, scorer_factory=lambda: scorer)
        client = create_app(service=service).test_client()
        try:
            wait_ready(client)
            response = predict(client, [task(41, "a.mp4"), task(42, "c.mp4")])
            # answered while the model is still stuck on them: both still queued or in the model
            assert not scorer.gate.is_set() and client.get("/health").json["queue_length"] >= 1
            assert response.json["results"] == [[], []]
            assert all("still scoring" in e["error"] for e in response.json["errors"])
            assert label_studio.predictions == []
            scorer.gate.set()
            posted = wait_for(lambda: len(label_studio.predictions) == 2 and label_studio.predictions,
                              what="late predictions posted")
            by_task = {p["task"]: p for p in posted}
            assert set(by_task) == {41, 42}
            assert by_task[41]["model_version"] == FAKE_VERSION
            assert by_task[41]["result"][0]["value"]["number"] == round(FakeScorer.difficulty_of(GOOD["a.mp4"]), 2)
            assert 0 <= by_task[41]["score"] <= 1
            # Asked again: answered from the store at once, and nothing posted twice.
            again = predict(client, [task(41, "a.mp4")]).json["results"]
            assert again[0]["result"]
            assert len(label_studio.predictions) == 2
        finally:
            scorer.gate.set()
            service.stop()


def test_result_ready_for_a_live_request_is_not_also_pushed(tmp_path, media_root):
    with FakeServer() as label_studio:
        scorer = FakeScorer()
        scorer.gate = threading.Event()
        settings = Settings(cache_dir=tmp_path / "cache", local_files_root=media_root, predict_deadline_s=0.3,
                            label_studio_url=label_studio.url, label_studio_api_key=label_studio.token)
        service = BackendService(settings, scorer_factory=lambda: scorer)
        client = create_app(service=service).test_client()
        try:
            wait_ready(client)
            assert predict(client, [task(7, "b.mp4")]).json["results"] == [[]]  # deferred: push registered
            service.settings.predict_deadline_s = 5.0
            holder = {}
            waiter = threading.Thread(target=lambda: holder.setdefault("r", predict(client, [task(7, "b.mp4")])))
            waiter.start()
            wait_for(lambda: any(7 in job._watchers for job in service.queue._jobs.values()),
                       what="second request watching the job")
            scorer.gate.set()
            waiter.join(10)
            assert holder["r"].json["results"][0]["result"]
            assert service.outbox.wait_idle(30)
            assert label_studio.predictions == [], "a live response covers the task; pushing it too duplicates"
        finally:
            scorer.gate.set()
            service.stop()


def test_interactive_request_overtakes_a_big_batch(tmp_path):
    root = tmp_path / "many"
    root.mkdir()
    for i in range(12):
        (root / f"v{i}.mp4").write_bytes(f"video {i}".encode())
    scorer = FakeScorer()
    scorer.gate = threading.Event()
    service = BackendService(Settings(cache_dir=tmp_path / "c", local_files_root=root, batch_size=1,
                                      predict_deadline_s=30, download_workers=1),
                             scorer_factory=lambda: scorer)
    client = create_app(service=service).test_client()
    try:
        wait_ready(client)
        big = threading.Thread(target=predict, args=(client, [task(i, f"v{i}.mp4") for i in range(11)]))
        big.start()
        wait_for(lambda: len(scorer.calls) >= 1, what="big batch started")
        single = {}
        one = threading.Thread(target=lambda: single.setdefault("r", predict(client, [task(99, "v11.mp4")])))
        one.start()
        wait_for(lambda: service.queue.pending >= 12, what="single request queued")
        scorer.gate.set()
        one.join(10)
        big.join(30)
        order = [names[0] for names in scorer.calls]
        # Already past the priority queue when it arrived: one in the model, 2 x batch_size fetched and
        # waiting, one in the fetcher's hands. It must come right after those, not after all 11.
        assert order.index("v11.mp4") <= 1 + 2 * 1 + 1, order
    finally:
        scorer.gate.set()
        service.stop()


def test_predicts_beyond_the_waiting_slots_answer_at_once(make_backend):
    """3 threads: one /predict may wait on scoring; the next answers at once, its video deferred."""
    client, _service, scorer = make_backend(threads=3, predict_deadline_s=30)
    wait_ready(client)
    scorer.gate = threading.Event()
    holder = {}
    first = threading.Thread(target=lambda: holder.setdefault("r", predict(client, [task(1, "a.mp4")])))
    first.start()
    try:
        wait_for(lambda: scorer.calls, what="the first /predict's video in the model")
        second = predict(client, [task(2, "b.mp4")])
        assert first.is_alive() and not scorer.gate.is_set(), "answered while the first still waits"
        assert second.status_code == 200 and second.json["results"] == [[]]
        assert "still scoring" in second.json["errors"][0]["error"]
    finally:
        scorer.gate.set()
        first.join(30)
    assert holder["r"].json["results"][0]["result"], "the admitted request waited for its result"
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mdsvqa_predict_admission_total{result="busy"} 1.0' in text
    assert 'mdsvqa_predict_admission_total{result="waited"} 1.0' in text
    assert 'mdsvqa_task_predictions_total{outcome="deferred"} 1.0' in text


@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "not valid JSON"),
    (b'"a string"', 400, "JSON object"),
    (b'{"tasks": "nope"}', 400, "list of tasks"),
    (b'{"tasks": [], "project": "abc"}', 400, "project"),
    (b'{"tasks": [], "project": "1e400"}', 400, "project"),
    (b'{"tasks": [], "project": 1e400}', 400, "project"),
    (b'{"tasks": [], "project": 9223372036854775808}', 400, "project"),
    (b'{"tasks": [], "project": "1.1", "label_config": 5}', 400, "label_config"),
    (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
    (b'{"tasks": [], "deep": ' + b"[" * 80 + b"]" * 80 + b"}", 400, "nests deeper"),
])
def test_predict_malformed_requests(make_backend, body, status, message):
    client, _, _ = make_backend()
    wait_ready(client)
    response = client.post("/predict", data=body, content_type="application/json")
    assert response.status_code == status and message in response.json["error"]


def test_predict_with_config_lacking_video(make_backend):
    client, _, _ = make_backend()
    wait_ready(client)
    response = client.post("/predict", json={"tasks": [task(1, "a.mp4")], "label_config": "<View/>"})
    assert response.status_code == 422 and "<Video>" in response.json["error"]


# -- webhooks and training ------------------------------------------------------------------------

def test_start_training_acknowledged_fast(make_backend):
    """Acknowledged while the model is busy: the webhook never waits on model work."""
    client, service, scorer = make_backend()
    wait_ready(client)
    client.post("/setup", json={"project": "5.1", "schema": LABEL_CONFIG})
    scorer.gate = threading.Event()
    busy = threading.Thread(target=predict, args=(client, [task(50, "a.mp4")]))
    busy.start()
    try:
        wait_for(lambda: scorer.calls, what="the model busy on a video")
        response = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5, "title": "p"}})
        assert busy.is_alive() and not scorer.gate.is_set(), "answered while the model was still busy"
    finally:
        scorer.gate.set()
        busy.join(30)
    # /setup brought no Label Studio URL/token, so a job could not read the labels: refused, saying why
    # (starting real jobs: tests/test_backend_training.py)
    assert response.status_code == 422 and response.json["project"] == 5
    assert response.json["status"] == "refused" and "LABEL_STUDIO_API_KEY" in response.json["error"]
    assert [e["project_id"] for e in service.store.events("START_TRAINING")] == [5]
    assert client.post("/train", json={"project": "5.1"}).json["status"] == "refused"


def test_webhook_events(make_backend):
    client, _service, _ = make_backend()
    wait_ready(client)
    client.post("/setup", json={"project": "5.1", "schema": LABEL_CONFIG})
    created = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 5},
                                            "annotation": {"id": 1, "result": []}})
    assert created.status_code == 200 and created.json["status"] == "recorded"
    other = client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 5}})
    assert other.json["status"] == "ignored"
    stranger = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 999}})
    assert stranger.status_code == 200 and stranger.json["status"] == "ignored"
    assert "never set up" in stranger.json["reason"]
    unknown = client.post("/webhook", json={"action": "SOMETHING_NEW", "project": {"id": 5}})
    assert unknown.status_code == 400 and "unknown webhook action" in unknown.json["error"]
    for project in ({"id": 1e400}, {"id": 2**63}, "1e400", {"id": 0}, {"id": True}):
        odd = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": project})
        assert odd.status_code == 400, project
    text = client.get("/metrics").get_data(as_text=True)
    assert "SOMETHING_NEW" not in text, "made-up actions are not metric labels"
    assert 'mdsvqa_webhook_events_total{action="other",handling="rejected"} 1.0' in text
    assert 'mdsvqa_webhook_events_total{action="ANNOTATION_CREATED",handling="recorded"} 1.0' in text
    assert client.post("/webhook", data=b"][", content_type="application/json").status_code == 400
    assert client.post("/webhook", json={"project": {"id": 5}}).status_code == 400


# -- access control ---------------------------------------------------------------------------------

def basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_basic_auth_and_webhook_secret(make_backend):
    client, service, _ = make_backend(basic_auth_user="ls", basic_auth_password="pw-123")
    wait_ready(client)
    assert client.get("/health").status_code == 200  # Label Studio's 1 s health check stays open
    setup = {"project": "5.1", "schema": LABEL_CONFIG}
    assert client.post("/setup", json=setup).status_code == 401
    assert client.post("/setup", json=setup, headers=basic("ls", "wrong")).status_code == 401
    assert client.post("/setup", json=setup, headers=basic("ls", "pw-123")).status_code == 200
    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=basic("ls", "pw-123")).status_code == 200

    event = {"action": "ANNOTATION_CREATED", "project": {"id": 5}}
    assert client.post("/webhook", json=event).status_code == 401
    assert client.post("/webhook", json=event, headers={WEBHOOK_SECRET_HEADER: "guess"}).status_code == 401
    secret = service.settings.webhook_secret_path.read_text().strip()  # random, kept beside the state
    assert client.post("/webhook", json=event, headers={WEBHOOK_SECRET_HEADER: secret}).status_code == 200
    assert client.post("/webhook", json=event, headers=basic("ls", "pw-123")).status_code == 200
    assert service.access.webhook_header == (WEBHOOK_SECRET_HEADER, secret)
    assert "pw-123" not in repr(service.access) and secret not in repr(service.access)


def test_settings_need_both_auth_parts(tmp_path):
    with pytest.raises(ValueError, match="BASIC_AUTH"):
        Settings(cache_dir=tmp_path, basic_auth_user="only-user")


# -- metrics ----------------------------------------------------------------------------------------

def test_metrics(make_backend):
    client, _, _ = make_backend()
    wait_ready(client)
    predict(client, [task(1, "a.mp4"), task(2, "corrupt.mp4")])
    predict(client, [task(1, "a.mp4")])
    text = client.get("/metrics").get_data(as_text=True)
    assert 'mdsvqa_http_requests_total{route="/predict",status="200"} 2.0' in text
    assert 'mdsvqa_task_predictions_total{outcome="cached"} 1.0' in text
    assert 'mdsvqa_task_predictions_total{outcome="failed"} 1.0' in text
    assert 'mdsvqa_score_cache_lookups_total{result="hit"} 1.0' in text
    assert "mdsvqa_queue_length 0.0" in text
    assert f'mdsvqa_model_info{{version="{FAKE_VERSION}"}} 1.0' in text
    assert 'mdsvqa_http_request_seconds_bucket{le="0.1",route="/predict"}' in text


def test_unknown_route_and_method(make_backend):
    client, _, _ = make_backend()
    assert client.get("/nope").status_code == 404
    assert client.get("/predict").status_code == 405
