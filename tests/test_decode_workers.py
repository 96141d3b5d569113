"""Decoding in worker processes: the pool itself, and the scorer's results against its own threads.

The pool (``ml_backend.procpool``): arrays back through both transports, errors as the job's,
a killed worker fails only its job and is replaced, nothing outlives ``close`` or the parent.
The scorer (``ml_backend.scoring.prepare``): the same patches, grids, scores, errors and frame
features bit for bit as the in-process path, on the shared videos and a generated clip with
B-frames and several GOPs.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ml_backend.prefetch import prefetched_batches
from ml_backend.procpool import (
    PoolClosedError,
    ProcessPool,
    RemoteError,
    WorkerDiedError,
    memfd_available,
)
from tests import decode_worker_jobs as jobs
from tests.media import REPO, SHARED_VIDEO_NAMES, encode_video, moving_pattern, small_clip_model

TRANSPORTS = ["pipe", *(["memfd"] if memfd_available() else [])]


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # a zombie still answers kill(0): it has exited but was not reaped (never ours: we wait for ours)
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except OSError:
        return True


def _wait_gone(pids, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(_gone(pid) for pid in pids):
            return True
        time.sleep(0.1)
    return False


# -- prefetch ------------------------------------------------------------------------------------

def test_prefetch_bounds_what_is_in_flight_and_cancels_on_early_stop():
    started: list[int] = []

    class Recorder:
        def __init__(self):
            self.futures: list[Future] = []

        def submit(self, fn, item, /):
            started.append(item)
            future: Future = Future()
            self.futures.append(future)
            return future

    pool = Recorder()
    batches = prefetched_batches(list(range(10)), str, 2, pool, ahead=5)
    first = next(batches)
    assert [item for item, _ in first] == [0, 1] and started == list(range(7)), "batch + 5 ahead"
    second = next(batches)
    assert [item for item, _ in second] == [2, 3] and started == list(range(9))
    batches.close()  # the caller stops: what was submitted and not yielded is cancelled
    assert [f.cancelled() for f in pool.futures] == [False] * 4 + [True] * 5

    started.clear()
    with ThreadPoolExecutor(1) as executor:  # the default: one batch ahead, as before
        seen = [[item for item, future in batch if future.result() == str(item)]
                for batch in prefetched_batches(list(range(5)), str, 2, executor)]
    assert seen == [[0, 1], [2, 3], [4]]


# -- the pool ------------------------------------------------------------------------------------

@pytest.mark.parametrize("transport", TRANSPORTS)
def test_arrays_come_back_whole_and_writable(transport):
    with ProcessPool(1, transport=transport) as pool:
        result = pool.submit(jobs.arrays, 3_000_000, 7).result(timeout=60)
        expected = jobs.arrays(3_000_000, 7)
        assert result["pid"] != os.getpid() and result["pid"] in pool.pids()
        for key in ("big", "small", "grid", "strided"):
            np.testing.assert_array_equal(result[key], expected[key])
            assert result[key].dtype == expected[key].dtype
        assert result["big"].flags.writeable, "torch.from_numpy takes it without a copy or a warning"
        result["big"][0] = 1.0


def test_a_jobs_exception_comes_back_with_its_remote_traceback():
    with ProcessPool(1) as pool:
        with pytest.raises(ValueError, match="bad input") as error:
            pool.submit(jobs.fail, "bad input").result(timeout=60)
        assert "in worker process" in str(error.value.__cause__) and "def fail" not in str(error.value.__cause__)
        assert "raise ValueError(message)" in str(error.value.__cause__)
        with pytest.raises(RemoteError, match="Unpicklable: no way back"):
            pool.submit(jobs.fail_unpicklable).result(timeout=60)
        assert pool.submit(jobs.sleep, 0).result(timeout=60) in pool.pids(), "the worker goes on"


def test_a_killed_worker_fails_only_its_job_and_is_replaced():
    with ProcessPool(2, start=2) as pool:
        slow = pool.submit(jobs.sleep, 1.0, label="slow.mp4")
        doomed = pool.submit(jobs.die, label="doomed.mp4")
        with pytest.raises(WorkerDiedError) as error:
            doomed.result(timeout=60)
        message = str(error.value)
        assert message.startswith("doomed.mp4: ") and "SIGKILL" in message and "OOM killer" in message
        assert slow.result(timeout=60) > 0, "the other worker's job is untouched"
        after = [pool.submit(jobs.sleep, 0.2) for _ in range(4)]
        assert all(future.result(timeout=120) > 0 for future in after)
        assert pool.started == 3, "one replacement, started for the next job"


def test_close_stops_busy_workers_and_fails_what_did_not_finish():
    pool = ProcessPool(2, start=2)
    busy = [pool.submit(jobs.sleep, 60) for _ in range(2)]
    queued = pool.submit(jobs.sleep, 0)
    deadline = time.monotonic() + 60
    while len(pool.pids()) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # both jobs running
    pids = pool.pids()
    started = time.monotonic()
    pool.close(grace=2.0)
    assert time.monotonic() - started < 15
    for future in [*busy, queued]:
        with pytest.raises(PoolClosedError):
            future.result(timeout=1)
    assert len(pids) == 2 and all(_gone(pid) for pid in pids), "no worker outlives close()"
    with pytest.raises(PoolClosedError):
        pool.submit(jobs.sleep, 0)


def test_workers_die_with_their_parent(tmp_path):
    """kill -9 of the parent: PR_SET_PDEATHSIG takes its workers too, even in the middle of a job."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1])\n"
            "from ml_backend.procpool import ProcessPool\n"
            "from tests.decode_worker_jobs import sleep\n"
            "pool = ProcessPool(2, start=2)\n"
            "futures = [pool.submit(sleep, 600) for _ in range(2)]\n"
            "while len(pool.pids()) < 2: time.sleep(0.05)\n"
            "print(*pool.pids(), flush=True)\n"
            "time.sleep(600)\n")
    parent = subprocess.Popen([sys.executable, "-c", code, str(REPO)], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline() if parent.stdout else ""
        pids = [int(pid) for pid in line.split()]
        assert len(pids) == 2 and not any(_gone(pid) for pid in pids)
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    assert _wait_gone(pids), "orphaned workers"


def test_the_pool_grows_with_demand_and_idle_workers_stop():
    with ProcessPool(4, idle_s=0.5) as pool:
        assert pool.submit(jobs.sleep, 0).result(timeout=60) > 0
        assert pool.started == 1, "one job, one worker (not one per core)"
        deadline = time.monotonic() + 20
        while pool.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert pool.pids() == [], "an idle worker stops"
        assert pool.submit(jobs.sleep, 0).result(timeout=60) > 0, "and a new one starts for the next job"


# -- the scorer: worker processes against its own threads ---------------------------------------

@pytest.fixture(scope="module")
def generated_clip(tmp_path_factory) -> Path:
    """960x540, 3 s at 25 fps with B-frames and a keyframe every 20 frames (sequential reads cross GOPs)."""
    path = tmp_path_factory.mktemp("clip") / "generated_540p.mp4"
    return encode_video(path, moving_pattern(75, 540, 960, seed=3),
                        options={"preset": "veryfast", "bf": "3", "g": "20", "keyint_min": "20"})


@pytest.fixture(scope="module")
def videos(shared_videos, generated_clip, tmp_path_factory) -> list[Path]:
    bad = tmp_path_factory.mktemp("bad")
    (bad / "not-a-video.mp4").write_bytes(b"this is text, not a video\n" * 100)
    (bad / "empty.mp4").write_bytes(b"")
    return [*(shared_videos / name for name in SHARED_VIDEO_NAMES), generated_clip, bad / "not-a-video.mp4",
            bad / "empty.mp4", bad / "missing.mp4"]


def _scorer(settings_factory, workers: int, **overrides):
    from ml_backend.model.loading import resolve_model
    from ml_backend.scoring import DifficultyScorer

    settings = settings_factory(use_cache=False, device="cpu", decode_workers=workers, **overrides)
    return DifficultyScorer(resolve_model(settings), settings, None)


def _results(scorer, paths) -> dict[str, tuple]:
    try:
        return {r.name: (r.difficulty, r.raw_text, r.error) for r in scorer.score_paths(paths)}
    finally:
        pool = scorer._processes.pool if scorer._processes is not None else None
        pids = pool.pids() if pool is not None else []
        scorer.close()
        assert all(_gone(pid) for pid in pids), "the last scorer's close stops its workers"


def test_worker_inputs_are_the_in_process_inputs_bit_for_bit(settings_factory, videos):
    """Same patches, grid and RoPE spacing from a worker as from prepare_video in this process."""
    from ml_backend.model.loading import shared_model
    from ml_backend.scoring.prepare import ProcessDecoding
    from ml_backend.scoring.scorer import prepare_video

    settings = settings_factory(use_cache=False, device="cpu")
    loaded = shared_model(settings)
    decoding = ProcessDecoding(2, settings)
    try:
        job = decoding.job(settings, loaded, frame_features=False)
        submitter = decoding.submitter(len(videos))
        futures = {path: submitter.submit(job, (path, "key")) for path in videos[:5]}
        for path, future in futures.items():
            remote = future.result(timeout=300).video
            local = prepare_video(path, settings, loaded)
            assert remote.patches.dtype == local.patches.dtype == np.float32
            assert np.array_equal(remote.patches, local.patches), path.name
            assert np.array_equal(remote.grid_thw, local.grid_thw) and remote.grid_thw.dtype == local.grid_thw.dtype
            assert remote.seconds_per_grid == local.seconds_per_grid
    finally:
        decoding.close()


def test_scores_and_errors_are_the_same_as_in_process(settings_factory, videos):
    threads = _results(_scorer(settings_factory, 0), videos)
    processes = _results(_scorer(settings_factory, 2), videos)
    assert processes == threads
    assert sum(score is not None for score, _text, _error in threads.values()) == 5
    assert "not a decodable video" in threads["not-a-video.mp4"][2] and "empty file" in threads["empty.mp4"][2]


def test_a_video_over_the_token_budget_is_refused_the_same_way(settings_factory, videos):
    threads = _results(_scorer(settings_factory, 0, max_visual_tokens=3000), videos[:2])
    processes = _results(_scorer(settings_factory, 2, max_visual_tokens=3000), videos[:2])
    assert processes == threads
    assert "over the budget of 3,000 (MDSVQA_MAX_VISUAL_TOKENS)" in threads["bigbuckbunny.mp4"][2]
    assert threads["bikes.mp4"][2] is None


def test_a_worker_killed_on_one_video_fails_only_that_video(settings_factory, videos, tmp_path, monkeypatch):
    from ml_backend.scoring import prepare

    doomed = tmp_path / "kill-me.mp4"
    doomed.write_bytes(videos[2].read_bytes())
    paths = [videos[1], doomed, videos[2], videos[3]]
    monkeypatch.setattr(prepare, "prepare_in_worker", jobs.kill_on_marker)
    processes = _results(_scorer(settings_factory, 2), paths)
    monkeypatch.undo()
    threads = _results(_scorer(settings_factory, 0), paths)
    error = processes.pop("kill-me.mp4")[2]
    assert error.startswith(f"{doomed}: the worker process preparing it died (killed by SIGKILL")
    assert threads.pop("kill-me.mp4")[2] is None
    assert processes == threads, "its batch neighbours and the videos after it are scored"


@pytest.fixture(scope="module")
def small_clip_weights(tmp_path_factory):
    """A small ResNet CLIP config and fixed weights: each worker loads the same encoder."""
    import open_clip
    import torch

    folder = tmp_path_factory.mktemp("small-clip")
    config = small_clip_model(folder, "mdsvqa-worker-rn")
    torch.manual_seed(0)
    weights = folder / "weights.bin"
    torch.save(open_clip.create_model("mdsvqa-worker-rn", pretrained=None).state_dict(), weights)
    return config, weights


def test_frame_features_from_workers_equal_the_in_process_ones(settings_factory, small_clip_weights, videos,
                                                               tmp_path, monkeypatch):
    import torch

    from ml_backend.scoring import prepare
    from ml_backend.settings import FeatureSettings

    config, weights = small_clip_weights
    clips = [encode_video(tmp_path / f"c{i}.mp4", moving_pattern(5 + i, 48, 64, seed=i)) for i in range(2)]
    features = FeatureSettings(clip_model="mdsvqa-worker-rn", clip_pretrained="test-weights",
                               clip_checkpoint=weights, batch_size=4)
    monkeypatch.setattr(prepare, "prepare_in_worker", functools.partial(jobs.with_model_config, str(config)))
    out = {}
    threads = torch.get_num_threads()
    for workers in (0, 2):
        scorer = _scorer(settings_factory, workers, features=features)
        scorer.with_features = True
        # a worker runs one torch thread; at another count the encoder sums in another order (last bits)
        torch.set_num_threads(1)
        try:
            out[workers] = {r.name: (r.difficulty, r.features) for r in scorer.score_paths([*clips, videos[1]])}
        finally:
            torch.set_num_threads(threads)
            scorer.close()
    for name, (score, frame_features) in out[0].items():
        other_score, other_features = out[2][name]
        assert score == other_score and frame_features is not None
        assert frame_features.shape == (len(frame_features), 16) and frame_features.dtype == np.float32
        assert np.array_equal(frame_features, other_features), name
    assert len(out[0]["c1.mp4"][1]) == 6 and len(out[0]["bikes.mp4"][1]) == 250, "one row per decoded frame"


def test_the_default_is_one_worker_process_per_core(settings_factory, monkeypatch):
    from ml_backend.procpool import available_cpus
    from ml_backend.scoring import prepare

    monkeypatch.delenv("MDSVQA_DECODE_WORKERS")
    settings = settings_factory()
    assert settings.decode_workers is None
    monkeypatch.setattr(prepare, "available_host_memory", lambda: 64 * 2**30)
    assert prepare.decode_workers(settings) == available_cpus()
    monkeypatch.setattr(prepare, "available_host_memory", lambda: 8 * 2**30)  # 1 x 3 GiB in half: still 2
    assert prepare.decode_workers(settings) == min(2, available_cpus())
    monkeypatch.setenv("MDSVQA_DECODE_WORKERS", "5")
    assert prepare.decode_workers(settings_factory()) == 5
    scorer = _scorer(settings_factory, 1)
    assert scorer._processes is None, "1: the in-process path"
    scorer.close()


def test_mdsvqa_score_by_default_decodes_in_worker_processes(tiny_model, shared_videos, tmp_path, monkeypatch):
    """The CLI with MDSVQA_DECODE_WORKERS unset: worker processes, the same JSON as with threads."""
    base, adapter = tiny_model
    outputs = {}
    for workers in ("", "0"):
        env = {**os.environ, "MDSVQA_CACHE_DIR": str(tmp_path / f"cache{workers}"), "MDSVQA_DECODE_WORKERS": workers}
        if not workers:
            del env["MDSVQA_DECODE_WORKERS"]
        out = tmp_path / f"scores{workers}.json"
        code = ("import sys, logging; logging.basicConfig(level=logging.INFO); from ml_backend.cli import main; "
                "from ml_backend.procpool import ProcessPool; started = []; grow = ProcessPool.grow\n"
                "def spy(self, target, **kw): started.append(target); return grow(self, target, **kw)\n"
                "ProcessPool.grow = spy\n"
                "code = main(sys.argv[1:]); print('POOL', bool(started)); sys.exit(code)")
        proc = subprocess.run([sys.executable, "-c", code, "score", str(shared_videos), "--base", str(base),
                               "--adapter", str(adapter), "--out", str(out), "--no-progress", "--device", "cpu"],
                              cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert f"POOL {not workers}" in proc.stdout
        outputs[workers] = json.loads(out.read_text())
    assert outputs[""] == outputs["0"]
