"""SigLIP2 frame embeddings (transformers), the paper's option: ``get_image_features``, not normalised.

``AutoModel`` + the checkpoint's image processor (``AutoImageProcessor``, PIL backend: the
processor ``AutoProcessor`` builds uses the same one for images; its tokenizer is never
needed). The model comes from ``path`` (a local folder) when given, else from the Hugging
Face hub or, offline, its cache only; anything missing is a :class:`FeatureModelError`
naming the model and the setting that provides it.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatureModelError

_PATH_SETTING = "MDSVQA_FEATURES_SIGLIP2_PATH"


def _image_features(output) -> Any:
    """transformers 5 returns the pooled embedding as ``pooler_output``; 4.x returned the tensor."""
    return output if hasattr(output, "shape") else output.pooler_output


class Siglip2FrameEncoder:
    normalised = False

    def __init__(self, model_name: str, *, path: str | Path | None = None, device: str = "cpu",
                 offline: bool = False) -> None:
        import torch
        from transformers import AutoImageProcessor, AutoModel

        source = model_name
        if path is not None:
            folder = Path(path).expanduser()
            if not (folder / "config.json").is_file():
                raise FeatureModelError(f"{_PATH_SETTING}={path}: no model folder there (no config.json) for "
                                        f"SigLIP2 {model_name}")
            source = str(folder)
        try:
            processor = AutoImageProcessor.from_pretrained(source, local_files_only=offline, backend="pil")
            model = AutoModel.from_pretrained(source, local_files_only=offline, dtype=torch.float32)
        except (OSError, ValueError) as exc:
            where = f"in {source}" if path is not None else (
                "in the Hugging Face cache (offline: MDSVQA_OFFLINE / HF_HUB_OFFLINE)" if offline
                else "on the Hugging Face hub or in its cache")
            raise FeatureModelError(
                f"SigLIP2 model {model_name!r} (weights, config and preprocessor_config.json) not found {where}: "
                f"{str(exc).splitlines()[0][:300]}. Provide it: set {_PATH_SETTING}=/folder/with/the/model "
                f"(e.g. from `huggingface-cli download {model_name}` where the hub is reachable), or fill the "
                "Hugging Face cache (HF_HOME) and run offline") from exc
        if not hasattr(model, "get_image_features"):
            raise FeatureModelError(f"{model_name}: {type(model).__name__} has no get_image_features")
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device
        self.identity = f"siglip2:{model_name}"
        self._lock = threading.Lock()

    def preprocess(self, frames: np.ndarray) -> dict[str, Any]:
        from PIL import Image

        inputs = self.processor(images=[Image.fromarray(frame) for frame in frames], return_tensors="pt")
        return {key: value for key, value in inputs.items() if hasattr(value, "shape")}

    def encode(self, inputs: dict[str, Any]) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            moved = {key: value.to(self.device) for key, value in inputs.items()}
            return _image_features(self.model.get_image_features(**moved)).float().cpu().numpy()
