"""Where a selection run's frames live, and how many bytes of them it holds at once.

The greedy (``greedy.py``) reads frames through one of two stores, which give it the same
frames in the same blocks:

* ``MemoryStore``: the packed frames as one tensor (on the CPU the caller's float32 array
  itself, no copy). The whole pool is one block.
* ``StreamedStore``: the packed frames stay in a ``.npy`` file (``framefile.FrameFile``) and
  are read on demand, a window of whole videos at a time, into buffers of a ``WorkingSet``.

``WorkingSet`` counts the bytes of every frame buffer a run holds (frames in the store
dtype plus their squared norms: the read window, the active copy, the selected set, the
staging buffer) and refuses to go over its budget; ``plan_working_set`` splits a budget
into those shares before anything is read, and refuses a budget too small for the fixed
ones. Everything here is bookkeeping on row ranges; the reads themselves are the file's.

What the budget does not count (it is not frames): per video a float32 centre (dim x 4
bytes) and a few float64 scalars, per frame its float32 squared norm (4 bytes, 1/512 of a
512-d float32 frame), and the kernel's scratch (one chunk of squared distances, at most
max_row_frames x max_col_frames compute floats, 32 MB with the CPU defaults, and copies of
one row and one column chunk in the compute dtype, made when the store's are half precision
or not 64-byte aligned: ``kernel.OperandScratch``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .bounds import SCAN_ROWS
from .errors import WorkingSetError
from .framefile import FrameFile

STAGE_ROWS = 1024  # rows per read when the file's dtype or device is not the store's
DEFAULT_WORKING_SET = 2**30  # bytes of frames a streamed run holds at once unless told otherwise


def frame_rows(offsets: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row numbers, in the packed store, of the frames of videos ``ids`` (in that order)."""
    lengths = offsets[ids + 1] - offsets[ids]
    shift = offsets[ids] - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(int(lengths.sum()))


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{int(nbytes)} bytes"


class WorkingSet:
    """Bytes of frame buffers held at once, against a budget (``None``: counted, unlimited).

    Every buffer that frames are read or copied into is taken from here (``buffer``) and given
    back when dropped (``FrameBuffer.release``). Going over the budget raises
    ``WorkingSetError``: a streamed run plans its shares so that this cannot happen, so the
    error is a guard against a planning bug, never the normal way to find the limit.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self.held = 0
        self.peak = 0
        self._live: dict[int, FrameBuffer] = {}

    def take(self, nbytes: int, what: str) -> None:
        if self.budget is not None and self.held + nbytes > self.budget:
            raise WorkingSetError(f"{what} needs {_mib(nbytes)} more, {_mib(self.held)} of the {_mib(self.budget)} "
                                  "working set are held")
        self.held += nbytes
        self.peak = max(self.peak, self.held)

    def give(self, nbytes: int) -> None:
        self.held -= nbytes

    def buffer(self, capacity: int, dim: int, dtype: torch.dtype, sq_dtype: torch.dtype | None,
               device: torch.device, what: str) -> FrameBuffer:
        """Room for ``capacity`` frames of ``dim`` ``dtype`` values (and their squared norms, if ``sq_dtype``)."""
        nbytes = capacity * (dim * _itemsize(dtype) + (_itemsize(sq_dtype) if sq_dtype is not None else 0))
        self.take(nbytes, what)
        frames = _empty((capacity, dim), dtype, device)
        sq = _empty((capacity,), sq_dtype, device) if sq_dtype is not None else None
        buffer = FrameBuffer(frames, sq, nbytes, self, what)
        self._live[id(buffer)] = buffer
        return buffer

    def owns(self, array: np.ndarray | torch.Tensor) -> bool:
        """Whether ``array``'s memory lies inside a live buffer of this working set (for instrumentation)."""
        if isinstance(array, np.ndarray):
            start, size = array.__array_interface__["data"][0], array.nbytes
        else:
            start, size = array.data_ptr(), array.numel() * array.element_size()
        for buffer in self._live.values():
            for tensor in (buffer.frames, buffer.sq):
                if tensor is None or tensor.device.type != "cpu":
                    continue
                first = tensor.data_ptr()
                if first <= start and start + size <= first + tensor.numel() * tensor.element_size():
                    return True
        return False

    def _forget(self, buffer: FrameBuffer) -> None:
        self._live.pop(id(buffer), None)


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """An uninitialised tensor; on the CPU backed by numpy, so that tracemalloc sees it too."""
    if device.type != "cpu":
        return torch.empty(shape, dtype=dtype, device=device)
    if dtype == torch.bfloat16:  # no numpy bfloat16: same-size integers, viewed
        return torch.from_numpy(np.empty(shape, dtype=np.uint16)).view(torch.bfloat16)
    return torch.from_numpy(np.empty(shape, dtype=torch.empty((), dtype=dtype).numpy().dtype))


@dataclass
class FrameBuffer:
    """Frames (capacity, dim) and optionally their squared norms, held against a ``WorkingSet``."""

    frames: torch.Tensor
    sq: torch.Tensor | None
    nbytes: int
    working_set: WorkingSet
    what: str
    released: bool = False

    @property
    def capacity(self) -> int:
        return int(self.frames.shape[0])

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.working_set.give(self.nbytes)
            self.working_set._forget(self)
            self.frames = self.frames.new_empty((0, self.frames.shape[1]))
            self.sq = None if self.sq is None else self.sq.new_empty((0,))


@dataclass(frozen=True)
class WorkingSetPlan:
    """How a streamed run splits its budget (frames counted with their squared norm)."""

    budget: int
    row_bytes: int  # one frame in the store dtype + its squared norm
    window_frames: int  # the read window: passes over the store, catch-up groups, streamed steps
    selected_frames: int  # labeled seed + picks, kept in memory as the kernel's columns
    staging_bytes: int  # rows read in the file's dtype before conversion (0 when reads go straight in)
    active_frames: int  # the rest: the active copy while it fits, else the active set is streamed too

    @property
    def fixed_bytes(self) -> int:
        return (self.window_frames + self.selected_frames) * self.row_bytes + self.staging_bytes


def plan_working_set(budget: int, *, row_bytes: int, staging_bytes: int, longest_video: int, seed_frames: int,
                     pick_frames: int, max_row_frames: int, scan_rows: int = SCAN_ROWS) -> WorkingSetPlan:
    """Shares of ``budget`` bytes; ``WorkingSetError`` when the fixed ones do not fit.

    The window takes max(scan_rows, max_row_frames + longest video) frames: a pass chunk, or a
    kernel chunk (at most max_row_frames frames, or one longer video) plus the video that
    closes a catch-up group. The selected set takes the seed's frames plus those of the
    longest videos that could be picked.
    """
    window = max(scan_rows, max_row_frames + longest_video)
    selected = seed_frames + pick_frames
    fixed = (window + selected) * row_bytes + staging_bytes
    if budget < fixed:
        raise WorkingSetError(
            f"a working set of {_mib(budget)} cannot hold the read window ({window} frames), the labeled seed and the "
            f"picks ({selected} frames) and the staging rows: at least {_mib(fixed)} are needed "
            f"({row_bytes} bytes a frame); raise the working set")
    return WorkingSetPlan(budget=budget, row_bytes=row_bytes, window_frames=window, selected_frames=selected,
                          staging_bytes=staging_bytes, active_frames=(budget - fixed) // row_bytes)


def window_plan(offsets: np.ndarray, chunks: list[tuple[int, int]], capacity: int) -> list[tuple[int, int]]:
    """Consecutive runs of whole kernel ``chunks`` holding at most ``capacity`` frames each.

    A window then starts and ends on chunk boundaries, so the kernel run on it makes the
    same chunks as on the whole block: the streamed distances equal the in-memory ones.
    """
    plan: list[tuple[int, int]] = []
    start = stop = 0
    for first, last in chunks:
        size = int(offsets[last] - offsets[first])
        if size > capacity:
            raise WorkingSetError(f"a kernel chunk of {size} frames does not fit the {capacity}-frame window")
        if stop > start and offsets[last] - offsets[start] > capacity:
            plan.append((start, stop))
            start = first
        stop = last
    if stop > start:
        plan.append((start, stop))
    return plan


class MemoryStore:
    """The packed frames as one tensor in the store dtype (no copy for float32 CPU input)."""

    resident = True

    def __init__(self, frames: np.ndarray, dtype: torch.dtype, device: torch.device,
                 working_set: WorkingSet | None = None) -> None:
        self.tensor = torch.from_numpy(frames).to(device=device, dtype=dtype)
        self.dim, self.total_frames = int(self.tensor.shape[1]), int(self.tensor.shape[0])
        self.dtype, self.device = dtype, device
        self.working_set = working_set or WorkingSet(None)
        self.frames_read = 0

    def scan(self, rows: int, buffer: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.total_frames, rows):
            yield start, self.tensor[start : start + rows]

    def gather(self, ids: np.ndarray, offsets: np.ndarray, out: torch.Tensor) -> None:
        rows = torch.from_numpy(frame_rows(offsets, ids)).to(self.device)
        torch.index_select(self.tensor, 0, rows, out=out)

    def close(self) -> None:
        pass


class StreamedStore:
    """The packed frames in a ``FrameFile``, read by row ranges into working-set buffers.

    Reads go straight into the destination when the file holds the store dtype and the
    device is the CPU; otherwise through a staging buffer of STAGE_ROWS rows in the file's
    dtype, converted with torch's own rounding (the one ``MemoryStore`` applies).
    """

    resident = False

    def __init__(self, file: FrameFile, dtype: torch.dtype, device: torch.device, working_set: WorkingSet) -> None:
        self.file = file
        self.dim, self.total_frames = file.dim, file.rows
        self.dtype, self.device = dtype, device
        self.working_set = working_set
        self.frames_read = 0
        file_dtype = torch.from_numpy(np.empty(0, dtype=file.dtype)).dtype
        self._direct = file_dtype == dtype and device.type == "cpu"
        self._stage: FrameBuffer | None = None
        self.staging_bytes = 0 if self._direct else STAGE_ROWS * file.row_bytes

    def _staging(self) -> np.ndarray:
        if self._stage is None:
            file_dtype = torch.from_numpy(np.empty(0, dtype=self.file.dtype)).dtype
            self._stage = self.working_set.buffer(STAGE_ROWS, self.dim, file_dtype, None, torch.device("cpu"),
                                                  "the staging rows")
        return self._stage.frames.numpy()

    def read_rows(self, start: int, stop: int, out: torch.Tensor) -> None:
        """Rows [start, stop) of the file into ``out`` (stop - start rows, store dtype, on the device)."""
        if self._direct:
            self.file.read_into(start, out.numpy())
        else:
            stage = self._staging()
            for first in range(start, stop, STAGE_ROWS):
                count = min(STAGE_ROWS, stop - first)
                self.file.read_into(first, stage[:count])
                out[first - start : first - start + count].copy_(torch.from_numpy(stage[:count]))
        self.frames_read += stop - start

    def scan(self, rows: int, buffer: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor]]:
        """The whole file, ``rows`` frames at a time, each chunk read into ``buffer`` (valid until the next)."""
        if buffer is None or buffer.shape[0] < rows:
            raise WorkingSetError(f"a pass over a streamed store needs a window of {rows} frames")
        for start in range(0, self.total_frames, rows):
            stop = min(start + rows, self.total_frames)
            self.read_rows(start, stop, buffer[: stop - start])
            yield start, buffer[: stop - start]

    def gather(self, ids: np.ndarray, offsets: np.ndarray, out: torch.Tensor) -> None:
        """Frames of videos ``ids`` in that order into ``out``; consecutive videos are one read."""
        if len(ids) == 0:
            return
        starts, stops = offsets[ids], offsets[ids + 1]
        breaks = np.flatnonzero(starts[1:] != stops[:-1]) + 1
        position = 0
        for first, last in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(ids)]])):
            row_start, row_stop = int(starts[first]), int(stops[last - 1])
            self.read_rows(row_start, row_stop, out[position : position + row_stop - row_start])
            position += row_stop - row_start

    def close(self) -> None:
        if self._stage is not None:
            self._stage.release()
            self._stage = None
