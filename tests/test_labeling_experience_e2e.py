"""The labeling experience as a new user sees it: a real Label Studio 1.23.2 in headless Chromium.

Five synthetic clips are scored by ``mdsvqa serve`` (tiny model), which orders the queue. A
person logged in to Label Studio opens the project's "MDS-VQA priority" tab: without
toggling anything, the rank and difficulty columns are there, on screen, holding the
values the API holds, in queue order, and the prediction score, model version and upload
filename columns are filled. "Send Test Request" answers the score Label Studio stores.
The backend's own /status page shows the same numbers as /status.json.
"""

from __future__ import annotations

import itertools

import pytest
import requests

from ml_backend.prioritize.run import VIEW_TITLE, VIEW_TITLE_PREFIX
from ml_backend.prioritize.view import DIFFICULTY_FIELD, RANK_FIELD
from tests.browser import check_screenshot, login_label_studio, status_page_matches
from tests.labelstudio_support import LS_PASSWORD, LS_USER, REPO, start_backend, stop_process, wait_for
from tests.media import encode_video, moving_pattern

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow, pytest.mark.browser]

LABEL_CONFIG = (REPO / "label_config.xml").read_text()
CLIPS = 5
RANK_ID, DIFFICULTY_ID = f"tasks:data.{RANK_FIELD}", f"tasks:data.{DIFFICULTY_FIELD}"

# The Data Manager's table as the page draws it: header column ids, and each row's cell texts in that order
TABLE_JS = """
const head = document.querySelector('.lsf-table-head');
if (!head) return null;
const cells = Array.from(head.querySelectorAll('.lsf-table__cell'));
const rows = Array.from(document.querySelectorAll('.lsf-table-row')).map(row =>
  Array.from(row.children).filter(c => c.classList.contains('lsf-table__cell')).map(c => c.innerText.trim()));
const tab = document.querySelector('[role=tab][aria-selected=true]');
return {ids: cells.map(c => c.getAttribute('data-id')), titles: cells.map(c => c.innerText.split('\\n')[0].trim()),
        right: cells.map(c => c.getBoundingClientRect().right), width: window.innerWidth, rows: rows,
        tab: tab ? tab.getAttribute('title') : null};
"""


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clips")
    return [encode_video(folder / f"scene{i}.mp4", moving_pattern(12, 56, 84, seed=40 + i)) for i in range(CLIPS)]


@pytest.fixture(scope="module")
def backend(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("experience-backend")
    base, adapter = tiny_model
    running = start_backend(base=base, adapter=adapter, cache_dir=home / "cache", log=home / "backend.log",
                            extra_env={"MDSVQA_PRIORITY_BUDGET": "2", "MDSVQA_PRIORITY_DEBOUNCE_S": "0.3"})
    yield running
    stop_process(running.process)


@pytest.fixture(scope="module")
def project(label_studio, backend, clips):
    project_id = label_studio.create_project("mdsvqa labeling experience", LABEL_CONFIG)
    ids = label_studio.upload(project_id, clips)
    ml = label_studio.api("POST", "/api/ml", json={"url": backend.url, "project": project_id, "title": "MDS-VQA"})
    version = backend.health()["model_version"]
    wait_for(lambda: label_studio.project(project_id)["model_version"] == version, timeout=60,
             what="project model_version == backend version")
    label_studio.dm_action(project_id, "retrieve_tasks_predictions")
    return {"id": project_id, "tasks": ids, "version": version, "ml": ml["id"]}


def queue_in_label_studio(label_studio, project) -> dict | None:
    """Once the backend's pass is in: the view and, in its order, each task's API values; else None."""
    views = label_studio.api("GET", "/api/dm/views", params={"project": project["id"]})
    mine = [v for v in views if str(v["data"].get("title", "")).startswith(VIEW_TITLE_PREFIX)]
    if not mine or not mine[0]["data"].get("hiddenColumns"):
        return None
    rows = []
    for task in label_studio.tasks(project["id"], view=mine[0]["id"]):
        current = [p for p in task["predictions"] if p["model_version"] == project["version"]]
        if len(current) != 1:
            return None
        rows.append({"id": task["id"], "rank": task["data"].get(RANK_FIELD),
                     "difficulty": task["data"].get(DIFFICULTY_FIELD),
                     "number": current[0]["result"][0]["value"]["number"], "score": current[0]["score"]})
    if [row["rank"] for row in rows] != list(range(1, len(rows) + 1)) or len(rows) != CLIPS:
        return None
    if any(row["difficulty"] != f"{row['number']:.2f}" for row in rows):
        return None
    return {"view": mine[0], "rows": rows}


def test_priority_tab_shows_rank_and_difficulty_columns(label_studio, backend, project, browser):
    found = wait_for(lambda: queue_in_label_studio(label_studio, project), timeout=180,
                     what="the queue ordered, with rank and difficulty in every task")
    view, api_rows = found["view"], found["rows"]
    assert view["data"]["title"] == VIEW_TITLE
    scores = [row["score"] for row in api_rows]
    assert all(a > b for a, b in itertools.pairwise(scores)), "the view follows the queue (score descending)"

    login_label_studio(browser, label_studio.url, LS_USER, LS_PASSWORD)
    browser.open(f"{label_studio.url}/projects/{project['id']}/data?tab={view['id']}")

    def table():
        drawn = browser.script(TABLE_JS)
        if not drawn or RANK_ID not in drawn["ids"] or len(drawn["rows"]) != CLIPS:
            return None
        column = drawn["ids"].index("tasks:predictions_score")
        return drawn if all(row[column] for row in drawn["rows"]) else None  # scores are drawn last

    drawn = browser.until(table, what="the priority tab's table with its rows", timeout=120)
    path = browser.screenshot("data-manager-priority-tab.png")
    check_screenshot(path)
    print(f"screenshot: {path}")

    ids = drawn["ids"]
    assert "not a confidence" in (drawn["tab"] or ""), drawn["tab"]
    titles = dict(zip(ids, drawn["titles"]))
    assert titles[RANK_ID] == RANK_FIELD and titles[DIFFICULTY_ID] == DIFFICULTY_FIELD
    for column in (RANK_ID, DIFFICULTY_ID, "tasks:predictions_score"):
        assert drawn["right"][ids.index(column)] <= drawn["width"], f"{column} is off screen"
    cell = {name: ids.index(column) for name, column in (
        ("id", "tasks:id"), ("rank", RANK_ID), ("difficulty", DIFFICULTY_ID), ("score", "tasks:predictions_score"),
        ("versions", "tasks:predictions_model_versions"), ("file", "tasks:file_upload"))}
    shown = [{name: row[index] for name, index in cell.items()} for row in drawn["rows"]]
    assert [int(row["id"]) for row in shown] == [row["id"] for row in api_rows], "rows in queue order"
    assert [row["rank"] for row in shown] == [str(row["rank"]) for row in api_rows]
    assert [row["difficulty"] for row in shown] == [row["difficulty"] for row in api_rows]
    for row, api in zip(shown, api_rows):
        assert float(row["score"]) == pytest.approx(api["score"], abs=5e-4), "three decimals in the Data Manager"
        assert project["version"] in row["versions"] and row["file"].endswith(".mp4"), row


def test_send_test_request_answers_the_stored_score(label_studio, backend, project):
    found = wait_for(lambda: queue_in_label_studio(label_studio, project), timeout=180, what="the queue ordered")
    stored = {row["id"]: row["score"] for row in found["rows"]}
    for _ in range(3):  # "Send Test Request" in the model settings: a random task of the project
        answer = label_studio.api("POST", f"/api/ml/{project['ml']}/predict/test", params={"random": "true"})
        task_id = answer["task"]["id"]
        assert answer["response"][0]["score"] == stored[task_id], (task_id, answer["response"][0], stored)


def test_backend_status_page_matches_its_json(label_studio, backend, project, browser):
    wait_for(lambda: queue_in_label_studio(label_studio, project), timeout=180, what="the queue ordered")

    def fetch() -> dict:
        return requests.get(backend.url + "/status.json", timeout=10).json()

    def idle():
        data = fetch()
        ours = [p for p in data["projects"] if p["id"] == project["id"]]
        # "follow" looks for new versions every few seconds for as long as the backend runs: never idle
        work = sum(count for kind, count in data["outbox"]["pending"].items() if kind != "follow")
        settled = work == 0 and data["queue"]["pending"] == 0 and ours and ours[0]["last_pass"]
        return data if settled and ours[0]["scored"] == CLIPS else None

    wait_for(idle, timeout=120, what="backend idle after ordering")
    page, data = browser.until(lambda: status_page_matches(browser, backend.url + "/status?refresh=0", fetch),
                               what="status page == /status.json")
    index = [p["id"] for p in data["projects"]].index(project["id"])
    ours = data["projects"][index]
    assert (ours["tasks"], ours["scored"], ours["ordered"], ours["picks"]) == (CLIPS, CLIPS, CLIPS, 2)
    assert page[f"projects.{index}.scored"] == str(CLIPS) and page[f"projects.{index}.tasks"] == str(CLIPS)
    assert data["queue"]["videos_scored"]["ok"] >= CLIPS and data["queue"]["seconds_per_video"] > 0
    path = browser.screenshot("backend-status.png")
    check_screenshot(path)
    print(f"screenshot: {path}")
