"""CLIP frame embeddings through open_clip (the paper's default: RN101, each frame L2-normalised).

open_clip needs torchvision, which has no CPU build for the torch used on the reference
CPU machine; install the ``clip`` extra on a host where torchvision works (the CUDA image).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import ConfigurationError


class ClipFeatureExtractor:
    name = "clip"

    def __init__(self, model_name: str = "RN101", pretrained: str = "openai", device: str = "cpu") -> None:
        try:
            import open_clip
        except ImportError as exc:
            raise ConfigurationError(
                "the clip extractor needs open_clip (pip install 'mdsvqa-labelstudio[clip]', which needs a "
                "working torchvision); use --extractor vision otherwise"
            ) from exc
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, device=device)
        except Exception as exc:
            raise ConfigurationError(
                f"cannot load CLIP {model_name!r} weights {pretrained!r} (a local checkpoint file or an open_clip "
                f"pretrained tag such as 'openai'): {exc}"
            ) from exc
        self.model.eval()
        self.device = device

    def embed_frames(self, frames: np.ndarray, batch: int = 64) -> np.ndarray:
        """(T, H, W, 3) uint8 frames -> (T, dim) float32, each row L2-normalised."""
        import torch
        from PIL import Image

        rows = []
        with torch.inference_mode():
            for start in range(0, len(frames), batch):
                images = torch.stack([self.preprocess(Image.fromarray(f)) for f in frames[start:start + batch]])
                embedded = self.model.encode_image(images.to(self.device)).float()
                rows.append(torch.nn.functional.normalize(embedded, dim=-1).cpu().numpy())
        return np.concatenate(rows).astype(np.float32)

    def extract_frames(self, videos: Sequence[np.ndarray]) -> list[np.ndarray]:
        return [self.embed_frames(frames) for frames in videos]
