"""Cheap upper bounds on Chamfer distances, to skip videos that cannot win a greedy step.

With c_A any point (here the float32 centroid of A's frames), r_A(x) = ||x - c_A||,
mean_r_A and min_r_A their mean and minimum over A's frames, the triangle inequality
gives for every frame x of A and the frame y* of B closest to c_B

    min_y ||x - y|| <= ||x - y*|| <= r_A(x) + ||c_A - c_B|| + min_r_B

so, averaging and symmetrising,

    D(A, B) <= ||c_A - c_B|| + (mean_r_A + min_r_A + mean_r_B + min_r_B) / 2.

Centroid distances are computed in float32 through one matrix-vector product, with the
rigorous rounding bound added before the square root, so the bound always holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

import numpy as np
import torch

_SAFETY = 1e-6  # relative slack for the square root and the float64 sums
SCAN_ROWS = 16384  # frames per chunk of a pass over the store


class FrameScan(Protocol):
    """Frames read chunk by chunk, in order: (first row, chunk) pairs of ``rows`` rows (the last shorter)."""

    dim: int
    device: torch.device

    def scan(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]: ...


class _TensorScan:
    def __init__(self, tensor: torch.Tensor) -> None:
        self.tensor, self.dim, self.device = tensor, int(tensor.shape[1]), tensor.device

    def scan(self, rows: int) -> Iterator[tuple[int, torch.Tensor]]:
        for start in range(0, self.tensor.shape[0], rows):
            yield start, self.tensor[start : start + rows]


def _owners(offsets: np.ndarray, start: int, stop: int, device: torch.device) -> torch.Tensor:
    """The video of each frame of rows [start, stop)."""
    owners = np.searchsorted(offsets, np.arange(start, stop), side="right") - 1
    return torch.from_numpy(owners).to(device)


class CentroidBounds:
    """Per-video centroid and radii; upper bounds of D(x, s) for every video x at once.

    ``store`` is the packed frames, or a ``FrameScan`` reading them chunk by chunk (a
    store streamed from disk): two passes, one chunk resident at a time. ``on_first_pass``
    sees every chunk of the first pass (the greedy computes the squared norms there);
    chunks have ``chunk_rows`` frames.
    """

    def __init__(self, store: torch.Tensor | FrameScan, offsets: np.ndarray,
                 on_first_pass: Callable[[int, torch.Tensor], None] | None = None, *,
                 chunk_rows: int = SCAN_ROWS) -> None:
        frames = _TensorScan(store) if isinstance(store, torch.Tensor) else store
        device, dim = frames.device, frames.dim
        n_videos = len(offsets) - 1
        lengths = np.diff(offsets)
        lengths_t = torch.from_numpy(lengths).to(device=device, dtype=torch.float32)
        unit_roundoff = 2.0**-24

        # Any centre gives a valid bound, so a float32 mean is good enough. The centres are
        # stored relative to their common mean ``shift`` (centre z_x = shift + centroids[x]):
        # small norms keep the float32 expansion of ||z_x - z_y|| tight even for features far
        # from the origin.
        sums = torch.zeros((n_videos, dim), dtype=torch.float32, device=device)
        for start, chunk in frames.scan(chunk_rows):
            if on_first_pass is not None:
                on_first_pass(start, chunk)
            sums.index_add_(0, _owners(offsets, start, start + chunk.shape[0], device), chunk.to(torch.float32))
        centroids = sums.div_(lengths_t.unsqueeze(1))
        self.shift = centroids.mean(dim=0)
        self.centroids = centroids.sub_(self.shift)

        # Radii ||f - z|| in float32, raised by their worst rounding error: the two subtractions
        # err by at most u (||f - shift|| + ||f - z||), the norm by a relative (d/2 + 1) u.
        radius_sum = torch.zeros(n_videos, dtype=torch.float64, device=device)
        radius_min = torch.full((n_videos,), float("inf"), dtype=torch.float32, device=device)
        relative, absolute = 1 + (dim + 8) * unit_roundoff, 3 * unit_roundoff
        for start, chunk in frames.scan(chunk_rows):
            owner = _owners(offsets, start, start + chunk.shape[0], device)
            from_shift = chunk.to(torch.float32) - self.shift
            radius = torch.linalg.vector_norm(from_shift - self.centroids[owner], dim=1).mul_(relative)
            radius.add_(torch.linalg.vector_norm(from_shift, dim=1), alpha=absolute * relative)
            radius_sum.index_add_(0, owner, radius.to(torch.float64))
            radius_min.scatter_reduce_(0, owner, radius, reduce="amin")
        radius_term = (radius_sum / lengths_t.to(torch.float64) + radius_min.to(torch.float64)) / 2
        self.radius_term = (radius_term * (1 + _SAFETY)).cpu().numpy()
        # Squared norms of the float32 centres in float64 (exact enough); the float32 products
        # against them err by at most gamma * (|c_x|^2 + |c_t|^2).
        self.centroid_sq = np.concatenate([
            torch.linalg.vecdot(part, part).cpu().numpy()
            for part in (self.centroids[start : start + SCAN_ROWS].to(torch.float64)
                         for start in range(0, n_videos, SCAN_ROWS))])
        self.gamma = (2 * dim + 8) * unit_roundoff

    @property
    def size(self) -> int:
        return len(self.radius_term)

    def reorder(self, order: np.ndarray) -> None:
        """Store the rows in ``order`` (row i becomes video order[i]); later calls take rows."""
        self.centroids = self.centroids[torch.from_numpy(order).to(self.centroids.device)]
        self.radius_term = self.radius_term[order]
        self.centroid_sq = self.centroid_sq[order]

    def max_distance(self) -> np.ndarray:
        """Per row, an upper bound of D(x, s) over every s of the pool (for a static priority)."""
        norm = np.sqrt(self.centroid_sq)
        return (norm + norm.max() + self.radius_term + self.radius_term.max()) * (1 + _SAFETY)

    def _bound(self, dots: np.ndarray, rows, targets) -> np.ndarray:
        """Upper bounds of D from float32 centre dot products, float64."""
        scale = self.centroid_sq[rows][:, None] + self.centroid_sq[targets][None, :]
        distance = np.sqrt(np.maximum(scale * (1 + self.gamma) - 2 * dots, 0.0))
        radii = self.radius_term[rows][:, None] + self.radius_term[targets][None, :]
        return (distance + radii) * (1 + _SAFETY)

    def to_row(self, stop: int, target: int) -> np.ndarray:
        """Upper bound of D(row, target) for rows [0, stop): one matrix-vector product."""
        dots = (self.centroids[:stop] @ self.centroids[target]).to(torch.float64).cpu().numpy()
        return self._bound(dots[:, None], slice(0, stop), [target])[:, 0]

    def matrix(self, rows: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Upper bounds of D(row, target), shape (len(rows), len(targets))."""
        device = self.centroids.device
        left = self.centroids[torch.from_numpy(rows).to(device)]
        right = self.centroids[torch.from_numpy(targets).to(device)]
        dots = (left @ right.t()).to(torch.float64).cpu().numpy()
        return self._bound(dots, rows, targets)
