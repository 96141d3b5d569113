"""The labeling queue end to end: a real Label Studio 1.23.2, ``mdsvqa serve`` with the tiny model.

Six tasks: three synthetic clips, each uploaded twice (same bytes, so same difficulty and
features). The backend runs with K = 1 and a large lambda, so after a label the next pick
is decided by diversity from the labeled video: its twin (distance 0) must not come next,
although a difficulty-only order would put it there. Expected orders are recomputed here
from what Label Studio and the backend's feature store hold, with the reference greedy.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml_backend.labelstudio.client import Connection
from ml_backend.labelstudio.media import media_key
from ml_backend.prioritize.features import FeatureStore
from ml_backend.prioritize.order import rest_sort_key
from ml_backend.prioritize.run import VIEW_ORDERING, VIEW_TITLE
from tests.labelstudio_support import REPO, start_backend, stop_process, wait_for
from tests.media import encode_video, moving_pattern

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow]

LABEL_CONFIG = (REPO / "label_config.xml").read_text()
LAMBDA = 50.0  # diversity dominates difficulty (1-5) whenever two clips differ at all
ORDERING_ENV = {"MDSVQA_PRIORITY_BUDGET": "1", "MDSVQA_PRIORITY_DIVERSITY_LAMBDA": str(LAMBDA),
                "MDSVQA_PRIORITY_DEBOUNCE_S": "0.3"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> list[Path]:
    folder = tmp_path_factory.mktemp("clips")
    files = []
    for i in range(3):
        clip = encode_video(folder / f"clip{i}.mp4", moving_pattern(12, 56, 84, seed=10 + i))
        twin = folder / f"clip{i}_twin.mp4"
        shutil.copy(clip, twin)
        files += [clip, twin]
    return files


@pytest.fixture(scope="module")
def backend(tiny_model, tmp_path_factory):
    home = tmp_path_factory.mktemp("ordering-backend")
    base, adapter = tiny_model
    running = start_backend(base=base, adapter=adapter, cache_dir=home / "cache", log=home / "backend.log",
                            extra_env=ORDERING_ENV)
    running.cache_dir = home / "cache"  # type: ignore[attr-defined]
    yield running
    stop_process(running.process)


@pytest.fixture(scope="module")
def project(label_studio, backend, clips):
    project_id = label_studio.create_project("mdsvqa queue", LABEL_CONFIG)
    ids = label_studio.upload(project_id, clips)
    twin = {ids[i]: ids[i + 1] for i in range(0, len(ids), 2)} | {ids[i + 1]: ids[i] for i in range(0, len(ids), 2)}
    label_studio.api("POST", "/api/ml", json={"url": backend.url, "project": project_id, "title": "MDS-VQA"})
    version = backend.health()["model_version"]
    wait_for(lambda: label_studio.project(project_id)["model_version"] == version, timeout=60,
             what="project model_version == backend version")
    label_studio.dm_action(project_id, "retrieve_tasks_predictions")
    return {"id": project_id, "tasks": ids, "twin": twin, "version": version}


# -- what Label Studio and the backend hold, and the order they imply ------------------------------

def priority_view(label_studio, project_id) -> dict | None:
    views = label_studio.api("GET", "/api/dm/views", params={"project": project_id})
    mine = [v for v in views if v["data"].get("title") == VIEW_TITLE]
    return mine[0] if mine else None


def state(label_studio, project_id, version) -> dict:
    """Per task: labeled?, its current-version predictions (difficulty, score)."""
    tasks = {}
    for task in label_studio.tasks(project_id):
        mine = [p for p in task["predictions"] if p["model_version"] == version]
        tasks[task["id"]] = {"labeled": task["total_annotations"] > 0, "video": task["data"]["video"],
                             "predictions": [(p["result"][0]["value"]["number"], p["score"]) for p in mine]}
    return tasks


def features_of(backend, label_studio, tasks) -> dict[int, np.ndarray] | None:
    """Every task's features from the backend's store; None while some are still missing."""
    (store_dir,) = list((backend.cache_dir / "features").iterdir())
    store = FeatureStore(store_dir, None)  # read-only: whichever extractor its files record
    connection = Connection(label_studio.url, label_studio.token)
    loaded = store.load(media_key(t["video"], connection) for t in tasks.values())
    if loaded.problems:
        return None
    return {task_id: loaded.frames[media_key(t["video"], connection)] for task_id, t in tasks.items()}


def stored_difficulty(backend, label_studio, tasks, version) -> dict[int, float]:
    """What the backend scored, from its own store (read-only), by task."""
    import sqlite3

    connection = Connection(label_studio.url, label_studio.token)
    db = sqlite3.connect(f"file:{backend.cache_dir / 'backend.sqlite'}?mode=ro", uri=True, timeout=10)
    try:
        return {task_id: db.execute("SELECT difficulty FROM media_scores WHERE model_version=? AND media_key=?",
                                    (version, media_key(t["video"], connection))).fetchone()[0]
                for task_id, t in tasks.items()}
    finally:
        db.close()


def expected_order(tasks: dict, frames: dict, budget: int, lam: float) -> list[int]:
    from selection import reference_select

    difficulty = {t: info["predictions"][0][0] for t, info in tasks.items() if not info["labeled"]}
    candidates = sorted(difficulty)
    seeds = sorted(t for t, info in tasks.items() if info["labeled"])
    result = reference_select([difficulty[t] for t in candidates] + [np.nan] * len(seeds),
                              [frames[t] for t in candidates + seeds], budget, lam,
                              list(range(len(candidates), len(candidates) + len(seeds))))
    picks = [candidates[i] for i in result.picks]
    rest = sorted(set(candidates) - set(picks), key=lambda t: rest_sort_key(difficulty[t], t))
    return picks + rest


def view_order(label_studio, project_id, view_id) -> list[int]:
    return [t["id"] for t in label_studio.tasks(project_id, view=view_id) if t["total_annotations"] == 0]


def next_task(label_studio, project_id, view_id) -> dict:
    return label_studio.api("GET", f"/api/projects/{project_id}/next", params={"view": view_id})


def ordered(label_studio, backend, project, lam=LAMBDA, budget=1):
    """Once the backend's pass is visible: the state, the expected order and the view; else None."""
    view = priority_view(label_studio, project["id"])
    tasks = state(label_studio, project["id"], project["version"])
    if view is None or any(len(t["predictions"]) != 1 for t in tasks.values()):
        return None
    frames = features_of(backend, label_studio, tasks)
    if frames is None:
        return None
    expected = expected_order(tasks, frames, budget, lam)
    if view_order(label_studio, project["id"], view["id"]) != expected:
        return None
    scores = [tasks[t]["predictions"][0][1] for t in expected]
    if not all(a > b for a, b in itertools.pairwise(scores)) or scores[0] != 1.0:
        return None
    return {"tasks": tasks, "expected": expected, "view": view}


# -- tests -----------------------------------------------------------------------------------------

def test_scored_project_is_queued_in_the_computed_order(label_studio, backend, project):
    found = wait_for(lambda: ordered(label_studio, backend, project), timeout=90,
                     what="view sorted by the computed order")
    view, expected, tasks = found["view"], found["expected"], found["tasks"]
    assert view["data"]["ordering"] == VIEW_ORDERING
    assert sorted(expected) == sorted(project["tasks"]) and len(expected) == 6
    scored = stored_difficulty(backend, label_studio, tasks, project["version"])
    for task_id, info in tasks.items():
        difficulty, score = info["predictions"][0]
        assert difficulty == round(scored[task_id], 2), "the Number control still holds the difficulty"
        assert 0 < score <= 1
    assert tasks[expected[0]]["predictions"][0][0] == max(t["predictions"][0][0] for t in tasks.values())
    assert label_studio.project(project["id"])["sampling"] == "Sequential sampling"
    served = next_task(label_studio, project["id"], view["id"])
    assert served["id"] == expected[0], (served["id"], expected)
    project["first"], project["view"] = expected, view["id"]


def test_a_label_seeds_the_selection_and_the_queue_follows(label_studio, backend, project):
    first = project.get("first")
    if first is None:
        pytest.skip("needs the first ordering")
    labeled = first[0]
    label_studio.api("POST", f"/api/tasks/{labeled}/annotations", json={"result": [
        {"from_name": "mos", "to_name": "video", "type": "number", "value": {"number": 3.5}}]})

    def reordered():
        found = ordered(label_studio, backend, project)
        return found if found and found["tasks"][labeled]["predictions"][0][1] == 0.0 else None

    found = wait_for(reordered, timeout=60, what="queue re-ordered after the label")
    expected = found["expected"]
    assert labeled not in expected
    twin = project["twin"][labeled]
    assert expected[0] != twin, "the labeled video's twin (distance 0) must not be picked next"
    assert first[1] == twin, "a difficulty-only order (the old queue minus the label) would serve the twin next"
    served = next_task(label_studio, project["id"], project["view"])
    assert served["id"] == expected[0], (served["id"], expected)


def test_prioritize_command(label_studio, backend, project, tiny_model, tmp_path):
    base, adapter = tiny_model
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
           "MDSVQA_CACHE_DIR": str(backend.cache_dir), "MDSVQA_OFFLINE": "true", "HF_HUB_OFFLINE": "1",
           "MDSVQA_FEATURES_EXTRACTOR": "vision"}  # the backend's (tests/labelstudio_support.py)
    command = [sys.executable, "-m", "ml_backend.cli", "prioritize", "--project", str(project["id"]),
               "--base", str(base), "--adapter", str(adapter), "--budget", "3", "--lambda", "0.25"]
    wait_for(lambda: ordered(label_studio, backend, project), timeout=60, what="backend idle with its own order")
    run = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "greedy picks:                 3 (budget 3)" in run.stdout, run.stdout
    assert label_studio.token not in run.stdout + run.stderr
    assert "features computed now" not in run.stdout, "the command found the features the backend kept"
    found = ordered(label_studio, backend, project, lam=0.25, budget=3)
    assert found is not None, "the view follows the command's order (K=3, lambda 0.25)"
    again = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "prediction scores written:    0" in again.stdout, again.stdout
    assert "(unchanged)" in again.stdout
    total = sum(len(t["predictions"]) for t in state(label_studio, project["id"], project["version"]).values())
    assert total == 6, "scores are patched, never added as new predictions"
