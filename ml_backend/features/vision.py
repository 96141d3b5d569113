"""Embeddings from the base model's own vision tower, for the same frames the scorer decodes.

Used two ways: standalone (`mdsvqa features`, tower only, no text generation) and as a
by-product of scoring (a hook on the tower during generation), so one pass over a
pool gives both difficulty and features.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np

from .pooling import pool_temporal_patches

if TYPE_CHECKING:
    from ..model.loading import LoadedModel
    from ..scoring.inputs import PreparedVideo


def vision_tower(loaded: LoadedModel):
    base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
    return getattr(base, "visual", None) or base.model.visual


def merged_tokens(output):
    """The tower's merged visual tokens (transformers 5 wraps them as ``pooler_output``)."""
    return getattr(output, "pooler_output", output)


class VisionFeatureExtractor:
    name = "vision"

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.tower = vision_tower(loaded)

    def extract(self, videos: Sequence[PreparedVideo]) -> list[np.ndarray]:
        import torch

        runtime = self.loaded.runtime
        patches = torch.from_numpy(np.concatenate([v.patches for v in videos])).to(
            runtime.device, getattr(torch, runtime.dtype))
        grids = np.stack([v.grid_thw for v in videos])
        with self.loaded.lock, torch.inference_mode():
            tokens = self.tower(patches, grid_thw=torch.from_numpy(grids).to(runtime.device))
        return pool_temporal_patches(merged_tokens(tokens).float().cpu().numpy(), grids, self.loaded.layout.merge_size)


@contextlib.contextmanager
def capture_vision_features(loaded: LoadedModel, grids: np.ndarray) -> Iterator[list[np.ndarray]]:
    """While active, the tower's output for one batch is pooled into the yielded list."""
    captured: list[np.ndarray] = []

    def hook(_module, _inputs, output):
        if not captured:  # the tower runs once per generate call (prefill)
            captured.extend(pool_temporal_patches(merged_tokens(output).detach().float().cpu().numpy(), grids,
                                                  loaded.layout.merge_size))

    handle = vision_tower(loaded).register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
