"""The backend follows MODEL_DIR's active difficulty version without a restart (tiny model, in process).

Activation, rollback and a broken version, through the protocol (Flask test client); the
queue finishing work on the version it was submitted for.
"""

from __future__ import annotations

import json
import shutil
import threading
from pathlib import Path

import pytest

from ml_backend.server.app import create_app
from ml_backend.server.metrics import BackendMetrics
from ml_backend.server.queue import MediaRequest, ScoringQueue
from ml_backend.server.service import BackendService
from ml_backend.server.store import BackendStore
from ml_backend.settings import Settings
from ml_backend.training.versions import VersionStore
from tests.backend_fakes import FakeScorer
from tests.conditions import wait_for

REPO = Path(__file__).resolve().parents[1]
LABEL_CONFIG = (REPO / "label_config.xml").read_text()


@pytest.fixture
def media_root(tmp_path, shared_videos) -> Path:
    root = tmp_path / "media"
    root.mkdir()
    shutil.copy(shared_videos / "carphone_distorted.mp4", root / "clip.mp4")
    return root


@pytest.fixture
def settings(tiny_model, tmp_path, media_root) -> Settings:
    base, adapter = tiny_model
    return Settings(base=str(base), adapter=str(adapter), offline=True, device="cpu", cache_dir=tmp_path / "cache",
                    model_dir=tmp_path / "models", local_files_root=media_root, version_poll_s=0.1,
                    video={"max_frames": 4, "max_pixels": 56 * 56, "min_pixels": 28 * 28})


@pytest.fixture
def serve(settings):
    services: list[BackendService] = []

    def start():
        service = BackendService(settings)
        services.append(service)
        client = create_app(service=service).test_client()
        wait_for(lambda: client.get("/health").json["model"] == "ready", timeout=120, what="model ready")
        return client, service

    yield start
    for service in services:
        service.stop()
        service.store.close()


def publish(settings: Settings, tiny_model) -> str:
    """A difficulty version holding a copy of the tiny adapter (its own files, so its own identity)."""
    return VersionStore(settings.model_dir).publish_folder("difficulty", tiny_model[1]).id


def serving(client) -> str:
    return client.get("/health").json["model_version"]


def predict_version(client) -> str:
    body = {"tasks": [{"id": 1, "data": {"video": "/data/local-files/?d=clip.mp4"}}], "project": "1.1",
            "label_config": LABEL_CONFIG}
    response = client.post("/predict", json=body).json
    assert response["results"][0], response
    return response["results"][0]["model_version"]


def test_activation_and_rollback_are_served_without_restart(serve, settings, tiny_model):
    client, service = serve()
    stock = serving(client)
    assert client.get("/health").json["active_version"] is None
    assert predict_version(client) == stock

    first = publish(settings, tiny_model)
    assert serving(client) == stock, "publishing alone changes nothing"
    store = VersionStore(settings.model_dir)
    store.activate(first)
    trained = wait_for(lambda: (v := serving(client)) != stock and v, timeout=60, what="switch to the version")
    assert first in trained and trained.startswith("TINY-RANDOM-")
    assert client.get("/health").json["active_version"] == first
    assert predict_version(client) == trained
    assert service.store.outcome(trained, next(iter(_keys(service)))) is not None

    versions = client.get("/versions").json
    assert versions["versions"][0] == trained and versions["versions"][-1] == stock  # Label Studio's dropdown
    assert versions["model_version"] == trained and versions["serving"] == first
    (entry,) = [v for v in versions["store"] if v["id"] == first]
    assert entry["active"] and entry["kind"] == "difficulty" and entry["model_version"] == trained

    second = publish(settings, tiny_model)
    store.activate(second)
    newer = wait_for(lambda: second in serving(client) and serving(client), timeout=60, what="second version")
    assert newer != trained
    store.activate(first)  # rollback: still loaded, reused
    wait_for(lambda: serving(client) == trained, timeout=60, what="rollback")

    loaded = service.follower._stock.loaded
    third = publish(settings, tiny_model)
    store.activate(third)
    wait_for(lambda: third in serving(client), timeout=60, what="third version")
    assert second not in loaded.spec.adapters and {first, third} <= set(loaded.spec.adapters), \
        "only the serving and the previous trained adapter stay in memory"
    assert service.follower.scorer_for(newer) is None and service.follower.scorer_for(trained) is not None
    store.activate(second)  # unloaded earlier: loaded again, same identity
    wait_for(lambda: serving(client) == newer, timeout=60, what="rollback to an unloaded version")
    store.activate(None, kind="difficulty")  # back to the configured adapter
    wait_for(lambda: serving(client) == stock, timeout=60, what="back to stock")
    assert predict_version(client) == stock


def _keys(service):
    rows = service.store._db.execute("SELECT media_key FROM media_scores").fetchall()
    return {r[0] for r in rows}


def test_startup_serves_the_active_version_and_a_broken_one_keeps_the_old(serve, settings, tiny_model):
    store = VersionStore(settings.model_dir)
    good = publish(settings, tiny_model)
    store.activate(good)
    client, _ = serve()
    assert good in serving(client) and client.get("/health").json["active_version"] == good

    broken = publish(settings, tiny_model)
    weights = store.get(broken).adapter_path / "adapter_model.safetensors"
    weights.write_bytes(b"not safetensors")
    store.activate(broken)
    error = wait_for(lambda: client.get("/health").json.get("version_error"), timeout=60, what="error shown")
    assert broken in error
    assert good in serving(client) and client.get("/health").json["active_version"] == good
    assert predict_version(client) == serving(client)


def test_queued_work_finishes_on_the_version_it_was_submitted_for(tmp_path):
    """A switch while a job waits: the old scorer scores it and the result is stored under the old version."""
    old, new = FakeScorer(), FakeScorer()
    new.model_version = "FAKE-new@11111111"
    old.gate = threading.Event()
    current = [old]
    media = tmp_path / "v.mp4"
    media.write_bytes(b"some video bytes")
    store = BackendStore(tmp_path / "backend.sqlite")

    class Resolver:
        def fetch(self, ref, *, task_id, connection):
            from ml_backend.labelstudio.media import LocalMedia

            return LocalMedia(Path(ref), temporary=False, size=1)

    queue = ScoringQueue(scorer=lambda: current[0], resolver=Resolver(), store=store, metrics=BackendMetrics(),
                         on_late_result=lambda *a: None, batch_size=1, download_workers=1,
                         scorer_for=lambda version: old if version == old.model_version else None)
    queue.start()
    try:
        job = queue.submit(MediaRequest("key", str(media), 1, None), priority=1, model_version=old.model_version)
        wait_for(lambda: old.calls, what="old scorer working")
        current[0] = new  # the switch happens while the old one is busy
        same_key_new = queue.submit(MediaRequest("key", str(media), 1, None), priority=1,
                                    model_version=new.model_version)
        assert same_key_new is not job, "a new version never reuses a job of the old one"
        old.gate.set()
        assert job.wait(10) and same_key_new.wait(10)
        assert store.outcome(old.model_version, "key").difficulty == FakeScorer.difficulty_of(media.read_bytes())
        assert store.outcome(new.model_version, "key") is not None and new.calls
        gone = queue.submit(MediaRequest("other", str(media), 2, None), priority=1, model_version="FAKE-gone@0")
        assert gone.wait(10) and not gone.outcome.final and "no longer served" in gone.outcome.error
    finally:
        queue.stop()
        store.close()


def test_versions_route_lists_the_store_with_metrics(tmp_path, tiny_model):
    settings = Settings(cache_dir=tmp_path / "cache", model_dir=tmp_path / "models")
    store = VersionStore(settings.model_dir)
    with store.draft("quality") as draft:
        shutil.copytree(tiny_model[1], draft.adapter_dir)
        draft.metadata["metrics_before"] = {"srcc": 0.40, "plcc": 0.30, "count": 5, "total": 5}
        draft.metadata["metrics_after"] = {"srcc": 0.55, "plcc": 0.28, "count": 5, "total": 5}
    store.activate(draft.id)
    service = BackendService(settings, scorer_factory=FakeScorer)
    client = create_app(service=service).test_client()
    try:
        wait_for(lambda: client.get("/health").json["model"] == "ready", what="ready")
        body = client.get("/versions").json
        assert body["versions"] == [FakeScorer.model_version] and body["active"]["quality"] == draft.id
        (entry,) = body["store"]
        assert entry["improvement"] == {"srcc": pytest.approx(0.15), "plcc": pytest.approx(-0.02)}
        assert json.loads(json.dumps(entry))["metrics_after"]["srcc"] == 0.55
    finally:
        service.stop()
        service.store.close()
