"""Checking and packing the inputs of a selection run.

Both greedy implementations go through ``prepare_pool`` so that every bad input fails
the same way, with a typed ``SelectionError`` naming the offending video, before any
work is done. Frames end up packed: one (total_frames, dim) array plus offsets, the
layout the batched kernel needs and the cheapest one to hold 100k videos.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .errors import BudgetError, DifficultyError, EmptyPoolError, FrameError, InitialSetError, LambdaError

DEFAULT_DIFFICULTY_RANGE = (1.0, 5.0)
_SHOWN = 5  # offending indices listed in an error message
_CHECK_ROWS = 65536  # frames checked for NaN/inf at a time


@dataclass(frozen=True)
class PoolLayout:
    """A validated pool without its frames: offsets, per-video difficulty, the labeled seed."""

    offsets: np.ndarray  # (n_videos + 1,) int64; video i owns frames[offsets[i]:offsets[i+1]]
    difficulty: np.ndarray  # (n_videos,) float64; entries of seed videos are not used
    initial: np.ndarray  # (n_initial,) int64 pool indices, in the given order

    @property
    def size(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def candidates(self) -> np.ndarray:
        """Boolean mask of the videos that may be picked (everything outside the seed)."""
        mask = np.ones(self.size, dtype=bool)
        mask[self.initial] = False
        return mask


@dataclass(frozen=True)
class Pool(PoolLayout):
    """A validated pool with its packed frames in memory."""

    frames: np.ndarray  # (total_frames, dim), float32 or float64, C-contiguous

    @property
    def dim(self) -> int:
        return int(self.frames.shape[1])

    def video_frames(self, index: int) -> np.ndarray:
        return self.frames[self.offsets[index] : self.offsets[index + 1]]


def _listed(indices: np.ndarray) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:_SHOWN])
    return shown + (f" and {len(indices) - _SHOWN} more" if len(indices) > _SHOWN else "")


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def pack_frames(frames, offsets=None) -> tuple[np.ndarray, np.ndarray]:
    """Ragged frame sets to (packed frames, offsets), checking shapes and values.

    ``frames`` is either a sequence of (n_i, dim) arrays, or one packed (total, dim)
    array together with ``offsets`` (n_videos + 1 increasing integers from 0 to total).
    """
    if offsets is None:
        if isinstance(frames, np.ndarray) or hasattr(frames, "detach"):
            raise FrameError("a packed frames array needs offsets; pass a list of (frames, dim) arrays otherwise")
        sets = [_to_numpy(item) for item in frames]
        if not sets:
            raise EmptyPoolError("the pool is empty: no frame sets given")
        for index, item in enumerate(sets):
            if item.ndim != 2:
                raise FrameError(f"video {index}: frames must be a (frames, dim) array, got shape {item.shape}")
            if item.shape[0] == 0:
                raise FrameError(f"video {index}: has no frames")
        dims = {item.shape[1] for item in sets}
        if len(dims) > 1:
            first = sets[0].shape[1]
            other = next(i for i, item in enumerate(sets) if item.shape[1] != first)
            raise FrameError(f"frame dimensions differ: video 0 has {first}, video {other} has {sets[other].shape[1]}")
        lengths = np.array([item.shape[0] for item in sets], dtype=np.int64)
        offsets_array = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        dtype = np.result_type(*[item.dtype for item in sets])
        packed = np.concatenate(sets, axis=0)
    else:
        packed = _to_numpy(frames)
        if packed.ndim != 2:
            raise FrameError(f"packed frames must be a (total_frames, dim) array, got shape {packed.shape}")
        offsets_array = check_offsets(offsets, packed.shape[0])
        dtype = packed.dtype
    if packed.shape[1] == 0:
        raise FrameError("frames have dimension 0")
    if not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
        raise FrameError(f"frames must be real numbers, got dtype {dtype}")
    if dtype not in (np.float32, np.float64):
        packed = packed.astype(np.float64 if np.dtype(dtype).itemsize > 4 else np.float32)
    packed = np.ascontiguousarray(packed)
    bad_chunks = [start + np.flatnonzero(~np.isfinite(packed[start : start + _CHECK_ROWS]).all(axis=1))
                  for start in range(0, packed.shape[0], _CHECK_ROWS)]  # chunked: no full-size mask
    bad_rows = np.concatenate(bad_chunks) if bad_chunks else np.zeros(0, dtype=np.int64)
    if len(bad_rows):
        bad_videos = np.unique(np.searchsorted(offsets_array, bad_rows, side="right") - 1)
        raise FrameError(f"frames hold NaN or infinite values in videos {_listed(bad_videos)}")
    return packed, offsets_array


def check_offsets(offsets, total_frames: int) -> np.ndarray:
    """Offsets of packed frames: n_videos + 1 increasing integers from 0 to ``total_frames``."""
    offsets_array = _to_numpy(offsets)
    if offsets_array.ndim != 1 or len(offsets_array) < 1 or not np.issubdtype(offsets_array.dtype, np.integer):
        raise FrameError("offsets must be a 1-D integer array of n_videos + 1 entries")
    offsets_array = offsets_array.astype(np.int64)
    if len(offsets_array) == 1:
        raise EmptyPoolError("the pool is empty: offsets describe no video")
    if offsets_array[0] != 0 or offsets_array[-1] != total_frames:
        raise FrameError(f"offsets must run from 0 to the number of frames ({total_frames})")
    empty = np.flatnonzero(np.diff(offsets_array) <= 0)
    if len(empty):
        raise FrameError(f"videos with no frames (or decreasing offsets): {_listed(empty)}")
    return offsets_array


def check_budget(budget) -> int:
    if isinstance(budget, bool) or not isinstance(budget, numbers.Integral):
        raise BudgetError(f"budget must be an integer, got {budget!r}")
    if budget < 0:
        raise BudgetError(f"budget must be >= 0, got {budget}")
    return int(budget)


def check_lambda(lam) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise LambdaError(f"lambda must be a number, got {lam!r}") from None
    if not np.isfinite(value) or value < 0:
        raise LambdaError(f"lambda must be a finite number >= 0, got {lam!r}")
    return value


def check_initial(initial: Sequence[int], size: int) -> np.ndarray:
    array = (_to_numpy(initial) if hasattr(initial, "detach") else np.asarray(list(initial))).reshape(-1)
    if array.size == 0:
        return np.zeros(0, dtype=np.int64)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise InitialSetError(f"the initial set must hold integer pool indices, got dtype {array.dtype}")
    outside = array[(array < 0) | (array >= size)]
    if len(outside):
        raise InitialSetError(f"initial indices outside the pool of {size}: {_listed(outside)}")
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise InitialSetError(f"initial set names videos more than once: {_listed(unique[counts > 1])}")
    return array.astype(np.int64)


def check_difficulty(difficulty, size: int, candidates: np.ndarray,
                     allowed_range: tuple[float, float] | None) -> np.ndarray:
    """Difficulty as float64; NaN/inf or out-of-range values of candidates are errors."""
    try:
        values = np.asarray(_to_numpy(difficulty), dtype=np.float64)
    except (TypeError, ValueError):
        raise DifficultyError("difficulty must be a 1-D sequence of numbers") from None
    if values.ndim != 1 or len(values) != size:
        raise DifficultyError(f"difficulty has shape {values.shape}, expected ({size},): one score per video")
    checked = values[candidates]
    positions = np.flatnonzero(candidates)
    bad = positions[~np.isfinite(checked)]
    if len(bad):
        raise DifficultyError(f"difficulty is NaN, infinite or missing for videos {_listed(bad)}")
    if allowed_range is not None:
        low, high = allowed_range
        outside = positions[(checked < low) | (checked > high)]
        if len(outside):
            raise DifficultyError(
                f"difficulty outside [{low:g}, {high:g}] for videos {_listed(outside)} "
                f"(e.g. {values[outside[0]]!r}); fix or re-score them, or widen the allowed range")
    return values


def prepare_pool(difficulty, frames, *, offsets=None, initial: Sequence[int] = (),
                 difficulty_range: tuple[float, float] | None = DEFAULT_DIFFICULTY_RANGE) -> Pool:
    """Validate everything and return the packed pool."""
    packed, offsets_array = pack_frames(frames, offsets)
    layout = prepare_layout(difficulty, offsets_array, packed.shape[0], initial=initial,
                            difficulty_range=difficulty_range)
    return Pool(frames=packed, offsets=layout.offsets, difficulty=layout.difficulty, initial=layout.initial)


def prepare_layout(difficulty, offsets, total_frames: int, *, initial: Sequence[int] = (),
                   difficulty_range: tuple[float, float] | None = DEFAULT_DIFFICULTY_RANGE) -> PoolLayout:
    """Validate a pool whose frames are elsewhere (a file): offsets, difficulty and seed.

    The frames themselves (finite values, their dimension) are checked as they are read."""
    offsets_array = check_offsets(offsets, total_frames)
    size = len(offsets_array) - 1
    initial_array = check_initial(initial, size)
    candidates = np.ones(size, dtype=bool)
    candidates[initial_array] = False
    values = check_difficulty(difficulty, size, candidates, difficulty_range)
    return PoolLayout(offsets=offsets_array, difficulty=values, initial=initial_array)
