"""Batched symmetric Chamfer distances between two groups of videos, in torch.

For row videos R_1..R_m and column videos Q_1..Q_n (packed frames + offsets) this
computes the m x n matrix D(R_i, Q_j) chunk by chunk: one matrix product per chunk
gives all squared frame distances |x|^2 + |y|^2 - 2 x.y, then segment reductions
(min over a video's frames, mean over the other video's frames) in both directions.
Memory is one chunk of frame distances at a time, whatever m and n are.

Accuracy: the expansion loses relative accuracy when x and y are close compared with
their norms (cancellation); a float32 product then gives a distance of ~1e-3 between
identical frames instead of 0. Every entry with d^2 < REFINE_RATIO * (|x|^2 + max|y|^2)
is therefore recomputed from the explicit difference in float64, so identical frames
are exactly 0 apart and the error of the remaining entries is bounded by
``distance_error_bound``. Minima are taken on squared distances, square roots and
sums in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

REFINE_RATIO = 2.0**-7
_REFINE_BATCH = 8192  # flagged pairs recomputed at a time (bounds the float64 scratch memory)
_UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}


def distance_error_bound(dim: int, max_norm: float, compute_dtype: torch.dtype = torch.float32) -> float:
    """Worst-case |computed - exact| of a frame distance (hence of a Chamfer distance).

    Rigorous dot-product rounding bound gamma_d = d * u on |x|^2, |y|^2 and x.y, applied
    to the entries that are not refined (d^2 >= REFINE_RATIO * S with S <= 2 max_norm^2);
    the typical error is orders of magnitude smaller.
    """
    gamma = (2 * dim + 8) * _UNIT_ROUNDOFF[compute_dtype]
    scale = max(max_norm, 1e-30)
    return gamma * 2.0 * scale**2 / math.sqrt(REFINE_RATIO * scale**2) + 1e-12 * scale


@dataclass
class FrameBlock:
    """Packed frames of some videos: frames (F, d) in the store dtype, squared norms, offsets."""

    frames: torch.Tensor
    sq_norms: torch.Tensor  # (F,) in the compute dtype
    offsets: np.ndarray  # (m + 1,) int64, offsets[0] == 0
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    def video_range(self, start: int, stop: int) -> FrameBlock:
        """The block of videos [start, stop), sharing memory."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return FrameBlock(self.frames[first:last], self.sq_norms[first:last], self.offsets[start : stop + 1] - first)

    @property
    def segments(self) -> _Segments:
        if "segments" not in self._cache:
            self._cache["segments"] = _Segments.make(self.offsets, self.frames.device)
        return self._cache["segments"]

    def chunks(self, max_frames: int) -> list[tuple[int, int]]:
        """Consecutive runs [start, stop) of whole videos with at most ``max_frames`` frames (or one longer video)."""
        key = ("chunks", max_frames)
        if key not in self._cache:
            plan, start = [], 0
            while start < self.count:
                stop = int(np.searchsorted(self.offsets, self.offsets[start] + max_frames, side="right")) - 1
                stop = min(max(stop, start + 1), self.count)
                plan.append((start, stop))
                start = stop
            self._cache[key] = plan
        return self._cache[key]


@dataclass
class _Segments:
    """What segment reductions over a block's videos need."""

    uniform_length: int | None  # every video has this many frames, or None (ragged)
    lengths: torch.Tensor  # (videos,) int64 on the device
    video_of_frame: torch.Tensor | None  # (frames,) int64, ragged blocks only

    @classmethod
    def make(cls, offsets: np.ndarray, device: torch.device) -> _Segments:
        lengths = np.diff(offsets)
        uniform = int(lengths[0]) if len(lengths) and (lengths == lengths[0]).all() else None
        video_of_frame = None
        if uniform is None:
            video_of_frame = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths)).to(device)
        return cls(uniform, torch.from_numpy(lengths.astype(np.int64)).to(device), video_of_frame)


def make_block(frames: torch.Tensor, offsets: np.ndarray, compute_dtype: torch.dtype,
               sq_norms: torch.Tensor | None = None) -> FrameBlock:
    if sq_norms is None:
        sq_norms = squared_norms(frames, compute_dtype)
    return FrameBlock(frames, sq_norms, np.asarray(offsets, dtype=np.int64))


def squared_norms(frames: torch.Tensor, compute_dtype: torch.dtype, chunk: int = 8192) -> torch.Tensor:
    """|x|^2 per frame in the compute dtype, without upcasting the whole store at once."""
    out = torch.empty(frames.shape[0], dtype=compute_dtype, device=frames.device)
    for start in range(0, frames.shape[0], chunk):
        part = frames[start : start + chunk].to(compute_dtype)
        torch.linalg.vecdot(part, part, out=out[start : start + chunk])
    return out


def _min_over_row_videos(d2: torch.Tensor, seg: _Segments, first: int, stop: int, out: torch.Tensor) -> None:
    """(rows of videos [first, stop), cols) -> (stop - first, cols): min over each row video's frames."""
    if seg.uniform_length is not None:
        torch.amin(d2.view(stop - first, seg.uniform_length, d2.shape[1]), dim=1, out=out)
    else:
        out.copy_(torch.segment_reduce(d2, "min", lengths=seg.lengths[first:stop], axis=0))


def _min_over_col_videos(d2: torch.Tensor, seg: _Segments, out: torch.Tensor) -> None:
    """(rows, cols of all column videos) -> (rows, column videos): min over each column video's frames."""
    if seg.uniform_length is not None:
        torch.amin(d2.view(d2.shape[0], -1, seg.uniform_length), dim=2, out=out)
    else:
        out.copy_(torch.segment_reduce(d2.t().contiguous(), "min", lengths=seg.lengths, axis=0).t())


def _sum_over_row_videos(values: torch.Tensor, seg: _Segments) -> torch.Tensor:
    if seg.uniform_length is not None:
        return values.view(-1, seg.uniform_length, values.shape[1]).sum(dim=1)
    assert seg.video_of_frame is not None  # set exactly when the block is ragged
    return values.new_zeros((len(seg.lengths), values.shape[1])).index_add_(0, seg.video_of_frame, values)


def _sum_over_col_videos(values: torch.Tensor, seg: _Segments) -> torch.Tensor:
    if seg.uniform_length is not None:
        return values.view(values.shape[0], -1, seg.uniform_length).sum(dim=2)
    assert seg.video_of_frame is not None  # set exactly when the block is ragged
    return values.new_zeros((values.shape[0], len(seg.lengths))).index_add_(1, seg.video_of_frame, values)


def _refine_close_pairs(d2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                        row_sq: torch.Tensor, col_sq_max: torch.Tensor) -> None:
    """Recompute in float64, from explicit differences, the entries prone to cancellation."""
    flagged = d2 < ((row_sq + col_sq_max) * REFINE_RATIO).unsqueeze(1)
    row_index, col_index = flagged.nonzero(as_tuple=True)
    for start in range(0, len(row_index), _REFINE_BATCH):
        i = row_index[start : start + _REFINE_BATCH]
        j = col_index[start : start + _REFINE_BATCH]
        diff = rows[i].to(torch.float64) - cols[j].to(torch.float64)
        d2[i, j] = (diff * diff).sum(dim=1).to(d2.dtype)


def chamfer_matrix(rows: FrameBlock, cols: FrameBlock, compute_dtype: torch.dtype = torch.float32, *,
                   max_rows: int = 4096, max_cols: int = 2048) -> torch.Tensor:
    """D(R_i, Q_j) for every row video i and column video j, float64 (m, n) on the device."""
    device = rows.frames.device
    out = torch.empty((rows.count, cols.count), dtype=torch.float64, device=device)
    row_seg = rows.segments
    row_lengths = row_seg.lengths.to(torch.float64).unsqueeze(1)
    # Few rows (catching a handful of videos up with many picks): wider column chunks, same block size.
    max_cols = max(max_cols, (max_rows * max_cols) // max(min(rows.frames.shape[0], max_rows), 1))
    for col_start, col_stop in cols.chunks(max_cols):
        col_block = cols.video_range(col_start, col_stop)
        col_seg = col_block.segments
        q = col_block.frames.to(compute_dtype)
        q_sq = col_block.sq_norms
        q_sq_max = q_sq.max()
        # Per row frame: min squared distance to each column video; per row video: to each column frame.
        row_min = torch.empty((rows.frames.shape[0], col_block.count), dtype=compute_dtype, device=device)
        col_min = torch.empty((rows.count, q.shape[0]), dtype=compute_dtype, device=device)
        for start, stop in rows.chunks(max_rows):
            first, last = int(rows.offsets[start]), int(rows.offsets[stop])
            r = rows.frames[first:last].to(compute_dtype)
            r_sq = rows.sq_norms[first:last]
            d2 = torch.addmm(r_sq.unsqueeze(1), r, q.t(), beta=1, alpha=-2)  # |x|^2 - 2 x.y
            d2 += q_sq  # + |y|^2
            _min_over_col_videos(d2, col_seg, row_min[first:last])
            # Every entry is >= some row minimum: if no minimum is small, no entry suffers cancellation.
            if float(row_min[first:last].min()) < float((r_sq.max() + q_sq_max) * REFINE_RATIO):
                _refine_close_pairs(d2, r, q, r_sq, q_sq_max)
                _min_over_col_videos(d2, col_seg, row_min[first:last])
            _min_over_row_videos(d2, row_seg, start, stop, col_min[start:stop])
        nearest_in_col = row_min.clamp_min_(0).to(torch.float64).sqrt_()
        row_side = _sum_over_row_videos(nearest_in_col, row_seg) / row_lengths
        nearest_in_row = col_min.clamp_min_(0).to(torch.float64).sqrt_()
        col_side = _sum_over_col_videos(nearest_in_row, col_seg) / col_seg.lengths.to(torch.float64).unsqueeze(0)
        out[:, col_start:col_stop] = (row_side + col_side) * 0.5
    return out
