"""Packed frame embeddings in one ``.npy`` file, read by row ranges: the I/O of a streamed selection.

``FrameFile`` opens a C-ordered 2-D float16 / float32 / float64 ``.npy`` (``np.save``'s format,
parsed with numpy's own header reader) and copies row ranges into buffers the caller owns,
with ``os.preadv``. There is no memory map on purpose: the pages of a map that a run has
touched count in its resident memory until they are unmapped, so a run that read a 61 GB
map through would show a 61 GB resident set. With explicit reads the process holds exactly
the buffers it asked for, and the file's pages stay the kernel's page cache, which it may
drop at any time.

``FrameFileWriter`` writes such a file chunk by chunk (the header, padded to a fixed size,
is rewritten with the final row count on close), so pools larger than memory can be
written from per-video features one video at a time.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .errors import FrameError

FRAME_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_HEADER_BYTES = 128  # magic (6) + version (2) + length (2) + the header dict, padded with spaces


class FrameFile:
    """A packed (rows, dim) frames file opened for reading by row ranges."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            handle = open(self.path, "rb")  # noqa: SIM115 (closed below or by close())
        except OSError as exc:
            raise FrameError(f"{self.path}: cannot open the frames file ({exc})") from None
        with handle:
            try:
                version = np.lib.format.read_magic(handle)
                if version == (1, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
                elif version == (2, 0):
                    shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except (ValueError, OSError, SyntaxError) as exc:
                raise FrameError(f"{self.path}: not a .npy frames file ({exc})") from None
            self.data_offset = handle.tell()
        if len(shape) != 2 or shape[0] == 0 or shape[1] == 0:
            raise FrameError(f"{self.path}: frames must be a non-empty (total_frames, dim) array, got shape {shape}")
        if fortran_order:
            raise FrameError(f"{self.path}: frames are stored in Fortran order; save them C-ordered (np.save of a "
                             "C-contiguous array)")
        if not dtype.isnative or dtype not in FRAME_DTYPES:
            raise FrameError(f"{self.path}: frames have dtype {dtype}; expected native-endian float16, float32 or "
                             "float64")
        self.rows, self.dim = int(shape[0]), int(shape[1])
        self.dtype = np.dtype(dtype)
        self.row_bytes = self.dim * self.dtype.itemsize
        size = os.stat(self.path).st_size
        if size < self.data_offset + self.rows * self.row_bytes:
            raise FrameError(f"{self.path}: truncated: {size} bytes, the header announces "
                             f"{self.data_offset + self.rows * self.row_bytes}")
        self._fd: int | None = os.open(self.path, os.O_RDONLY)

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Copy rows [start, start + len(out)) into ``out`` (C-contiguous, the file's dtype and dim)."""
        if self._fd is None:
            raise ValueError(f"{self.path}: the frames file is closed")
        if out.dtype != self.dtype or out.ndim != 2 or out.shape[1] != self.dim or not out.flags.c_contiguous:
            raise ValueError(f"buffer of dtype {out.dtype} shape {out.shape} cannot take rows of {self.path} "
                             f"({self.dtype}, dim {self.dim}, C-contiguous)")
        if start < 0 or start + out.shape[0] > self.rows:
            raise ValueError(f"rows [{start}, {start + out.shape[0]}) outside the {self.rows} rows of {self.path}")
        view = out.reshape(-1).view(np.uint8).data
        position, done = self.data_offset + start * self.row_bytes, 0
        while done < len(view):
            count = os.preadv(self._fd, [view[done:]], position + done)
            if count <= 0:
                raise FrameError(f"{self.path}: unexpected end of file at byte {position + done}")
            done += count

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> FrameFile:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _header(rows: int, dim: int, dtype: np.dtype) -> bytes:
    text = repr({"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, dim)})
    length = _HEADER_BYTES - 10
    body = text.ljust(length - 1).encode("latin1") + b"\n"
    if len(body) != length:
        raise ValueError(f"shape {(rows, dim)} does not fit the fixed .npy header")
    return b"\x93NUMPY\x01\x00" + length.to_bytes(2, "little") + body


class FrameFileWriter:
    """Append (n, dim) frame arrays to a new packed ``.npy`` file; ``close`` writes the final header."""

    def __init__(self, path: str | os.PathLike, dim: int, dtype=np.float32) -> None:
        self.path = Path(path)
        self.dim = int(dim)
        self.dtype = np.dtype(dtype)
        if self.dtype not in FRAME_DTYPES:
            raise ValueError(f"frames files hold float16, float32 or float64, not {self.dtype}")
        self.rows = 0
        self._handle = open(self.path, "wb")  # noqa: SIM115 (closed by close())
        self._handle.write(_header(0, self.dim, self.dtype))

    def append(self, frames) -> None:
        array = np.ascontiguousarray(frames, dtype=self.dtype)
        if array.ndim != 2 or array.shape[1] != self.dim:
            raise ValueError(f"expected (n, {self.dim}) frames, got shape {array.shape}")
        self._handle.write(array.tobytes())
        self.rows += array.shape[0]

    def close(self, *, sync: bool = False) -> Path:
        if not self._handle.closed:
            self._handle.seek(0)
            self._handle.write(_header(self.rows, self.dim, self.dtype))
            self._handle.flush()
            if sync:
                os.fsync(self._handle.fileno())
            self._handle.close()
        return self.path

    def __enter__(self) -> FrameFileWriter:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def write_frame_file(path: str | os.PathLike, frames, dtype=None) -> Path:
    """Write packed (total_frames, dim) frames (one array, or a sequence of (n_i, dim) arrays) to ``path``."""
    parts = [frames] if isinstance(frames, np.ndarray) else list(frames)
    if not parts:
        raise ValueError("no frames to write")
    first = np.asarray(parts[0])
    with FrameFileWriter(path, first.shape[1], dtype if dtype is not None else first.dtype) as writer:
        for part in parts:
            writer.append(part)
    return Path(path)
