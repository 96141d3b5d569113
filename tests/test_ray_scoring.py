"""The scorer pool on Ray (ml_backend/scale): same inputs, same JSON, same exit codes as one process.

The end-to-end tests start a real local Ray cluster with 2 CPUs (`--ray local:2`, ~10-20 s)
and score with the tiny model; the cached video is shown skipped by the driver's log of what
it dispatched, never by timing.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest

from ml_backend.cli import main
from tests.media import REPO, make_bad_videos

pytest.importorskip("ray.data", reason="the ray extra: pip install -e '.[ray]'")

LABEL_CONFIG = (REPO / "label_config.xml").read_text()


# -- sizing and settings (no cluster) -------------------------------------------------------------

def test_one_actor_per_gpu_or_cpu_actors_beside_the_decoders(settings_factory):
    from ml_backend.scale.ray_pool import PoolSizing, pool_sizing

    auto = settings_factory()
    assert pool_sizing(auto, {"CPU": 64, "GPU": 8}) == PoolSizing(8, 1, 1)
    assert pool_sizing(auto, {"CPU": 16}) == PoolSizing(1, 8, 0)
    assert pool_sizing(auto, {"CPU": 2}) == PoolSizing(1, 1, 0)
    assert pool_sizing(auto, {"CPU": 32}, actors=2) == PoolSizing(2, 8, 0)
    assert pool_sizing(auto, {"CPU": 32, "GPU": 4}, actors=2, actor_cpus=4) == PoolSizing(2, 4, 1)
    assert pool_sizing(settings_factory(device="cpu"), {"CPU": 16, "GPU": 2}) == PoolSizing(1, 8, 0)
    assert pool_sizing(settings_factory(device="cuda"), {"CPU": 4}) == PoolSizing(1, 1, 1)  # autoscaler's GPUs


def test_workers_get_no_credentials(settings_factory):
    from ml_backend.scale.ray_pool import worker_settings

    settings = settings_factory(label_studio_url="http://ls:8080", label_studio_api_key="secret-token",
                                basic_auth_user="u", basic_auth_password="p", ray_address="local")
    shipped = worker_settings(settings)
    assert shipped.label_studio_api_key is None and shipped.basic_auth_password is None
    assert shipped.label_studio_url is None and shipped.basic_auth_user is None
    assert shipped.video == settings.video and shipped.base == settings.base


def test_local_address_needs_a_cpu_count():
    from ml_backend.errors import ConfigurationError
    from ml_backend.scale.ray_pool import connect

    with pytest.raises(ConfigurationError, match="local:N"):
        connect("local:many")


def test_help_does_not_import_ray():
    code = ("import sys; from ml_backend.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('ray', 'torch', 'ml_backend.scale.ray_pool') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_videos_a_dead_worker_took_are_retried_alone_then_reported(settings_factory):
    """Ray Data drops an errored block (max_errored_blocks): the driver notices the missing rows."""
    from ml_backend.scale.ray_pool import PoolItem, PoolSizing, RayPool, WorkerFacts

    pool = RayPool(settings_factory(batch_size=4), PoolSizing(1, 1, 0), WorkerFacts({}, "v1", True), owns_ray=False)
    rounds: list[tuple[list[int], int]] = []
    lost_for_good = {3}

    class Rows:
        def __init__(self, rows):
            self.rows = rows

        def iter_rows(self):
            return iter(self.rows)

    def dataset(items, batch_size):
        rounds.append(([item.index for item in items], batch_size))
        lost = {1, 3} if len(rounds) == 1 else lost_for_good
        return Rows([{"index": item.index, "difficulty": 2.0, "raw_text": "<answer>2.0</answer>", "error": None,
                      "final": True, "key": f"k{item.index}", "version": "v1"}
                     for item in items if item.index not in lost])

    pool._dataset = dataset
    items = [PoolItem(i, f"/v/{i}.mp4", f"/v/{i}.mp4", digest=f"d{i}") for i in range(5)]
    results = {r.index: r for r in pool.run(items)}
    assert rounds == [([0, 1, 2, 3, 4], 4), ([1, 3], 1)]
    assert sorted(results) == [0, 1, 2, 3, 4]
    assert results[1].ok and results[1].key == "k1"
    assert not results[3].ok and not results[3].final and "/v/3.mp4: no result" in results[3].error


# -- the same inputs on every engine (no cluster: the two halves called directly) ------------------

def test_worker_decode_and_actor_patches_equal_prepare_video(settings_factory, shared_videos, one_torch_thread):
    """decode_row (a CPU task, one torch thread as Ray gives it) + ScoreBatches.prepare == prepare_video."""
    import torch

    from ml_backend.scale.ray_pool import ScoreBatches, decode_row
    from ml_backend.scoring.scorer import prepare_video

    settings = settings_factory()
    actor = ScoreBatches(settings)
    loaded = actor.scorer.loaded
    for index, path in enumerate(sorted(shared_videos.glob("*.mp4"))):
        row = decode_row({"index": index, "source": str(path), "name": str(path), "task_id": None, "digest": "d"},
                         video=settings.video, media=None)
        assert row["error"] == "", row["error"]
        on_ray = actor.prepare(str(path), row["frames"], row["meta"])
        torch.set_num_threads(2)
        single = prepare_video(path, settings, loaded)
        torch.set_num_threads(1)
        assert np.array_equal(on_ray.patches, single.patches), path.name
        assert on_ray.patches.dtype == single.patches.dtype
        assert np.array_equal(on_ray.grid_thw, single.grid_thw)
        assert on_ray.seconds_per_grid == single.seconds_per_grid


def test_worker_decode_errors_read_as_the_single_process(settings_factory, tmp_path):
    from ml_backend.scale.ray_pool import decode_row
    from ml_backend.scoring import DifficultyScorer

    settings = settings_factory(use_cache=False)
    bad = make_bad_videos(tmp_path / "bad")
    single = {r.name: r.error for r in DifficultyScorer.from_settings(settings).score_paths(bad.values())}
    for index, path in enumerate(bad.values()):
        row = decode_row({"index": index, "source": str(path), "name": str(path), "task_id": None, "digest": None},
                         video=settings.video, media=None)
        assert row["error"] == single[path.name]
        assert row["final"] is True


# -- end to end on a local cluster ----------------------------------------------------------------

@pytest.mark.slow
def test_score_on_ray_equals_the_plain_run(tiny_model, shared_videos, tmp_path, monkeypatch, caplog):
    from ml_backend.scoring import DifficultyScorer
    from ml_backend.settings import Settings

    base, adapter = tiny_model
    bad = make_bad_videos(tmp_path / "bad")
    inputs = [shared_videos, bad["truncated_data"], bad["text"], tmp_path / "missing.mp4"]

    def score(paths, out, cache, *extra):
        monkeypatch.setenv("MDSVQA_CACHE_DIR", str(cache))
        code = main(["score", *map(str, paths), "--base", str(base), "--adapter", str(adapter),
                     "--out", str(tmp_path / out), "--no-progress", *extra])
        return code, json.loads((tmp_path / out).read_text())

    plain_code, plain = score(inputs, "plain.json", tmp_path / "plain-cache")
    cached = shared_videos / "bikes.mp4"
    assert score([cached], "one.json", tmp_path / "ray-cache")[0] == 0  # the Ray run finds this one cached

    caplog.set_level(logging.DEBUG, logger="ml_backend.scale.ray_pool")
    ray_code, on_ray = score(inputs, "ray.json", tmp_path / "ray-cache", "--ray", "local:2")

    assert plain_code == ray_code == 1  # a video failed: the same exit status
    assert on_ray == plain  # same names, scores, errors, warnings
    assert on_ray[bad["truncated_data"].name]["score"] is None and on_ray[bad["text"].name]["error"]
    messages = [record.getMessage() for record in caplog.records]
    dispatched = sorted(m.removeprefix("ray: dispatching ") for m in messages if m.startswith("ray: dispatching "))
    expected = sorted(str(p) for p in [*shared_videos.glob("*.mp4"), bad["truncated_data"], bad["text"]]
                      if p != cached)
    assert dispatched == expected, "the cached video (and the missing file) never left the driver"
    assert any("1 video(s) found in the score cache on the driver" in m for m in messages)

    # the driver stored the actors' scores under the keys a single process looks up
    single = DifficultyScorer.from_settings(Settings(base=str(base), adapter=str(adapter),
                                                     cache_dir=tmp_path / "ray-cache"))
    for path in shared_videos.glob("*.mp4"):
        hit = single.cached_result(path)
        assert hit is not None and round(hit.difficulty, 4) == plain[path.name]["score"], path.name


@pytest.mark.slow
@pytest.mark.labelstudio
def test_score_project_on_ray_equals_the_plain_run(label_studio, tiny_model, shared_videos, tmp_path):
    from tests.test_backend_e2e import current_predictions

    base, adapter = tiny_model
    truncated = tmp_path / "truncated.mp4"
    data = (shared_videos / "bikes.mp4").read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    project_id = label_studio.create_project("mdsvqa score-project --ray", LABEL_CONFIG)
    tasks = label_studio.upload(project_id, [shared_videos / "bikes.mp4", shared_videos / "carphone_pristine.mp4",
                                             truncated])

    def run(cache: str, *extra: str) -> subprocess.CompletedProcess:
        env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
               "LABEL_STUDIO_URL": label_studio.url, "LABEL_STUDIO_API_KEY": label_studio.token,
               "MDSVQA_CACHE_DIR": str(tmp_path / cache), "MDSVQA_OFFLINE": "true", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "ml_backend.cli", "-v", "score-project", "--project", str(project_id),
                   "--base", str(base), "--adapter", str(adapter), "--no-progress", *extra]
        return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=400)

    def numbers(version: str) -> dict[int, float]:
        return {task: found[0]["result"][0]["value"]["number"]
                for task, found in current_predictions(label_studio, project_id, version).items()}

    plain = run("plain-cache")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    version = label_studio.project(project_id)["model_version"]
    expected = numbers(version)
    assert set(expected) == set(tasks[:2])

    # The Ray run's backend store already knows one task's video (as after an earlier run): the driver
    # answers that task from it and dispatches the other two.
    from ml_backend.labelstudio.client import Connection
    from ml_backend.labelstudio.media import media_key
    from ml_backend.server.store import BackendStore

    connection = Connection(label_studio.url, label_studio.token)
    refs = {task["id"]: task["data"]["video"] for task in label_studio.tasks(project_id)}
    known = media_key(refs[tasks[0]], connection)
    plain_store = BackendStore(tmp_path / "plain-cache" / "backend.sqlite")
    ray_store = BackendStore(tmp_path / "ray-cache" / "backend.sqlite")
    outcome = plain_store.outcome(version, known)
    assert outcome is not None and outcome.ok
    ray_store.save_outcome(version, known, outcome)
    plain_store.close()
    ray_store.close()

    label_studio.dm_action(project_id, "delete_tasks_predictions")
    on_ray = run("ray-cache", "--ray", "local:2")
    assert on_ray.returncode == plain.returncode == 0, on_ray.stdout + on_ray.stderr
    assert on_ray.stdout == plain.stdout  # the same summary: 3 lacking, 2 posted, 1 failed video
    assert "videos that failed:         1" in on_ray.stdout
    assert numbers(version) == expected
    assert label_studio.token not in on_ray.stdout + on_ray.stderr
    assert "1 task(s) answered from the backend store on the driver (not dispatched), 2 video(s) dispatched" \
        in on_ray.stderr
