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
    _plans: dict = field(default_factory=dict, repr=False)

    @property
    def count(self) -> int:
        return len(self.offsets) - 1

    def video_range(self, start: int, stop: int) -> FrameBlock:
        """The block of videos [start, stop), sharing memory."""
        first, last = int(self.offsets[start]), int(self.offsets[stop])
        return FrameBlock(self.frames[first:last], self.sq_norms[first:last], self.offsets[start : stop + 1] - first)

    def chunks(self, max_frames: int) -> list[_Chunk]:
        """Consecutive runs of whole videos with at most ``max_frames`` frames (or one longer video)."""
        plan = self._plans.get(max_frames)
        if plan is None:
            plan = []
            start = 0
            while start < self.count:
                stop = int(np.searchsorted(self.offsets, self.offsets[start] + max_frames, side="right")) - 1
                stop = min(max(stop, start + 1), self.count)
                plan.append(_Chunk.make(self.offsets, start, stop, self.frames.device))
                start = stop
            self._plans[max_frames] = plan
        return plan


@dataclass
class _Chunk:
    """Videos [start, stop) of a block and what segment reductions over them need."""

    start: int
    stop: int
    first_frame: int
    last_frame: int
    uniform_length: int | None  # all videos have this many frames, or None (ragged)
    lengths: torch.Tensor  # (videos,) int64 on the device
    video_of_frame: torch.Tensor | None  # (frames,) int64 local video index, ragged chunks only

    @classmethod
    def make(cls, offsets: np.ndarray, start: int, stop: int, device: torch.device) -> _Chunk:
        lengths = np.diff(offsets[start : stop + 1])
        uniform = int(lengths[0]) if (lengths == lengths[0]).all() else None
        video_of_frame = None
        if uniform is None:
            video_of_frame = torch.from_numpy(np.repeat(np.arange(len(lengths)), lengths)).to(device)
        return cls(start, stop, int(offsets[start]), int(offsets[stop]), uniform,
                   torch.from_numpy(lengths.astype(np.int64)).to(device), video_of_frame)

    @property
    def videos(self) -> int:
        return self.stop - self.start


def make_block(frames: torch.Tensor, offsets: np.ndarray, compute_dtype: torch.dtype,
               sq_norms: torch.Tensor | None = None) -> FrameBlock:
    if sq_norms is None:
        sq_norms = squared_norms(frames, compute_dtype)
    return FrameBlock(frames, sq_norms, np.asarray(offsets, dtype=np.int64))


def squared_norms(frames: torch.Tensor, compute_dtype: torch.dtype, chunk: int = 65536) -> torch.Tensor:
    """|x|^2 per frame in the compute dtype, without upcasting the whole store at once."""
    out = torch.empty(frames.shape[0], dtype=compute_dtype, device=frames.device)
    for start in range(0, frames.shape[0], chunk):
        part = frames[start : start + chunk].to(compute_dtype)
        out[start : start + chunk] = (part * part).sum(dim=1)
    return out


def _min_over_rows(d2: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
    """(rows, cols) -> (row videos, cols): min over each row video's frames."""
    if chunk.uniform_length is not None:
        return d2.view(chunk.videos, chunk.uniform_length, d2.shape[1]).amin(dim=1)
    return torch.segment_reduce(d2, "min", lengths=chunk.lengths, axis=0)


def _min_over_cols(d2: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
    """(rows, cols) -> (rows, col videos): min over each column video's frames."""
    if chunk.uniform_length is not None:
        if chunk.videos == 1:
            return d2.amin(dim=1, keepdim=True)
        return d2.view(d2.shape[0], chunk.videos, chunk.uniform_length).amin(dim=2)
    return torch.segment_reduce(d2.t().contiguous(), "min", lengths=chunk.lengths, axis=0).t()


def _sum_over_rows(values: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
    if chunk.uniform_length is not None:
        return values.view(chunk.videos, chunk.uniform_length, values.shape[1]).sum(dim=1)
    out = values.new_zeros((chunk.videos, values.shape[1]))
    return out.index_add_(0, chunk.video_of_frame, values)


def _sum_over_cols(values: torch.Tensor, chunk: _Chunk) -> torch.Tensor:
    if chunk.uniform_length is not None:
        return values.view(values.shape[0], chunk.videos, chunk.uniform_length).sum(dim=2)
    out = values.new_zeros((values.shape[0], chunk.videos))
    return out.index_add_(1, chunk.video_of_frame, values)


def _refine_close_pairs(d2: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor,
                        row_sq: torch.Tensor, col_sq_max: torch.Tensor) -> None:
    """Recompute in float64, from explicit differences, the entries prone to cancellation."""
    threshold = (row_sq + col_sq_max) * REFINE_RATIO
    flagged = d2 < threshold.unsqueeze(1)
    if not bool(flagged.any()):
        return
    row_index, col_index = flagged.nonzero(as_tuple=True)
    for start in range(0, len(row_index), _REFINE_BATCH):
        i = row_index[start : start + _REFINE_BATCH]
        j = col_index[start : start + _REFINE_BATCH]
        diff = rows[i].to(torch.float64) - cols[j].to(torch.float64)
        d2[i, j] = (diff * diff).sum(dim=1).to(d2.dtype)


def chamfer_matrix(rows: FrameBlock, cols: FrameBlock, compute_dtype: torch.dtype = torch.float32, *,
                   max_rows: int = 4096, max_cols: int = 2048) -> torch.Tensor:
    """D(R_i, Q_j) for every row video i and column video j, float64 (m, n) on the device."""
    out = torch.empty((rows.count, cols.count), dtype=torch.float64, device=rows.frames.device)
    col_chunks = cols.chunks(max_cols)
    for col_chunk in col_chunks:
        q = cols.frames[col_chunk.first_frame : col_chunk.last_frame].to(compute_dtype)
        q_sq = cols.sq_norms[col_chunk.first_frame : col_chunk.last_frame]
        q_sq_max = q_sq.max()
        q_lengths = col_chunk.lengths.to(torch.float64)
        for row_chunk in rows.chunks(max_rows):
            r = rows.frames[row_chunk.first_frame : row_chunk.last_frame].to(compute_dtype)
            r_sq = rows.sq_norms[row_chunk.first_frame : row_chunk.last_frame]
            # d2 = |x|^2 - 2 x.y + |y|^2 for every frame pair of the two chunks
            d2 = torch.addmm(r_sq.unsqueeze(1), r, q.t(), beta=1, alpha=-2)
            d2 += q_sq.unsqueeze(0)
            _refine_close_pairs(d2, r, q, r_sq, q_sq_max)
            d2.clamp_min_(0)
            # row frames -> nearest frame of each column video, averaged over each row video
            nearest_in_col = _min_over_cols(d2, col_chunk).to(torch.float64).sqrt_()
            row_side = _sum_over_rows(nearest_in_col, row_chunk) / row_chunk.lengths.to(torch.float64).unsqueeze(1)
            # column frames -> nearest frame of each row video, averaged over each column video
            nearest_in_row = _min_over_rows(d2, row_chunk).to(torch.float64).sqrt_()
            col_side = _sum_over_cols(nearest_in_row, col_chunk) / q_lengths.unsqueeze(0)
            out[row_chunk.start : row_chunk.stop, col_chunk.start : col_chunk.stop] = (row_side + col_side) * 0.5
    return out
