"""Frames streamed from a .npy file: the same selection as in memory, bit for bit, within a
bounded working set; the frames file itself; the working-set planning."""

from __future__ import annotations

import itertools
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from selection.errors import FrameError, SelectionError, WorkingSetError
from selection.framefile import FrameFile, FrameFileWriter, write_frame_file
from selection.greedy import select_greedy
from selection.kernel import chunk_plan
from selection.store import STAGE_ROWS, WorkingSet, plan_working_set, window_plan
from tests.test_selection_greedy import pools

SMALL_CHUNKS = {"max_row_frames": 8, "max_col_frames": 4, "scan_frames": 16}


def packed(frames: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.concatenate([[0], np.cumsum([len(f) for f in frames])]).astype(np.int64)
    return np.concatenate(frames), offsets


def smallest_working_set(frames: list[np.ndarray], budget: int, initial, *, dim_bytes: int = 4, sq_bytes: int = 4,
                         max_row_frames: int = 8, scan_frames: int = 16) -> int:
    """The least budget a run accepts: window + seed + the longest possible picks, no active copy."""
    lengths = np.array([len(f) for f in frames])
    candidates = np.setdiff1d(np.arange(len(frames)), np.asarray(initial, dtype=np.int64))
    n_picks = min(budget, len(candidates))
    picks = int(np.sort(lengths[candidates])[len(candidates) - n_picks :].sum()) if n_picks else 0
    window = max(scan_frames, max_row_frames + int(lengths.max()))
    row = frames[0].shape[1] * dim_bytes + sq_bytes
    return (window + int(lengths[list(initial)].sum()) + picks) * row


def assert_identical(streamed, in_memory):
    """Same picks and the same numbers, not merely close ones."""
    np.testing.assert_array_equal(streamed.picks, in_memory.picks)
    np.testing.assert_array_equal(streamed.objectives, in_memory.objectives)
    np.testing.assert_array_equal(streamed.mean_distances, in_memory.mean_distances)
    np.testing.assert_array_equal(streamed.difficulties, in_memory.difficulties)
    assert streamed.distance_evaluations == in_memory.distance_evaluations  # the same decisions, too
    assert streamed.stats["mode"] == in_memory.stats["mode"]


@settings(max_examples=80, deadline=None)
@given(pools(max_videos=40), st.booleans(), st.sampled_from(["smallest", "tight", "roomy"]),
       st.sampled_from([(8, 4, 16), (1, 1, 3), (4096, 2048, 16384)]))
def test_streamed_equals_in_memory(pool, prune, room, chunks):
    max_rows, max_cols, scan = chunks
    frames, offsets = packed(pool["frames"])
    options = {"max_row_frames": max_rows, "max_col_frames": max_cols, "scan_frames": scan, "prune": prune}
    least = smallest_working_set(pool["frames"], pool["budget"], pool["initial"], max_row_frames=max_rows,
                                 scan_frames=scan)
    working_set = {"smallest": least, "tight": least + frames.nbytes // 3, "roomy": 4 * frames.nbytes + least}[room]
    in_memory = select_greedy(pool["difficulty"], frames, pool["budget"], pool["lam"], pool["initial"],
                              offsets=offsets, **options)
    with tempfile.TemporaryDirectory() as folder:
        path = write_frame_file(Path(folder) / "frames.npy", frames)
        streamed = select_greedy(pool["difficulty"], path, pool["budget"], pool["lam"], pool["initial"],
                                 offsets=offsets, working_set_bytes=working_set, **options)
    assert_identical(streamed, in_memory)
    assert streamed.stats["store"] == "streamed" and in_memory.stats["store"] == "memory"
    assert streamed.stats["working_set_peak_bytes"] <= working_set


def clustered_pool(n: int, dim: int, seed: int, frames_per_video=(3, 9)):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim))
    frames = []
    for _ in range(n):
        count = int(rng.integers(*frames_per_video))
        video = centres[rng.integers(6)] + 0.3 * rng.standard_normal(dim) + 0.1 * rng.standard_normal((count, dim))
        frames.append((video / np.linalg.norm(video, axis=1, keepdims=True)).astype(np.float32))
    return np.round(rng.uniform(1, 5, n), 2), frames


@pytest.mark.parametrize("difficulty_kind", ["uniform", "constant"])  # constant: every video in reach, full mode
def test_streaming_paths_are_exercised_and_identical(tmp_path, difficulty_kind):
    """Not left to chance: the active copy outgrows its share and is streamed (pruned) or the whole
    file is read at every step (full mode), and the result is still the in-memory one."""
    difficulty, frames = clustered_pool(300, 16, seed=3)
    if difficulty_kind == "constant":
        difficulty = np.full(len(frames), 3.0)
    data, offsets = packed(frames)
    path = write_frame_file(tmp_path / "frames.npy", data)
    budget, lam = 25, (0.25 if difficulty_kind == "uniform" else 4.0)
    working_set = smallest_working_set(frames, budget, [7, 11]) + 20 * (16 * 4 + 4)  # room for ~3 videos only
    in_memory = select_greedy(difficulty, data, budget, lam, [7, 11], offsets=offsets, **SMALL_CHUNKS)
    streamed = select_greedy(difficulty, path, budget, lam, [7, 11], offsets=offsets, working_set_bytes=working_set,
                             **SMALL_CHUNKS)
    assert_identical(streamed, in_memory)
    assert streamed.stats["streamed_steps"] > budget // 2  # steps whose rows came from the file
    assert streamed.stats["mode"] == ("pruned" if difficulty_kind == "uniform" else "full")
    assert streamed.stats["frames_read"] > len(data)  # more than the passes: the streamed steps re-read


@pytest.mark.parametrize("file_dtype, store_dtype", [("float16", "float16"), ("float16", "float32"),
                                                     ("float64", "float32"), ("float32", "bfloat16"),
                                                     ("float32", "float64")])
def test_file_and_store_dtypes(tmp_path, file_dtype, store_dtype):
    """Any file dtype into any store dtype: the same rounding as in memory (torch's conversions)."""
    difficulty, frames = clustered_pool(80, 8, seed=4)
    data, offsets = packed([f.astype(file_dtype) for f in frames])
    path = write_frame_file(tmp_path / "frames.npy", data)
    in_memory = select_greedy(difficulty, data, 12, 0.25, [2], offsets=offsets, store_dtype=store_dtype,
                              **SMALL_CHUNKS)
    store_bytes = {"float16": 2, "bfloat16": 2, "float32": 4, "float64": 8}[store_dtype]
    sq_bytes = 8 if store_dtype == "float64" else 4
    staged = file_dtype != store_dtype
    working_set = (smallest_working_set(frames, 12, [2], dim_bytes=store_bytes, sq_bytes=sq_bytes)
                   + staged * STAGE_ROWS * 8 * np.dtype(file_dtype).itemsize + 30 * (8 * store_bytes + sq_bytes))
    streamed = select_greedy(difficulty, path, 12, 0.25, [2], offsets=offsets, store_dtype=store_dtype,
                             working_set_bytes=working_set, **SMALL_CHUNKS)
    assert streamed.stats["streamed_steps"] > 0
    assert_identical(streamed, in_memory)


def test_np_save_files_are_read_too(tmp_path):
    difficulty, frames = clustered_pool(40, 5, seed=5)
    data, offsets = packed(frames)
    np.save(tmp_path / "saved.npy", data)
    in_memory = select_greedy(difficulty, data, 8, offsets=offsets)
    assert_identical(select_greedy(difficulty, str(tmp_path / "saved.npy"), 8, offsets=offsets), in_memory)


# ---- the memory bound ------------------------------------------------------------------------


def test_working_set_bound_holds_at_every_read(tmp_path, monkeypatch):
    """Instrumented loader: at every read of the file, the bytes held (window, copies) are within
    the budget and the rows go into a buffer the working set counts; and, measured apart from that
    bookkeeping, the numpy memory of the run (frame buffers are numpy memory) stays near the budget,
    a small fraction of the frames."""
    difficulty, frames = clustered_pool(1000, 32, seed=6, frames_per_video=(20, 31))
    data, offsets = packed(frames)
    path = write_frame_file(tmp_path / "frames.npy", data)
    chunks = {"max_row_frames": 64, "max_col_frames": 32, "scan_frames": 64}
    room = 10 * 30 * (32 * 4 + 4)  # an active copy of about 10 videos: it is streamed beyond that
    working_set = smallest_working_set(frames, 20, [], max_row_frames=64, scan_frames=64) + room
    assert data.nbytes > 12 * working_set
    reads: list[int] = []
    sets: list[WorkingSet] = []
    original_read, original_init = FrameFile.read_into, WorkingSet.__init__

    def track_init(self, budget=None):
        original_init(self, budget)
        sets.append(self)

    def checked_read(self, start, out):
        (current,) = sets
        assert current.owns(out), "rows read into memory the working set does not count"
        assert current.held <= working_set
        reads.append(out.shape[0])
        original_read(self, start, out)

    monkeypatch.setattr(WorkingSet, "__init__", track_init)
    monkeypatch.setattr(FrameFile, "read_into", checked_read)
    tracemalloc.start()
    try:
        streamed = select_greedy(difficulty, path, 20, 0.25, offsets=offsets, working_set_bytes=working_set, **chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert streamed.stats["working_set_peak_bytes"] <= working_set
    assert streamed.stats["streamed_steps"] > 0
    assert sum(reads) == streamed.stats["frames_read"] > 2 * len(data)  # two passes, then streamed steps
    per_video = 400 * len(frames)  # the run's per-video arrays (sums, watermarks, bounds, ranking)
    assert peak < working_set + per_video < data.nbytes / 4
    in_memory = select_greedy(difficulty, data, 20, 0.25, offsets=offsets, **chunks)
    assert_identical(streamed, in_memory)


def test_working_set_too_small_is_refused_before_reading(tmp_path):
    difficulty, frames = clustered_pool(30, 4, seed=7)
    data, offsets = packed(frames)
    path = write_frame_file(tmp_path / "frames.npy", data)
    least = smallest_working_set(frames, 5, [1])
    assert select_greedy(difficulty, path, 5, 0.25, [1], offsets=offsets, working_set_bytes=least,
                         **SMALL_CHUNKS).picks.size == 5
    with pytest.raises(WorkingSetError, match="at least"):
        select_greedy(difficulty, path, 5, 0.25, [1], offsets=offsets, working_set_bytes=least - 1, **SMALL_CHUNKS)


def test_working_set_refuses_to_go_over_its_budget():
    import torch

    working_set = WorkingSet(1000)
    buffer = working_set.buffer(10, 20, torch.float32, torch.float32, torch.device("cpu"), "a test buffer")
    assert working_set.held == 10 * (20 * 4 + 4) == working_set.peak
    assert working_set.owns(buffer.frames[3:5]) and not working_set.owns(torch.zeros(3))
    with pytest.raises(WorkingSetError, match="a second buffer"):
        working_set.buffer(2, 20, torch.float32, torch.float32, torch.device("cpu"), "a second buffer")
    buffer.release()
    buffer.release()  # idempotent
    assert working_set.held == 0 and working_set.peak == 840
    working_set.buffer(11, 20, torch.float16, None, torch.device("cpu"), "half frames")
    assert working_set.held == 11 * 40


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 30), min_size=1, max_size=60), st.integers(1, 40), st.integers(0, 50))
def test_window_plan_groups_whole_chunks_within_capacity(lengths, max_rows, extra):
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    chunks = chunk_plan(offsets, max_rows)
    capacity = max(max_rows, max(lengths)) + extra
    plan = window_plan(offsets, chunks, capacity)
    boundaries = {start for start, _ in chunks} | {len(lengths)}
    assert plan[0][0] == 0 and plan[-1][1] == len(lengths)
    for (_, stop), (next_start, _) in itertools.pairwise(plan):
        assert stop == next_start
    for start, stop in plan:
        assert start in boundaries and stop in boundaries  # windows never split a kernel chunk
        assert offsets[stop] - offsets[start] <= capacity
    # as few windows as fit: two neighbours together would not
    for (start, _), (_, stop) in itertools.pairwise(plan):
        assert offsets[stop] - offsets[start] > capacity


def test_plan_shares():
    plan = plan_working_set(10_000_000, row_bytes=100, staging_bytes=5000, longest_video=300, seed_frames=1000,
                            pick_frames=6400, max_row_frames=4096, scan_rows=16384)
    assert plan.window_frames == 16384 and plan.selected_frames == 7400
    assert plan.active_frames == (10_000_000 - (16384 + 7400) * 100 - 5000) // 100
    assert plan.fixed_bytes + plan.active_frames * 100 <= 10_000_000
    long_videos = plan_working_set(10_000_000, row_bytes=100, staging_bytes=0, longest_video=20000, seed_frames=0,
                                   pick_frames=0, max_row_frames=4096, scan_rows=16384)
    assert long_videos.window_frames == 24096


# ---- the frames file and bad input -----------------------------------------------------------


def test_writer_round_trip_and_header(tmp_path):
    rng = np.random.default_rng(8)
    parts = [rng.standard_normal((n, 6)).astype(np.float32) for n in (3, 1, 7)]
    with FrameFileWriter(tmp_path / "f.npy", 6) as writer:
        for part in parts:
            writer.append(part)
    np.testing.assert_array_equal(np.load(tmp_path / "f.npy"), np.concatenate(parts))
    with FrameFile(tmp_path / "f.npy") as file:
        assert (file.rows, file.dim, file.dtype, file.data_offset) == (11, 6, np.dtype(np.float32), 128)
        out = np.empty((4, 6), dtype=np.float32)
        file.read_into(2, out)
        np.testing.assert_array_equal(out, np.concatenate(parts)[2:6])
        with pytest.raises(ValueError, match="outside"):
            file.read_into(9, out)
        with pytest.raises(ValueError, match="cannot take"):
            file.read_into(0, np.empty((2, 6), dtype=np.float64))


@pytest.mark.parametrize("make, message", [
    (lambda p: np.save(p, np.zeros(5, dtype=np.float32)), "non-empty"),
    (lambda p: np.save(p, np.zeros((4, 3), dtype=np.float32, order="F")), "Fortran"),
    (lambda p: np.save(p, np.zeros((4, 3), dtype=">f4")), "native-endian"),
    (lambda p: np.save(p, np.zeros((4, 3), dtype=np.int32)), "dtype int32"),
    (lambda p: p.write_bytes(b"not a numpy file at all"), "not a .npy"),
    (lambda p: p.write_bytes(write_frame_file(p, np.zeros((9, 3), np.float32)).read_bytes()[:-5]), "truncated"),
])
def test_bad_frames_files(tmp_path, make, message):
    path = tmp_path / "bad.npy"
    make(path)
    with pytest.raises(FrameError, match=message):
        select_greedy([3.0, 4.0], path, 1, offsets=[0, 1, 2])


def test_bad_streamed_inputs(tmp_path):
    data = np.ones((6, 3), dtype=np.float32)
    data[4, 1] = np.nan
    path = write_frame_file(tmp_path / "nan.npy", data)
    with pytest.raises(FrameError, match="videos 2"):
        select_greedy([3.0, 4.0, 5.0], path, 1, offsets=[0, 2, 4, 6])
    with pytest.raises(FrameError, match="run from 0 to the number of frames"):
        select_greedy([3.0, 4.0], path, 1, offsets=[0, 2, 5])
    with pytest.raises(FrameError, match="needs offsets"):
        select_greedy([3.0, 4.0], path, 1)
    with pytest.raises(FrameError, match="cannot open"):
        select_greedy([3.0, 4.0], tmp_path / "missing.npy", 1, offsets=[0, 3, 6])
    with pytest.raises(SelectionError, match="in memory already"):
        select_greedy([3.0], [np.ones((2, 3))], 1, working_set_bytes=10**6)


@pytest.mark.parametrize("streamed", [False, True])
def test_values_beyond_float16_are_refused_not_rounded_to_inf(tmp_path, streamed):
    frames = [np.ones((2, 3), dtype=np.float32), np.full((2, 3), 7e4, dtype=np.float32)]
    data, offsets = packed(frames)
    source = write_frame_file(tmp_path / "big.npy", data) if streamed else data
    with pytest.raises(FrameError, match=r"too large for the torch.float16 store.*videos 1"):
        select_greedy([3.0, 4.0], source, 1, offsets=offsets, store_dtype="float16")
    assert select_greedy([3.0, 4.0], source, 2, offsets=offsets, store_dtype="bfloat16").picks.tolist() == [1, 0]



@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_streamed_to_cuda_equals_in_memory_on_cuda(tmp_path):
    difficulty, frames = clustered_pool(200, 16, seed=9)
    data, offsets = packed(frames)
    path = write_frame_file(tmp_path / "frames.npy", data)
    in_memory = select_greedy(difficulty, data, 20, 0.25, [3], offsets=offsets, device="cuda", **SMALL_CHUNKS)
    streamed = select_greedy(difficulty, path, 20, 0.25, [3], offsets=offsets, device="cuda",
                             working_set_bytes=smallest_working_set(frames, 20, [3]) + 16 * 1024 * 4 + 2000,
                             **SMALL_CHUNKS)
    assert_identical(streamed, in_memory)


def test_streamed_equals_in_memory_with_one_frame_chunks():
    """The case hypothesis found: three videos of 5, 4 and 3 frames, equal difficulty, lambda 0, K = 2.
    The in-memory rows are views 120 bytes into the pool, the streamed ones a fresh window: with
    the product's operands at the addresses they come with, MKL rounded them differently."""
    rng = np.random.default_rng(0)
    for _ in range(20):  # seeded pools of that shape (the first one differed before operands were aligned)
        frames_list = [rng.standard_normal((n, 6)).astype(np.float32) for n in (5, 4, 3)]
        frames, offsets = packed(frames_list)
        options = {"max_row_frames": 1, "max_col_frames": 1, "scan_frames": 3, "prune": False}
        least = smallest_working_set(frames_list, 2, [], max_row_frames=1, scan_frames=3)
        difficulty = np.full(3, 3.0)
        in_memory = select_greedy(difficulty, frames, 2, 0.0, [], offsets=offsets, **options)
        with tempfile.TemporaryDirectory() as folder:
            path = write_frame_file(Path(folder) / "frames.npy", frames)
            streamed = select_greedy(difficulty, path, 2, 0.0, [], offsets=offsets, working_set_bytes=least,
                                     **options)
        assert_identical(streamed, in_memory)
