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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .bounds import CentroidBounds
from .errors import SelectionError
from .inputs import DEFAULT_DIFFICULTY_RANGE, Pool, check_budget, check_lambda, prepare_pool
from .kernel import FrameBlock, chamfer_matrix, distance_error_bound, squared_norms
from .objective import TIE_TOLERANCE, tie_floor, winner
from .result import SelectionResult

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
                  max_row_frames: int | None = None, max_col_frames: int | None = None) -> SelectionResult:
    """Order up to ``budget`` videos by greedy difficulty + ``lam`` x mean Chamfer distance.

    difficulty: (N,) raw failure scores g; NaN/inf, or values outside ``difficulty_range``
        ((1, 5) by default; None to allow any finite value), raise ``DifficultyError``.
        Entries of ``initial`` videos are not used and may be NaN.
    frames: N arrays (n_i, dim), or one packed (total_frames, dim) array with ``offsets``.
    budget: number of picks; larger than the unlabeled pool returns every candidate
        (``result.budget_clipped``), 0 returns nothing.
    initial: pool indices already labeled: never picked, counted in every mean
        (also at the first pick).
    store_dtype: "float32" (default), "float64", or the opt-in approximate "float16" /
        "bfloat16", which halve memory and give the exact greedy on the rounded embeddings.
    """
    budget = check_budget(budget)
    lam = check_lambda(lam)
    if store_dtype not in STORE_DTYPES:
        raise SelectionError(f"store_dtype must be one of {sorted(STORE_DTYPES)}, got {store_dtype!r}")
    pool = prepare_pool(difficulty, frames, offsets=offsets, initial=initial, difficulty_range=difficulty_range)
    device = torch.device(device or "cpu")
    default_rows, default_cols = _CHUNKS["cuda" if device.type == "cuda" else "cpu"]
    run = _FastGreedy(pool, lam, device, STORE_DTYPES[store_dtype], prune, tie_tolerance,
                      max_row_frames or default_rows, max_col_frames or default_cols)
    return run.select(budget)


def _frame_rows(offsets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row numbers, in the packed store, of the frames of videos ``ids`` (in that order)."""
    lengths = offsets[ids + 1] - offsets[ids]
    shift = offsets[ids] - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()))


class _PackedVideos:
    """A growable packed copy of some pool videos' frames (the active set, the selected set)."""

    def __init__(self, store: torch.Tensor, store_sq: torch.Tensor, pool_offsets: np.ndarray) -> None:
        self._store, self._store_sq, self._pool_offsets = store, store_sq, pool_offsets
        self._frames = store.new_empty((0, store.shape[1]))
        self._sq = store_sq.new_empty((0,))
        self.ids = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(1, dtype=np.int64)
        self._block: FrameBlock | None = None

    @property
    def frame_count(self) -> int:
        return int(self.offsets[-1])

    def count_videos(self) -> int:
        return len(self.ids)

    def append(self, ids: np.ndarray) -> None:
        ids = np.asarray(ids, dtype=np.int64)
        rows = torch.from_numpy(_frame_rows(self._pool_offsets, ids)).to(self._store.device)
        used, need = self.frame_count, self.frame_count + len(rows)
        if need > self._frames.shape[0]:
            capacity = max(need, 2 * self._frames.shape[0])
            frames = self._store.new_empty((capacity, self._store.shape[1]))
            frames[:used] = self._frames[:used]
            sq = self._store_sq.new_empty((capacity,))
            sq[:used] = self._sq[:used]
            self._frames, self._sq = frames, sq
        torch.index_select(self._store, 0, rows, out=self._frames[used:need])
        self._sq[used:need] = self._store_sq[rows]
        lengths = self._pool_offsets[ids + 1] - self._pool_offsets[ids]
        self.offsets = np.concatenate([self.offsets, used + np.cumsum(lengths)])
        self.ids = np.concatenate([self.ids, ids])
        self._block = None

    def reset(self, ids: np.ndarray) -> None:
        """Keep only ``ids``, releasing the memory of the rest."""
        self._frames = self._store.new_empty((0, self._store.shape[1]))
        self._sq = self._store_sq.new_empty((0,))
        self.ids = np.zeros(0, dtype=np.int64)
        self.offsets = np.zeros(1, dtype=np.int64)
        self.append(ids)

    def blank(self, video: int) -> None:
        """Zero the frames of a video that no longer needs distances (a pick), so it stays cheap
        until the next compaction: zero frames are far from the pick's own frames, which
        would otherwise send that chunk through the float64 refinement at every step."""
        slots = np.flatnonzero(self.ids == video)
        for slot in slots:
            first, last = int(self.offsets[slot]), int(self.offsets[slot + 1])
            self._frames[first:last] = 0
            self._sq[first:last] = 0

    def block(self) -> FrameBlock:
        if self._block is None:
            used = self.frame_count
            self._block = FrameBlock(self._frames[:used], self._sq[:used], self.offsets)
        return self._block


class _FastGreedy:
    """One selection run: running distance sums, watermarks, bounds and the active set.

    Per video x: ``distance_sum`` is the exact sum of D(x, s) over ``selected[:watermark]``;
    ``bound_missing`` bounds the sum over ``selected[watermark:bound_watermark]``. A video is
    up to date when its watermark equals the number selected. Videos are also ranked once
    by a static priority ``key`` >= any objective they can ever reach (difficulty + lam x a
    bound on the largest distance); the ones whose key is below the current pruning floor
    need neither distances nor bounds, so bounds are maintained for a prefix of that ranking.
    """

    def __init__(self, pool: Pool, lam: float, device: torch.device, store_dtype: torch.dtype, prune: bool,
                 tie_tolerance: float, max_row_frames: int, max_col_frames: int) -> None:
        self.pool, self.lam, self.tie_tolerance = pool, lam, tie_tolerance
        self.max_rows, self.max_cols = max_row_frames, max_col_frames
        self.compute_dtype = torch.float64 if store_dtype == torch.float64 else torch.float32
        # No copy when the caller's frames are float32 on the CPU already.
        self.store = torch.from_numpy(pool.frames).to(device=device, dtype=store_dtype)
        self.store_sq = squared_norms(self.store, self.compute_dtype)
        self.offsets = pool.offsets
        self.frame_lengths = np.diff(pool.offsets)
        n_videos = pool.size

        self.candidate = pool.candidates()
        self.distance_sum = np.zeros(n_videos, dtype=np.float64)
        self.watermark = np.zeros(n_videos, dtype=np.int64)
        self.selected = _PackedVideos(self.store, self.store_sq, self.offsets)
        self.selected.append(pool.initial)
        max_norm = float(self.store_sq.max().sqrt())
        self.error_allowance = distance_error_bound(pool.dim, max_norm, self.compute_dtype)
        self.evaluations = 0
        self.active_peak = 0

        self.full_block: FrameBlock | None = None
        self.active: _PackedVideos | None = None
        self.bounds: CentroidBounds | None = None
        if prune:
            self.bounds = CentroidBounds(self.store, self.offsets)
            key = np.where(self.candidate, pool.difficulty, -np.inf) + lam * self.bounds.max_distance()
            self.order = np.lexsort((np.arange(n_videos), -key))  # key descending, index ascending
            self.row_of = np.empty(n_videos, dtype=np.int64)
            self.row_of[self.order] = np.arange(n_videos)
            self.key_by_row = key[self.order]
            self.bounds.reorder(self.order)
            self.bound_missing = np.zeros(n_videos, dtype=np.float64)
            self.bound_watermark = np.zeros(n_videos, dtype=np.int64)
            self.active = _PackedVideos(self.store, self.store_sq, self.offsets)
        else:
            self._enter_full_mode()

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
        stats = {"mode": "full" if self.full_block is not None else "pruned",
                 "active_peak_videos": self.active_peak if self.full_block is None else self.pool.size}
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
        if self.full_block is None:
            self._activate_competitors(k, candidates)
        current = candidates[self.watermark[candidates] == k]
        values = self._objectives(current, k)
        w = winner(current, values, self.tie_tolerance)
        if self.full_block is None:
            self._maybe_shrink_active(k, float(values.max()))
        pick = int(current[w])
        return pick, float(values[w]), float(self.distance_sum[pick] / k)

    def _add_distances_to_newest(self) -> None:
        """distance_sum += D(x, newest pick) for every up-to-date video, in one batched pass."""
        k = self.selected.count_videos()
        ids: slice | np.ndarray
        if self.full_block is not None:
            block, ids, count = self.full_block, slice(None), self.pool.size
        else:
            assert self.active is not None  # there is an active set until full mode
            block, ids = self.active.block(), self.active.ids
            count = len(ids)
            if count == 0:
                return
        newest = self.selected.block().video_range(k - 1, k)
        distances = chamfer_matrix(block, newest, self.compute_dtype, max_rows=self.max_rows, max_cols=self.max_cols)
        self.distance_sum[ids] += distances[:, 0].cpu().numpy()
        self.watermark[ids] = k
        if self.full_block is None:
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
            if self.full_block is not None:
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
        if self.active.frame_count + self.frame_lengths[ids].sum() > _FULL_MODE_FRACTION * self.store.shape[0]:
            self._enter_full_mode()
            return
        ids = ids[np.argsort(self.watermark[ids], kind="stable")]
        first = self.active.count_videos()
        self.active.append(ids)
        self.active_peak = max(self.active_peak, self.active.count_videos())
        self._catch_up(ids, k, self.active.block().video_range(first, first + len(ids)))

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
        self.active = None
        self.full_block = FrameBlock(self.store, self.store_sq, self.offsets)

    def _catch_up_gathered(self, ids: np.ndarray, k: int) -> None:
        packed = _PackedVideos(self.store, self.store_sq, self.offsets)
        packed.append(ids)
        self._catch_up(ids, k, packed.block())

    def _catch_up(self, ids: np.ndarray, k: int, rows: FrameBlock) -> None:
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
