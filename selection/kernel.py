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

Reproducibility: MKL's matrix product rounds differently depending on where its operands
start in memory (a float32 row chunk 120 bytes into the store and the same frames in a
fresh buffer differ in the last bit). Operands are therefore always 64-byte aligned
(``OperandScratch``), so a chunk's distances depend on its values only, not on whether
it is a view of the whole pool or a window read from disk.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

REFINE_RATIO = 2.0**-7
_REFINE_BATCH = 8192  # flagged pairs recomputed at a time (bounds the float64 scratch memory)
_UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
OPERAND_ALIGNMENT = 64  # bytes; the alignment at which MKL's products no longer depend on the address


def distance_error_bound(dim: int, max_norm: float, compute_dtype: torch.dtype = torch.float32) -> float:
    """Worst-case |computed - exact| of a frame distance (hence of a Chamfer distance).

    Rigorous dot-product rounding bound gamma_d = d * u on |x|^2, |y|^2 and x.y, applied
    to the entries that are not refined (d^2 >= REFINE_RATIO * S with S <= 2 max_norm^2);
    the typical error is orders of magnitude smaller.
    """
    gamma = (2 * dim + 8) * _UNIT_ROUNDOFF[compute_dtype]
    scale = max(max_norm, 1e-30)
    return gamma * 2.0 * scale**2 / math.sqrt(REFINE_RATIO * scale**2) + 1e-12 * scale


# (unit roundoff, half the spacing of the subnormals) of the approximate store dtypes
_STORE_ROUNDING = {torch.float16: (2.0**-11, 2.0**-25), torch.bfloat16: (2.0**-8, 2.0**-134)}


def store_rounding_error(store_dtype: torch.dtype, dim: int, max_stored_norm: float) -> float:
    """Bound E on ||x - x~|| for every frame x stored as x~ in a half-precision ``store_dtype`` (0 otherwise).

    Round-to-nearest moves each component by at most u |x_i| in the normal range and by half
    the subnormal spacing s below it, so ||x - x~|| <= u ||x|| + s sqrt(d). With ||x|| <=
    (||x~|| + s sqrt(d)) / (1 - u) this is bounded from the stored norms, which is all a run
    sees. Values beyond the dtype's range become inf and are refused, never bounded.
    For float16 (u = 2^-11) and unit-norm 512-d frames: E = 4.9e-4; bfloat16 (u = 2^-8): 3.9e-3.
    """
    if store_dtype not in _STORE_ROUNDING:
        return 0.0
    unit, subnormal = _STORE_ROUNDING[store_dtype]
    floor = subnormal * math.sqrt(dim)
    return unit * (max_stored_norm + floor) / (1 - unit) + floor


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
            self._cache[key] = chunk_plan(self.offsets, max_frames)
        return self._cache[key]

    def chunk_blocks(self, max_frames: int) -> list[tuple[int, int, FrameBlock]]:
        """``chunks`` with their blocks (kept, with their segments, for the next call)."""
        key = ("chunk_blocks", max_frames)
        if key not in self._cache:
            self._cache[key] = [(start, stop, self.video_range(start, stop)) for start, stop in self.chunks(max_frames)]
        return self._cache[key]


def chunk_plan(offsets: np.ndarray, max_frames: int) -> list[tuple[int, int]]:
    """Runs [start, stop) of consecutive videos, greedily from the first: at most ``max_frames``
    frames each, or one longer video. ``offsets`` are those of the videos (offsets[0] may be > 0)."""
    plan, start, count = [], 0, len(offsets) - 1
    while start < count:
        stop = int(np.searchsorted(offsets, offsets[start] + max_frames, side="right")) - 1
        stop = min(max(stop, start + 1), count)
        plan.append((start, stop))
        start = stop
    return plan


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


class OperandScratch:
    """Reused aligned room for copies of matmul operands (one per operand role and kernel call)."""

    def __init__(self) -> None:
        self._storage: torch.Tensor | None = None

    def place(self, frames: torch.Tensor, compute_dtype: torch.dtype) -> torch.Tensor:
        """``frames`` in the compute dtype, contiguous and OPERAND_ALIGNMENT-aligned: itself when it
        already is, else a copy here (chunk-sized: the kernel holds one row and one column chunk)."""
        if (frames.dtype == compute_dtype and frames.is_contiguous()
                and frames.data_ptr() % OPERAND_ALIGNMENT == 0):
            return frames
        itemsize = torch.empty((), dtype=compute_dtype).element_size()
        storage = self._storage
        if (storage is None or storage.dtype != compute_dtype or storage.device != frames.device
                or storage.numel() < frames.numel() + OPERAND_ALIGNMENT // itemsize):
            storage = torch.empty(frames.numel() + OPERAND_ALIGNMENT // itemsize, dtype=compute_dtype,
                                  device=frames.device)
            self._storage = storage
        shift = (-storage.data_ptr() % OPERAND_ALIGNMENT) // itemsize
        out = storage[shift : shift + frames.numel()].view(frames.shape)
        out.copy_(frames)
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


def column_parts(cols: FrameBlock, row_frames: int, *, max_rows: int = 4096, max_cols: int = 2048) -> list[ColumnPart]:
    """The column chunks of ``cols`` for rows of ``row_frames`` frames in all.

    Few rows (catching a handful of videos up with many picks) get wider column chunks, same
    block size. The plan depends only on the whole row count, so rows processed window by
    window (a store streamed from disk) see exactly the column chunks of one in-memory call.
    """
    widened = max(max_cols, (max_rows * max_cols) // max(min(row_frames, max_rows), 1))
    parts = []
    for start, stop in cols.chunks(widened):
        block = cols.video_range(start, stop)
        parts.append(ColumnPart(start, stop, block, block.sq_norms.max()))
    return parts


@dataclass
class ColumnPart:
    """One column chunk: videos [start, stop) of the column block."""

    start: int
    stop: int
    block: FrameBlock
    sq_max: torch.Tensor  # largest squared norm of its frames (0-d, compute dtype)


def chamfer_rows(rows: FrameBlock, parts: list[ColumnPart], compute_dtype: torch.dtype = torch.float32, *,
                 max_rows: int = 4096) -> torch.Tensor:
    """D(R_i, Q_j) for the row videos against prepared column chunks, float64 (m, n) on the device.

    Row chunks are ``rows.chunks(max_rows)``; each (row chunk, column chunk) pair is computed
    on its own, reductions included, so a row chunk's distances depend on its own frames and
    the column plan only: the result of a block equals, bit for bit, the concatenation of
    the results of consecutive runs of its chunks (what streaming windows compute).
    """
    device = rows.frames.device
    n_cols = parts[-1].stop if parts else 0
    out = torch.empty((rows.count, n_cols), dtype=torch.float64, device=device)
    row_scratch, col_scratch = OperandScratch(), OperandScratch()
    for start, stop, chunk in rows.chunk_blocks(max_rows):
        row_seg = chunk.segments
        row_lengths = row_seg.lengths.to(torch.float64).unsqueeze(1)
        r = row_scratch.place(chunk.frames, compute_dtype)
        r_sq = chunk.sq_norms
        r_sq_max = r_sq.max()
        for part in parts:
            col_block = part.block
            col_seg = col_block.segments
            q = col_scratch.place(col_block.frames, compute_dtype)
            q_sq = col_block.sq_norms
            d2 = torch.addmm(r_sq.unsqueeze(1), r, q.t(), beta=1, alpha=-2)  # |x|^2 - 2 x.y
            d2 += q_sq  # + |y|^2
            # Per row frame: min squared distance to each column video; per row video: to each column frame.
            row_min = torch.empty((r.shape[0], col_block.count), dtype=compute_dtype, device=device)
            col_min = torch.empty((chunk.count, q.shape[0]), dtype=compute_dtype, device=device)
            _min_over_col_videos(d2, col_seg, row_min)
            # Every entry is >= some row minimum: if no minimum is small, no entry suffers cancellation.
            if float(row_min.min()) < float((r_sq_max + part.sq_max) * REFINE_RATIO):
                _refine_close_pairs(d2, r, q, r_sq, part.sq_max)
                _min_over_col_videos(d2, col_seg, row_min)
            _min_over_row_videos(d2, row_seg, 0, chunk.count, col_min)
            nearest_in_col = row_min.clamp_min_(0).to(torch.float64).sqrt_()
            row_side = _sum_over_row_videos(nearest_in_col, row_seg) / row_lengths
            nearest_in_row = col_min.clamp_min_(0).to(torch.float64).sqrt_()
            col_side = _sum_over_col_videos(nearest_in_row, col_seg) / col_seg.lengths.to(torch.float64).unsqueeze(0)
            out[start:stop, part.start : part.stop] = (row_side + col_side) * 0.5
    return out


def chamfer_matrix(rows: FrameBlock, cols: FrameBlock, compute_dtype: torch.dtype = torch.float32, *,
                   max_rows: int = 4096, max_cols: int = 2048) -> torch.Tensor:
    """D(R_i, Q_j) for every row video i and column video j, float64 (m, n) on the device."""
    parts = column_parts(cols, rows.frames.shape[0], max_rows=max_rows, max_cols=max_cols)
    return chamfer_rows(rows, parts, compute_dtype, max_rows=max_rows)
