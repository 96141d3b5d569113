"""Fast exact greedy difficulty-diversity selection (MDS-VQA), in torch on CPU or CUDA.

Same result as ``reference_select`` (see ``objective.py`` for the objective and the tie
rule), computed the scalable way:

* a running sum of distances to the selected set is kept per video (float64), so a step
  needs only the distances from the newest pick to the other videos;
* those come from ``kernel.chamfer_matrix``: one chunked matrix product over the frames
  plus segment min/mean reductions; memory is O(total_frames x dim), never N x N or K x N;
* exact pruning (on by default, ``prune=False`` turns it off): a video whose upper bound
  on the objective is below the best exact objective minus the tie tolerance and the
  kernel's worst-case float error cannot be picked at this step, so its distances to new
  picks are not computed yet; they are caught up, all at once, the first step its bound
  comes within reach. Bounds (``bounds.CentroidBounds``) are themselves kept only for the
  videos whose static priority (difficulty + lam x largest possible distance) is in
  reach: a prefix of one ranking made at the start. Only the "active" videos, packed
  contiguously, are updated by the kernel per step. When that set grows past half the
  pool the run switches to updating every video (no copy, no bookkeeping).

Pruning changes what is computed, never which video wins: the picks are those of the
plain full update, which the tests check against the reference.

Frames streamed from a file (``frames`` a path, ``store.StreamedStore``) go through the same
decisions and the same kernel calls: only where the frames of a block come from changes.
The active copy is kept while it fits its share of the working set, and read window by
window (windows of whole kernel chunks) once it does not; the full mode reads the file
window by window at every step. The picks, objectives and distances are those of the
in-memory run bit for bit (tested), and the bytes of frames held at once never exceed
``working_set_bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .bounds import SCAN_ROWS, CentroidBounds
from .errors import FrameError, SelectionError, WorkingSetError
from .framefile import FrameFile
from .inputs import (
    DEFAULT_DIFFICULTY_RANGE,
    PoolLayout,
    check_budget,
    check_lambda,
    prepare_layout,
    prepare_pool,
)
from .kernel import (
    FrameBlock,
    chamfer_matrix,
    chamfer_rows,
    chunk_plan,
    column_parts,
    distance_error_bound,
    store_rounding_error,
)
from .objective import TIE_TOLERANCE, tie_floor, winner
from .result import SelectionResult
from .store import (
    DEFAULT_WORKING_SET,
    FrameBuffer,
    MemoryStore,
    StreamedStore,
    WorkingSet,
    WorkingSetPlan,
    frame_rows,
    plan_working_set,
    window_plan,
)

STORE_DTYPES = {"float32": torch.float32, "float64": torch.float64,
                "float16": torch.float16, "bfloat16": torch.bfloat16}
_BOOTSTRAP_VIDEOS = 32  # activated first when no video is up to date yet
_FULL_MODE_FRACTION = 0.5  # active frames beyond this share of the pool: update every video
_SHRINK_MIN_FRAMES = 16384  # do not bother compacting smaller active sets
_BOUND_BATCH = 512  # stale videos whose bounds are caught up at a time
_CHUNKS = {"cpu": (4096, 2048), "cuda": (65536, 8192)}  # (max row frames, max column frames)


def select_greedy(difficulty, frames, budget: int, lam: float = 0.25, initial: Sequence[int] = (), *,
                  offsets=None, device: str | torch.device | None = None, store_dtype: str = "float32",
                  prune: bool = True, tie_tolerance: float = TIE_TOLERANCE,
                  difficulty_range: tuple[float, float] | None = DEFAULT_DIFFICULTY_RANGE,
                  max_row_frames: int | None = None, max_col_frames: int | None = None,
                  working_set_bytes: int | None = None, scan_frames: int = SCAN_ROWS) -> SelectionResult:
    """Order up to ``budget`` videos by greedy difficulty + ``lam`` x mean Chamfer distance.

    difficulty: (N,) raw failure scores g; NaN/inf, or values outside ``difficulty_range``
        ((1, 5) by default; None to allow any finite value), raise ``DifficultyError``.
        Entries of ``initial`` videos are not used and may be NaN.
    frames: N arrays (n_i, dim); one packed (total_frames, dim) array with ``offsets``; or the
        path of a packed (total_frames, dim) ``.npy`` file (float16/32/64, C order: ``np.save``
        or ``framefile.FrameFileWriter``) with ``offsets``, streamed from disk: never loaded
        whole, exactly the in-memory result (same picks, same values bit for bit).
    budget: number of picks; larger than the unlabeled pool returns every candidate
        (``result.budget_clipped``), 0 returns nothing.
    initial: pool indices already labeled: never picked, counted in every mean
        (also at the first pick).
    store_dtype: "float32" (default), "float64", or the opt-in approximate "float16" /
        "bfloat16", which halve memory and give the exact greedy on the rounded embeddings.
        Their effect on the originals' objective is bounded, for every frame x rounded to x~
        with ||x - x~|| <= E (``kernel.store_rounding_error``: E = 2^-11 ||x|| plus a subnormal
        term for float16, 2^-8 ||x|| for bfloat16, about 4.9e-4 and 3.9e-3 for unit-norm
        frames), by

        * every distance: |D(A~, B~) - D(A, B)| <= 2 E (each frame distance moves by at most
          2 E, and so do its minima and means), so every objective by lam x 2 E, plus the
          kernel's float error ``distance_error_bound`` (err) on top;
        * each reported objective is within lam x (2 E + err) of the exact float objective
          of that pick given the run's own earlier picks, and each pick is near-greedy:
          its exact objective is at least the best exact one minus the tie tolerance minus
          2 lam (2 E + err). ``result.stats["objective_error_bound"]`` gives lam x (2 E + err)
          for the run.

        The picks equal float32's as long as at every step the float32 winner leads the runner-up
        by more than 2 lam (2 E + err) plus the tie tolerance; closer candidates (duplicates,
        equal scores) may be swapped.
        Measured (docs/selection.md, 30 seeded pools of N = 2000, K = 64, clustered or random
        unit-norm frames): float16 gave float32's picks in float32's order in 29 (the other: the
        same set), bfloat16 in 21, objectives within 6e-6 and 3e-5 when the picks were equal;
        float16 also at N = 2k and 20k with 300 frames per video.
    working_set_bytes: for frames streamed from a file only: the most bytes of frames (store
        dtype, plus 4 bytes of squared norm each) held at once, 1 GiB by default. It must
        hold a read window (max(16384, max_row_frames + longest video) frames), the seed and
        the picks; the rest holds the active copy, streamed from the file when it outgrows it.
        ``result.stats`` reports the peak ("working_set_peak_bytes") and the frames read.
    max_row_frames, max_col_frames, scan_frames: kernel chunks (frames of the rows and of the
        columns of one matrix product) and the chunk of the passes over the store (norms,
        centres); the defaults suit the device. Two runs with the same values compute the same
        numbers whatever the store.
    """
    budget = check_budget(budget)
    lam = check_lambda(lam)
    if store_dtype not in STORE_DTYPES:
        raise SelectionError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    device = torch.device(device or "cpu")
    default_rows, default_cols = _CHUNKS["cuda" if device.type == "cuda" else "cpu"]
    max_rows, max_cols = max_row_frames or default_rows, max_col_frames or default_cols
    dtype = STORE_DTYPES[store_dtype]
    if not isinstance(frames, (str, os.PathLike)):
        if working_set_bytes is not None:
            raise SelectionError("working_set_bytes bounds frames streamed from a file; these frames are in memory "
                                 "already (pass the path of a packed .npy file to stream it)")
        pool = prepare_pool(difficulty, frames, offsets=offsets, initial=initial, difficulty_range=difficulty_range)
        return _FastGreedy(pool, lam, device, dtype, prune, tie_tolerance, max_rows, max_cols,
                           scan_rows=scan_frames).select(budget)

    if offsets is None:
        raise FrameError(f"{frames}: a packed frames file needs offsets (n_videos + 1 row numbers)")
    with FrameFile(frames) as file:
        layout = prepare_layout(difficulty, offsets, file.rows, initial=initial, difficulty_range=difficulty_range)
        working_set = WorkingSet(DEFAULT_WORKING_SET if working_set_bytes is None else int(working_set_bytes))
        store = StreamedStore(file, dtype, device, working_set)
        plan = _plan(layout, store, budget, max_rows, scan_frames)
        run = _FastGreedy(layout, lam, device, dtype, prune, tie_tolerance, max_rows, max_cols, store=store, plan=plan,
                          scan_rows=scan_frames)
        try:
            return run.select(budget)
        finally:
            run.close()


def _plan(layout: PoolLayout, store: StreamedStore, budget: int, max_rows: int, scan_rows: int) -> WorkingSetPlan:
    lengths = layout.lengths
    candidate_lengths = lengths[layout.candidates()]
    n_picks = min(budget, len(candidate_lengths))
    pick_frames = int(np.sort(candidate_lengths)[len(candidate_lengths) - n_picks :].sum()) if n_picks else 0
    assert store.working_set.budget is not None  # a streamed store always has one
    compute_bytes = 8 if store.dtype == torch.float64 else 4
    return plan_working_set(store.working_set.budget, row_bytes=store.dim * store.dtype.itemsize + compute_bytes,
                            staging_bytes=store.staging_bytes, longest_video=int(lengths.max()),
                            seed_frames=int(lengths[layout.initial].sum()), pick_frames=pick_frames,
                            max_row_frames=max_rows, scan_rows=scan_rows)


class _StoreScan:
    """A store read chunk by chunk through the run's window (what ``CentroidBounds`` reads)."""

    def __init__(self, run: _FastGreedy) -> None:
        self.run = run
        self.dim, self.device = run.store.dim, run.store.device

    def scan(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        buffer = None if self.run.store.resident else self.run.window.buffer.frames
        return self.run.store.scan(rows, buffer)


class _Window:
    """The one buffer a run reads or gathers frames into, one window of whole videos at a time.

    A streamed run takes it from the working set at the start (the passes over the store read
    into it); an in-memory run only gathers catch-up groups into it, so it is made on first use.
    """

    def __init__(self, store: MemoryStore | StreamedStore, capacity: int, compute_dtype: torch.dtype) -> None:
        self.store, self.capacity, self.compute_dtype = store, capacity, compute_dtype
        self._buffer: FrameBuffer | None = None

    @property
    def buffer(self) -> FrameBuffer:
        if self._buffer is None:
            self._buffer = self.store.working_set.buffer(self.capacity, self.store.dim, self.store.dtype,
                                                         self.compute_dtype, self.store.device, "the read window")
        return self._buffer

    def load(self, ids: np.ndarray, pool_offsets: np.ndarray, store_sq: torch.Tensor,
             blanked: np.ndarray | None = None) -> FrameBlock:
        """The frames of ``ids`` packed in order (``blanked`` slots as zeros); valid until the next load."""
        lengths = pool_offsets[ids + 1] - pool_offsets[ids]
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        count = int(offsets[-1])
        buffer = self.buffer
        if count > buffer.capacity:
            raise WorkingSetError(f"{count} frames do not fit the {buffer.capacity}-frame read window")
        assert buffer.sq is not None  # the window keeps squared norms
        frames, sq = buffer.frames[:count], buffer.sq[:count]
        self.store.gather(ids, pool_offsets, frames)
        torch.index_select(store_sq, 0, torch.from_numpy(frame_rows(pool_offsets, ids)).to(store_sq.device), out=sq)
        if blanked is not None:
            for slot in np.flatnonzero(blanked):
                frames[offsets[slot] : offsets[slot + 1]] = 0
                sq[offsets[slot] : offsets[slot + 1]] = 0
        return FrameBlock(frames, sq, offsets)

    def release(self) -> None:
        if self._buffer is not None:
            self._buffer.release()
            self._buffer = None


class _StreamedPart:
    """Videos of a streamed set as a row source for ``_catch_up``: each range is loaded on demand."""

    def __init__(self, run: _FastGreedy, ids: np.ndarray, blanked: np.ndarray) -> None:
        self.run, self.ids, self.blanked = run, ids, blanked
        lengths = run.frame_lengths[ids]
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def video_range(self, start: int, stop: int) -> FrameBlock:
        return self.run.window.load(self.ids[start:stop], self.run.offsets, self.run.store_sq,
                                    self.blanked[start:stop])


class _PackedVideos:
    """An ordered set of pool videos packed as one block (the active set, the selected set).

    Its frames are a copy in memory (``materialized``), or, for a streamed store whose copy
    would outgrow ``limit_frames``, read window by window at each use. Either way the block
    has the same videos in the same order, blanked videos (picks) read as zero frames, and
    the kernel sees the same chunks: the distances are the same bit for bit.
    """

    def __init__(self, run: _FastGreedy, *, limit_frames: int | None = None, streamable: bool = False,
                 capacity: int = 0, what: str = "a packed copy") -> None:
        self.run, self.limit_frames, self.streamable, self.what = run, limit_frames, streamable, what
        self.ids = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.blanked = np.zeros(0, dtype=bool)
        self.materialized = True
        self._buffer: FrameBuffer | None = None
        self._initial_capacity = capacity
        self._block: FrameBlock | None = None

    @property
    def frame_count(self) -> int:
        return int(self.offsets[-1])

    def count_videos(self) -> int:
        return len(self.ids)

    @property
    def capacity(self) -> int:
        return 0 if self._buffer is None else self._buffer.capacity

    def _allocate(self, capacity: int) -> FrameBuffer:
        store = self.run.store
        return store.working_set.buffer(capacity, store.dim, store.dtype, self.run.compute_dtype, store.device,
                                        self.what)

    def _fill(self, first: int, last: int) -> None:
        """Copy the frames of slots [first, last) from the store (blanked ones as zeros)."""
        assert self._buffer is not None and self._buffer.sq is not None
        run = self.run
        ids = self.ids[first:last]
        lo, hi = int(self.offsets[first]), int(self.offsets[last])
        run.store.gather(ids, run.offsets, self._buffer.frames[lo:hi])
        rows = torch.from_numpy(frame_rows(run.offsets, ids)).to(run.store_sq.device)
        torch.index_select(run.store_sq, 0, rows, out=self._buffer.sq[lo:hi])
        for slot in first + np.flatnonzero(self.blanked[first:last]):
            self._zero(int(slot))

    def _zero(self, slot: int) -> None:
        assert self._buffer is not None and self._buffer.sq is not None
        first, last = int(self.offsets[slot]), int(self.offsets[slot + 1])
        self._buffer.frames[first:last] = 0
        self._buffer.sq[first:last] = 0

    def _make_room(self, used: int, need: int) -> None:
        """Grow the copy to hold ``need`` frames, or stop materializing when it may not."""
        if need <= self.capacity:
            return
        limit = self.limit_frames
        if limit is not None and need > limit:
            if not self.streamable:
                raise WorkingSetError(f"{self.what} needs {need} frames, its share holds {limit}")
            self._drop_copy()
            return
        capacity = max(need, 2 * self.capacity, self._initial_capacity)
        if limit is not None:
            capacity = min(capacity, limit)
        if limit is not None and self.capacity + capacity > limit:  # old and new copies cannot coexist
            self._drop_copy()
            self.materialized = True
            self._buffer = self._allocate(capacity)
            self._fill(0, len(self.ids))  # the slots already there, read again
            return
        old = self._buffer
        self._buffer = self._allocate(capacity)
        if old is not None:
            assert old.sq is not None and self._buffer.sq is not None
            self._buffer.frames[:used] = old.frames[:used]
            self._buffer.sq[:used] = old.sq[:used]
            old.release()

    def _drop_copy(self) -> None:
        if self._buffer is not None:
            self._buffer.release()
            self._buffer = None
        self.materialized = False

    def append(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        used = self.frame_count
        lengths = self.run.frame_lengths[ids]
        need = used + int(lengths.sum())
        if self.materialized:
            self._make_room(used, need)
        first = len(self.ids)
        self.offsets = np.concatenate([self.offsets, used + np.cumsum(lengths)])
        self.ids = np.concatenate([self.ids, ids])
        self.blanked = np.concatenate([self.blanked, np.zeros(len(ids), dtype=bool)])
        if self.materialized and len(ids) and need > used:
            self._fill(first, len(self.ids))
        self._block = None

    def reset(self, ids: np.ndarray) -> None:
        """Keep only ``ids``, releasing the memory of the rest."""
        self.release()
        self.ids = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.blanked = np.zeros(0, dtype=bool)
        self.append(ids)

    def release(self) -> None:
        self._drop_copy()
        self.materialized = True
        self._block = None

    def blank(self, video: int) -> None:
        """Zero the frames of a video that no longer needs distances (a pick), so it stays cheap
        until the next compaction: zero frames are far from the pick's own frames, which
        would otherwise send that chunk through the float64 refinement at every step."""
        for slot in np.flatnonzero(self.ids == video):
            self.blanked[slot] = True
            if self.materialized:
                self._zero(int(slot))

    def block(self) -> FrameBlock:
        if not self.materialized:
            raise WorkingSetError(f"{self.what} is streamed, not held in memory")
        if self._block is None:
            used, store = self.frame_count, self.run.store
            if self._buffer is None or self._buffer.sq is None:  # nothing appended yet
                frames = torch.empty((0, store.dim), dtype=store.dtype, device=store.device)
                sq = torch.empty((0,), dtype=self.run.compute_dtype, device=store.device)
            else:
                frames, sq = self._buffer.frames[:used], self._buffer.sq[:used]
            self._block = FrameBlock(frames, sq, self.offsets)
        return self._block

    def rows(self, start: int, stop: int) -> FrameBlock | _StreamedPart:
        """Videos [start, stop) as a row source: a view of the copy, or loaded on demand."""
        if self.materialized:
            return self.block().video_range(start, stop)
        return _StreamedPart(self.run, self.ids[start:stop], self.blanked[start:stop])


class _FastGreedy:
    """One selection run: running distance sums, watermarks, bounds and the active set.

    Per video x: ``distance_sum`` is the exact sum of D(x, s) over ``selected[:watermark]``;
    ``bound_missing`` bounds the sum over ``selected[watermark:bound_watermark]``. A video is
    up to date when its watermark equals the number selected. Videos are also ranked once
    by a static priority ``key`` >= any objective they can ever reach (difficulty + lam x a
    bound on the largest distance); the ones whose key is below the current pruning floor
    need neither distances nor bounds, so bounds are maintained for a prefix of that ranking.

    ``store`` is where frames come from (``MemoryStore`` of ``pool.frames`` by default); a
    ``StreamedStore`` needs the ``plan`` of its working set. The decisions never depend on it.
    """

    def __init__(self, pool: PoolLayout, lam: float, device: torch.device, store_dtype: torch.dtype, prune: bool,
                 tie_tolerance: float, max_row_frames: int, max_col_frames: int, *,
                 store: MemoryStore | StreamedStore | None = None, plan: WorkingSetPlan | None = None,
                 scan_rows: int = SCAN_ROWS) -> None:
        self.pool, self.lam, self.tie_tolerance = pool, lam, tie_tolerance
        self.max_rows, self.max_cols = max_row_frames, max_col_frames
        self.compute_dtype = torch.float64 if store_dtype == torch.float64 else torch.float32
        if store is None:
            frames = getattr(pool, "frames", None)
            if frames is None:
                raise SelectionError("a pool without frames needs a store")
            store = MemoryStore(frames, store_dtype, device)  # no copy for float32 frames on the CPU
        elif not store.resident and plan is None:
            raise WorkingSetError("a streamed store needs the plan of its working set")
        self.store, self.plan = store, plan
        self.offsets = pool.offsets
        self.frame_lengths = np.diff(pool.offsets)
        n_videos = pool.size
        longest = int(self.frame_lengths.max())
        if plan is not None and plan.window_frames < max(scan_rows, self.max_rows + longest):
            raise WorkingSetError(f"the plan's window of {plan.window_frames} frames is smaller than a chunk")
        self.window = _Window(store, plan.window_frames if plan else self.max_rows + longest, self.compute_dtype)

        # One pass (two with pruning) over the store: squared norms, and the centres and radii.
        self.store_sq = torch.empty(store.total_frames, dtype=self.compute_dtype, device=store.device)
        self.bounds: CentroidBounds | None = None
        if prune:
            self.bounds = CentroidBounds(_StoreScan(self), self.offsets, on_first_pass=self._norms,
                                         chunk_rows=scan_rows)
        else:
            for start, chunk in _StoreScan(self).scan(scan_rows):
                self._norms(start, chunk)
        max_norm = float(self.store_sq.max().sqrt())
        self.error_allowance = distance_error_bound(store.dim, max_norm, self.compute_dtype)
        self.rounding_error = store_rounding_error(store_dtype, store.dim, max_norm)

        self.candidate = pool.candidates()
        self.distance_sum = np.zeros(n_videos, dtype=np.float64)
        self.watermark = np.zeros(n_videos, dtype=np.int64)
        streamed = not store.resident
        self.selected = _PackedVideos(self, limit_frames=plan.selected_frames if plan else None,
                                      capacity=plan.selected_frames if plan else 0, what="the selected set")
        self.selected.append(pool.initial)
        self.evaluations = 0
        self.active_peak = 0
        self.streamed_steps = 0

        self.full_mode = False
        self._full_block: FrameBlock | None = None
        self.active: _PackedVideos | None = None
        if prune:
            assert self.bounds is not None
            key = np.where(self.candidate, pool.difficulty, -np.inf) + lam * self.bounds.max_distance()
            self.order = np.lexsort((np.arange(n_videos), -key))  # key descending, index ascending
            self.row_of = np.empty(n_videos, dtype=np.int64)
            self.row_of[self.order] = np.arange(n_videos)
            self.key_by_row = key[self.order]
            self.bounds.reorder(self.order)
            self.bound_missing = np.zeros(n_videos, dtype=np.float64)
            self.bound_watermark = np.zeros(n_videos, dtype=np.int64)
            self.active = _PackedVideos(self, limit_frames=plan.active_frames if plan else None, streamable=streamed,
                                        what="the active copy")
        else:
            self._enter_full_mode()

    def _norms(self, start: int, chunk: torch.Tensor) -> None:
        """Squared norms of a chunk of the store; non-finite ones (NaN, inf, overflow of the store dtype) refused."""
        sq = self.store_sq[start : start + chunk.shape[0]]
        part = chunk.to(self.compute_dtype)
        torch.linalg.vecdot(part, part, out=sq)
        if not bool(torch.isfinite(sq).all()):
            bad_rows = start + np.flatnonzero(~torch.isfinite(sq).cpu().numpy())
            videos = np.unique(np.searchsorted(self.offsets, bad_rows, side="right") - 1)
            shown = ", ".join(str(int(v)) for v in videos[:5]) + (f" and {len(videos) - 5} more" if len(videos) > 5
                                                                   else "")
            raise FrameError(f"frames hold NaN or infinite values, or values too large for the {self.store.dtype} "
                             f"store (their squared norm overflows), in videos {shown}")

    def close(self) -> None:
        """Give every buffer back (the working set's peak stays readable)."""
        self.window.release()
        self.selected.release()
        if self.active is not None:
            self.active.release()
        self.store.close()

    # ---- the loop -------------------------------------------------------------------------
    def select(self, budget: int) -> SelectionResult:
        n_picks = min(budget, int(self.candidate.sum()))
        picks, objectives, difficulties, means = [], [], [], []
        for _ in range(n_picks):
            pick, value, mean = self._choose()
            picks.append(pick)
            objectives.append(value)
            difficulties.append(float(self.pool.difficulty[pick]))
            means.append(mean)
            self.candidate[pick] = False
            self.selected.append(np.array([pick]))
            if self.active is not None:
                self.active.blank(pick)
            if len(picks) < n_picks:
                self._add_distances_to_newest()
        working_set = self.store.working_set
        stats: dict[str, object] = {
            "mode": "full" if self.full_mode else "pruned",
            "active_peak_videos": self.active_peak if not self.full_mode else self.pool.size,
            "store": "memory" if self.store.resident else "streamed",
            "working_set_peak_bytes": working_set.peak, "working_set_budget_bytes": working_set.budget,
            "frames_read": self.store.frames_read, "streamed_steps": self.streamed_steps}
        if self.rounding_error:
            stats["objective_error_bound"] = self.lam * (2 * self.rounding_error + self.error_allowance)
        return SelectionResult(
            picks=np.array(picks, dtype=np.int64), objectives=np.array(objectives, dtype=np.float64),
            difficulties=np.array(difficulties, dtype=np.float64), mean_distances=np.array(means, dtype=np.float64),
            lam=self.lam, requested_budget=budget, initial=self.pool.initial.copy(),
            distance_evaluations=self.evaluations, stats=stats)

    def _objectives(self, ids: np.ndarray, k: int) -> np.ndarray:
        """Exact objectives of up-to-date videos."""
        return self.pool.difficulty[ids] + self.lam * (self.distance_sum[ids] / k)

    def _choose(self) -> tuple[int, float, float]:
        k = self.selected.count_videos()
        candidates = np.flatnonzero(self.candidate)
        if k == 0:
            values = self.pool.difficulty[candidates]
            w = winner(candidates, values, self.tie_tolerance)
            return int(candidates[w]), float(values[w]), 0.0
        if not self.full_mode:
            self._activate_competitors(k, candidates)
        current = candidates[self.watermark[candidates] == k]
        values = self._objectives(current, k)
        w = winner(current, values, self.tie_tolerance)
        if not self.full_mode:
            self._maybe_shrink_active(k, float(values.max()))
        pick = int(current[w])
        return pick, float(values[w]), float(self.distance_sum[pick] / k)

    def _distances(self, ids: np.ndarray, offsets: np.ndarray, blanked: np.ndarray | None, block: FrameBlock | None,
                   cols: FrameBlock) -> np.ndarray:
        """D(row video, column video) for the packed rows ``ids`` (``block`` when held in memory, else
        read window by window: windows of whole kernel chunks, so the same chunks as one block)."""
        if block is not None:
            return chamfer_matrix(block, cols, self.compute_dtype, max_rows=self.max_rows,
                                  max_cols=self.max_cols).cpu().numpy()
        parts = column_parts(cols, int(offsets[-1]), max_rows=self.max_rows, max_cols=self.max_cols)
        out = np.empty((len(ids), cols.count), dtype=np.float64)
        for start, stop in window_plan(offsets, chunk_plan(offsets, self.max_rows), self.window.capacity):
            window = self.window.load(ids[start:stop], self.offsets, self.store_sq,
                                      None if blanked is None else blanked[start:stop])
            out[start:stop] = chamfer_rows(window, parts, self.compute_dtype, max_rows=self.max_rows).cpu().numpy()
        self.streamed_steps += 1
        return out

    def _add_distances_to_newest(self) -> None:
        """distance_sum += D(x, newest pick) for every up-to-date video, in one batched pass."""
        k = self.selected.count_videos()
        newest = self.selected.block().video_range(k - 1, k)
        ids: slice | np.ndarray
        if self.full_mode:
            all_ids = np.arange(self.pool.size)
            distances = self._distances(all_ids, self.offsets, None, self._full_block, newest)
            ids, count = slice(None), self.pool.size
        else:
            assert self.active is not None  # there is an active set until full mode
            ids, count = self.active.ids, self.active.count_videos()
            if count == 0:
                return
            block = self.active.block() if self.active.materialized else None
            distances = self._distances(ids, self.active.offsets, self.active.blanked, block, newest)
        self.distance_sum[ids] += distances[:, 0]
        self.watermark[ids] = k
        if not self.full_mode:
            self.bound_watermark[ids] = k
        self.evaluations += count

    # ---- pruning --------------------------------------------------------------------------
    def _pruning_floor(self, best: float) -> float:
        """Objectives below this cannot tie the best one, even with the kernel's worst float error."""
        return tie_floor(best, self.tie_tolerance) - self.lam * self.error_allowance

    def _activate_competitors(self, k: int, candidates: np.ndarray) -> None:
        """Make every video that might reach the best objective at this step up to date."""
        if not (self.watermark[candidates] == k).any():  # nothing exact yet: start from the top priorities
            by_priority = self.order[self.candidate[self.order]]
            self._activate(by_priority[:_BOOTSTRAP_VIDEOS], k)
            if self.full_mode:
                return
        current = candidates[self.watermark[candidates] == k]
        floor = self._pruning_floor(float(self._objectives(current, k).max()))
        in_reach = int(np.searchsorted(-self.key_by_row, -floor, side="right"))  # rows with key >= floor
        prefix = self.order[:in_reach]
        stale = prefix[self.candidate[prefix] & (self.watermark[prefix] < k)]
        if len(stale) == 0:
            return
        self._update_bounds(stale, k)
        bound = self.pool.difficulty[stale] + self.lam * ((self.distance_sum[stale] + self.bound_missing[stale]) / k)
        reachable = stale[bound >= floor]
        if len(reachable):
            self._activate(reachable, k)

    def _update_bounds(self, ids: np.ndarray, k: int) -> None:
        """Extend ``bound_missing`` of stale videos ``ids`` to the whole selected set."""
        assert self.bounds is not None  # only pruning keeps bounds
        marks = self.bound_watermark[ids]
        behind_one = ids[marks == k - 1]
        if len(behind_one):  # the usual case: one matrix-vector product over a prefix of rows
            rows = self.row_of[behind_one]
            newest = int(self.row_of[self.selected.ids[k - 1]])
            self.bound_missing[behind_one] += self.bounds.to_row(int(rows.max()) + 1, newest)[rows]
        behind_more = ids[marks < k - 1]
        behind_more = behind_more[np.argsort(self.bound_watermark[behind_more], kind="stable")]
        selected_rows = self.row_of[self.selected.ids]
        for start in range(0, len(behind_more), _BOUND_BATCH):
            batch = behind_more[start : start + _BOUND_BATCH]
            oldest = int(self.bound_watermark[batch[0]])
            bounds = self.bounds.matrix(self.row_of[batch], selected_rows[oldest:k])
            seen = (oldest + np.arange(k - oldest))[None, :] < self.bound_watermark[batch][:, None]
            self.bound_missing[batch] += np.where(seen, 0.0, bounds).sum(axis=1)
        self.bound_watermark[ids] = k

    def _activate(self, ids: np.ndarray, k: int) -> None:
        """Bring ``ids`` up to date with the selected set and add them to the active set."""
        assert self.active is not None  # there is an active set until full mode
        if self.active.frame_count + self.frame_lengths[ids].sum() > _FULL_MODE_FRACTION * self.store.total_frames:
            self._enter_full_mode()
            return
        ids = ids[np.argsort(self.watermark[ids], kind="stable")]
        first = self.active.count_videos()
        self.active.append(ids)
        self.active_peak = max(self.active_peak, self.active.count_videos())
        self._catch_up(ids, k, self.active.rows(first, first + len(ids)))

    def _maybe_shrink_active(self, k: int, best: float) -> None:
        """Drop videos that fell out of reach once they fill half the active frames."""
        assert self.active is not None  # there is an active set until full mode
        ids = self.active.ids
        if self.active.frame_count < _SHRINK_MIN_FRAMES:
            return
        keep = self.candidate[ids] & (self._objectives(ids, k) >= self._pruning_floor(best))
        if self.frame_lengths[ids[~keep]].sum() * 2 > self.active.frame_count:
            self.active.reset(ids[keep])  # dropped videos stay consistent: up to date at k, nothing missing

    def _enter_full_mode(self) -> None:
        """Update every video from now on: catch everyone up, drop the active copy."""
        k = self.selected.count_videos()
        stale = np.flatnonzero(self.candidate & (self.watermark < k))
        stale = stale[np.argsort(self.watermark[stale], kind="stable")]
        group: list[int] = []
        frames = 0
        for video in stale:  # groups of about max_rows frames, gathered one at a time
            group.append(video)
            frames += self.frame_lengths[video]
            if frames >= self.max_rows:
                self._catch_up_gathered(np.array(group), k)
                group, frames = [], 0
        if group:
            self._catch_up_gathered(np.array(group), k)
        if self.active is not None:
            self.active.release()
        self.active = None
        self.full_mode = True
        if isinstance(self.store, MemoryStore):
            self._full_block = FrameBlock(self.store.tensor, self.store_sq, self.offsets)

    def _catch_up_gathered(self, ids: np.ndarray, k: int) -> None:
        self._catch_up(ids, k, self.window.load(ids, self.offsets, self.store_sq))

    def _catch_up(self, ids: np.ndarray, k: int, rows: FrameBlock | _StreamedPart) -> None:
        """Add D(x, s) for the selected s each video x has not seen yet (``ids`` sorted by watermark)."""
        marks = self.watermark[ids]
        start = 0
        while start < len(ids):  # groups of videos sharing a first missed pick, about max_rows frames each
            first_frame = rows.offsets[start]
            stop = int(np.searchsorted(rows.offsets, first_frame + self.max_rows, side="right")) - 1
            stop = min(max(stop, start + 1), len(ids))
            oldest = int(marks[start])
            if oldest < k:
                missed = self.selected.block().video_range(oldest, k)
                distances = chamfer_matrix(rows.video_range(start, stop), missed, self.compute_dtype,
                                           max_rows=self.max_rows, max_cols=self.max_cols).cpu().numpy()
                seen = (oldest + np.arange(k - oldest))[None, :] < marks[start:stop, None]
                self.distance_sum[ids[start:stop]] += np.where(seen, 0.0, distances).sum(axis=1)
                self.evaluations += int((~seen).sum())
            start = stop
        self.watermark[ids] = k
        if self.bounds is not None:
            self.bound_missing[ids] = 0.0
            self.bound_watermark[ids] = k
