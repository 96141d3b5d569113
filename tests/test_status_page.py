"""The backend's status page and live report in a real headless Chromium, against /status.json.

One backend (the fake scorer, media from local files) served by waitress on loopback, in a
known state: videos scored and some waiting behind a closed gate, an ordering pass of
project 3 (8 tasks, 2 labeled, 3 greedy picks) from an in-memory Label Studio, a pass
waiting in the outbox, a running training job and two trained versions. Every number the
page shows must be the JSON's; the report must show the pass's pool and the versions'
budget curve; both screenshots must be real pictures.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import requests

from ml_backend.prioritize.features import FeatureSource, FeatureStore
from ml_backend.prioritize.run import prioritize_project
from ml_backend.server.app import create_app
from ml_backend.server.service import BackendService
from ml_backend.server.status import shown
from ml_backend.settings import Settings
from ml_backend.training.versions import VersionStore
from selection.lambdas import CLIP_RN101_OPENAI
from tests.backend_fakes import FakeScorer
from tests.browser import check_screenshot, lookup
from tests.conditions import wait_for
from tests.test_prioritize import LS, FakeLabelStudio, _task

pytestmark = [pytest.mark.browser]

REPO = Path(__file__).resolve().parents[1]
LABEL_CONFIG = (REPO / "label_config.xml").read_text()
AUTH = ("status-user", "status-password-1")
PROJECT = 3
DIFFICULTY = {1: 2.5, 2: 4.1, 3: 3.3, 4: 4.1, 5: 1.7, 6: 3.9}
VERSIONS = [(8, 4, 0.412, 0.455), (20, 6, 0.455, 0.531)]  # train, held-out labels, SRCC before, after
VOLATILE = {"generated_at"}


class FakeTraining:
    """A training hook with a job half way through (what BackendTraining.status returns)."""

    def start_training(self, project_id, event):
        return {"status": "refused", "http_status": 409, "error": "busy"}

    def status(self, job_id=None, *, log_lines=0):
        return {"running": True, "job": {
            "job_id": "job-20260101-000000-abcdef", "state": "running", "target": "t", "log_path": "/dev/null",
            "created": "2026-01-01T00:00:00+00:00", "pid": 4242, "progress": 0.4237,
            "message": "difficulty: training step 3/10", "started": "2026-01-01T00:00:01+00:00", "finished": None,
            "error": None, "stale": False,
            "result": {"runs": [{"kind": "quality", "version_id": "quality-20260101-000001-abcdef",
                                 "activated": True, "metrics_before": {"srcc": 0.40123, "plcc": 0.39},
                                 "metrics_after": {"srcc": 0.47777, "plcc": 0.46}}]}}}

    def history(self):
        return []


def publish_versions(model_dir: Path) -> None:
    store = VersionStore(model_dir)
    for train, held_out, before, after in VERSIONS:
        with store.draft("difficulty", settings={"labels": {"train": train, "held_out": held_out}}) as draft:
            draft.adapter_dir.mkdir(parents=True, exist_ok=True)
            (draft.adapter_dir / "adapter_config.json").write_text("{}")
            draft.metadata["metrics_before"] = {"srcc": before, "plcc": before - 0.02}
            draft.metadata["metrics_after"] = {"srcc": after, "plcc": after - 0.02}


@pytest.fixture
def running_backend(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    for i in range(5):
        (media / f"clip{i}.mp4").write_bytes(f"video number {i}".encode() * (i + 1))
    settings = Settings(cache_dir=tmp_path / "cache", model_dir=tmp_path / "models", local_files_root=media,
                        label_studio_url=LS.url, label_studio_api_key=LS.token, basic_auth_user=AUTH[0],
                        basic_auth_password=AUTH[1], batch_size=1, threads=4,
                        priority={"enabled": False})  # passes are set up by hand below: nothing runs by itself
    scorer = FakeScorer()
    service = BackendService(settings, scorer_factory=lambda: scorer, training=FakeTraining())
    app = create_app(service=service)
    from waitress import create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=4)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.effective_port}"
    try:
        wait_for(lambda: service.scorer.state == "ready", what="fake model ready")
        # two videos scored (a rate for the ETA), two more waiting behind the closed gate
        body = {"project": f"{PROJECT}.1700000000", "label_config": LABEL_CONFIG,
                "tasks": [{"id": 100 + i, "data": {"video": f"/data/local-files/?d=clip{i}.mp4"}} for i in range(2)]}
        answer = service.predict(body)
        assert all(answer["results"]), answer
        scorer.gate = threading.Event()
        body["tasks"] = [{"id": 100 + i, "data": {"video": f"/data/local-files/?d=clip{i}.mp4"}} for i in (2, 3)]
        service.predict(body, wait=False)
        wait_for(lambda: len(scorer.calls) == 3 and service.queue.pending == 2, what="one video at the gate")
        # an ordering pass of project 3 (features kept where the backend keeps them), one more pass waiting
        tasks = [_task(t, d) for t, d in DIFFICULTY.items()] + [_task(7, 4.8, labeled=True), _task(8, labeled=True)]
        store = FeatureStore.under(settings.cache_dir / "features", CLIP_RN101_OPENAI)
        rng = np.random.default_rng(3)
        for task in tasks:
            store.put(f"{LS.url}/data/upload/1/v{task.id}.mp4", rng.normal(size=(3, 8)).astype(np.float32))
        summary = prioritize_project(FakeLabelStudio(tasks), PROJECT, features=FeatureSource(store), budget=3,
                                     lam=0.25)
        assert len(summary.picks) == 3, summary.describe()
        service.features.store = store
        service.priority.last[PROJECT] = summary
        service.store.record_project(PROJECT)
        service.store.record_project(5)  # connected, never ordered
        service.outbox.ask("priority", str(PROJECT), {"project": PROJECT, "reason": "labels"}, delay=3600)
        publish_versions(settings.model_dir)
        yield {"url": url, "service": service, "summary": summary}
    finally:
        if scorer.gate is not None:
            scorer.gate.set()
        server.close()
        thread.join(10)
        service.stop()


def status_json(url: str) -> dict:
    response = requests.get(url + "/status.json", auth=AUTH, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def stable(data: dict) -> dict:
    return {k: v for k, v in data.items() if k not in VOLATILE}


def test_status_page_shows_the_numbers_of_status_json(running_backend, browser):
    url, summary = running_backend["url"], running_backend["summary"]
    assert requests.get(url + "/status", timeout=10).status_code == 401
    assert requests.get(url + "/status.json", timeout=10).status_code == 401
    assert requests.get(url + "/report", timeout=10).status_code == 401

    before = status_json(url)
    browser.basic_auth(*AUTH)
    browser.open(url + "/status?refresh=0")
    page = browser.until(lambda: browser.data_keys() or None, what="status page values")
    after = status_json(url)
    assert stable(before) == stable(after), "the backend's state moved while the page loaded"

    mismatched = {key: (text, shown(lookup(after, key))) for key, text in page.items()
                  if key not in VOLATILE and text != shown(lookup(after, key))}
    assert not mismatched, mismatched
    wanted = {"queue.pending", "queue.eta_s", "queue.seconds_per_video", "outbox.pending.priority",
              "outbox.pending.push", "projects.0.scored", "projects.0.tasks", "projects.0.labeled",
              "projects.0.ordered", "projects.0.picks", "projects.0.eta_s", "projects.0.last_pass.finished",
              "projects.0.next_pass.due_at", "projects.0.head.0.rank", "projects.0.head.0.task",
              "training.job.progress", "training.job.state", "training.runs.0.srcc_after",
              "training.versions.1.srcc_after", "training.versions.1.labels", "projects.1.id"}
    assert wanted <= set(page), sorted(wanted - set(page))

    # ... and the JSON says what the backend holds
    assert after["queue"]["pending"] == 2 and after["queue"]["videos_scored"]["ok"] == 2
    assert after["queue"]["eta_s"] == pytest.approx(2 * after["queue"]["seconds_per_video"], abs=0.1)
    project = after["projects"][0]
    assert project["id"] == PROJECT and (project["tasks"], project["scored"], project["labeled"]) == (8, 7, 2)
    assert (project["ordered"], project["picks"], project["budget"]) == (6, 3, 3)
    assert [row["task"] for row in project["head"]] == summary.queue
    assert after["projects"][1] == {"id": 5, "next_pass": None, "pass_running": False, "last_pass": None}
    assert after["outbox"]["pending"]["priority"] == 1 and project["next_pass"]["reason"] == "labels"
    assert after["training"]["job"]["progress"] == 0.424 and after["training"]["runs"][0]["srcc_after"] == 0.4778
    assert [v["labels"] for v in after["training"]["versions"]] == [12, 26]
    height = browser.script("return document.documentElement.scrollHeight")
    browser.driver.set_window_size(1600, min(int(height) + 40, 6000))
    check_screenshot(browser.screenshot("status.png"))


def test_live_report_renders_the_pass_and_the_budget_curve(running_backend, browser):
    url = running_backend["url"]
    data = status_json(url)
    browser.basic_auth(*AUTH)
    browser.open(url + "/report")
    images = browser.until(lambda: browser.script(
        "const imgs = Array.from(document.images);"
        "return imgs.length && imgs.every(i => i.complete && i.naturalWidth > 0) ? "
        "imgs.map(i => i.alt) : null;"), what="report figures decoded")
    assert images == ["difficulty histogram", "embedding map with numbered picks", "objective terms per pick",
                      "budget curve"]
    cards = browser.script("return Object.fromEntries(Array.from(document.querySelectorAll('.card'))"
                           ".map(c => [c.lastChild.textContent.trim(), c.querySelector('b').textContent]));")
    project = data["projects"][0]
    assert cards["videos scored"] == str(project["ordered"])  # the pass's unlabeled tasks with a difficulty
    assert cards["picked"] == str(project["picks"]) and cards["already labeled"] == str(project["labeled"])
    picks = browser.script("return Array.from(document.querySelectorAll('table'))[0].querySelectorAll('tr').length")
    assert picks == 1 + project["picks"]
    versions = browser.script(
        "const t = Array.from(document.querySelectorAll('h2')).find(h => h.textContent.startsWith('Model versions'))"
        ".nextElementSibling; return Array.from(t.querySelectorAll('tr')).slice(1)"
        ".map(r => Array.from(r.cells).map(c => c.textContent));")
    by_id = {v["id"]: v for v in data["training"]["versions"]}
    assert len(versions) == len(by_id) == 2
    for row in versions:
        version = by_id[row[0]]
        assert int(row[4]) == version["labels"]
        assert float(row[6]) == pytest.approx(version["srcc_after"], abs=5e-4)  # the report writes 3 decimals
    height = browser.script("return document.documentElement.scrollHeight")
    browser.driver.set_window_size(1600, min(int(height) + 40, 6000))
    path = browser.screenshot("report.png")
    check_screenshot(path)
    print(f"screenshots: {path.parent}")  # shown with -s / -rA
    missing = requests.get(url + "/report?project=5", auth=AUTH, timeout=10)
    assert missing.status_code == 404 and "No report yet" in missing.text
    assert json.loads(requests.get(url + "/status.json", auth=AUTH, timeout=10).text)["projects"][0]["id"] == 3
