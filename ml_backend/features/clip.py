"""CLIP frame embeddings (open_clip), the paper's default: RN101 with OpenAI's weights, rows L2-normalised.

Preprocessing is the reference's (``clip.load("RN101")``), built here explicitly: on a PIL
image, resize the short side to the model's input size with bicubic interpolation, centre
crop to a square, RGB, to a [0, 1] tensor, normalise with CLIP's mean and std. Only the
image tower is kept in memory (``encode_image`` of a CLIP model is its ``visual`` module).

Weights: ``pretrained`` is an open_clip tag ('openai'); the file comes from
``checkpoint`` when given (a local copy: OpenAI's TorchScript ``RN101.pt`` or open_clip's
state dict), else from open_clip's download, or offline from its caches only (the Hugging
Face cache and ``~/.cache/clip``). Anything missing is a :class:`FeatureModelError` that
names the file and the setting that provides it. ``pretrained='random'`` builds the real
architecture with random weights (tests).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import FeatureModelError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
RANDOM = "random"
_CHECKPOINT_SETTING = "MDSVQA_FEATURES_CLIP_CHECKPOINT"
_OPEN_CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")


def _to_rgb(image):
    return image.convert("RGB")


def clip_preprocess(image_size: int = 224):
    """The reference's CLIP preprocessing, PIL image -> (3, size, size) float32 tensor."""
    from torchvision.transforms import CenterCrop, Compose, InterpolationMode, Normalize, Resize, ToTensor

    return Compose([
        Resize(image_size, interpolation=InterpolationMode.BICUBIC),
        CenterCrop(image_size),
        _to_rgb,
        ToTensor(),
        Normalize(CLIP_MEAN, CLIP_STD),
    ])


def _import_open_clip():
    try:
        import open_clip
    except ImportError as exc:
        raise FeatureModelError(
            "the clip extractor needs open_clip: pip install open-clip-torch (a dependency of this package; it needs "
            "a torchvision that works beside your torch); or MDSVQA_FEATURES_EXTRACTOR=siglip2 / vision") from exc
    return open_clip


class _DropRandomInitWarning(logging.Filter):
    """open_clip logs 'Model initialized randomly' before we load the weights ourselves: not true here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_random_init():
    root = logging.getLogger()
    dropper = _DropRandomInitWarning()
    root.addFilter(dropper)
    for handler in root.handlers:
        handler.addFilter(dropper)
    try:
        yield
    finally:
        root.removeFilter(dropper)
        for handler in root.handlers:
            handler.removeFilter(dropper)


def _cached_weights(cfg: dict) -> tuple[Path | None, list[str]]:
    """The locally cached file of a pretrained tag, and where it was looked for."""
    looked: list[str] = []
    hub = cfg.get("hf_hub") or ""
    if hub:
        repo, filename = hub.rstrip("/").rsplit("/", 1) if not hub.endswith("/") else (hub.rstrip("/"), "")
        names = [filename] if filename else list(_OPEN_CLIP_FILES)
        try:
            from huggingface_hub import hf_hub_download
            from huggingface_hub.errors import LocalEntryNotFoundError
            have_hub = True
        except ImportError:  # pragma: no cover - a dependency of transformers
            have_hub = False
        for name in names:
            looked.append(f"Hugging Face cache: {repo}/{name}")
            if not have_hub:
                continue
            try:
                return Path(hf_hub_download(repo, name, local_files_only=True)), looked
            except (LocalEntryNotFoundError, OSError, ValueError):
                continue
    url = cfg.get("url") or ""
    if url:
        target = Path.home() / ".cache" / "clip" / url.rsplit("/", 1)[-1]
        looked.append(str(target))
        if target.is_file():
            return target, looked
    return None, looked


def _missing(model_name: str, pretrained: str, cfg: dict, looked: list[str], why: str) -> FeatureModelError:
    url = cfg.get("url")
    get = f" (OpenAI's file: {url})" if url else ""
    return FeatureModelError(
        f"CLIP {model_name} weights '{pretrained}' are not available: {why}; looked in: {'; '.join(looked) or '-'}. "
        f"Provide them: set {_CHECKPOINT_SETTING}=/path/to/{Path(url).name if url else 'weights.bin'}, a local copy"
        f"{get}, or download once where the hub is reachable (python -c \"import open_clip; "
        f"open_clip.create_model('{model_name}', pretrained='{pretrained}')\") and run offline afterwards.")


def _find_weights(open_clip, model_name: str, pretrained: str, offline: bool) -> Path:
    cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
    if not cfg:
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        raise FeatureModelError(
            f"open_clip knows no weights '{pretrained}' for {model_name} (tags: {', '.join(tags) or 'none'}): set "
            f"MDSVQA_FEATURES_CLIP_PRETRAINED to one, or {_CHECKPOINT_SETTING} to a file holding them")
    cached, looked = _cached_weights(cfg)
    if cached is not None:
        return cached
    if offline:
        raise _missing(model_name, pretrained, cfg, looked, "offline (MDSVQA_OFFLINE / HF_HUB_OFFLINE) and not cached")
    from open_clip.pretrained import download_pretrained

    try:
        return Path(download_pretrained(cfg))
    except Exception as exc:  # any download failure means the same thing to the user
        raise _missing(model_name, pretrained, cfg, looked, f"download failed ({type(exc).__name__}: {exc})") from exc


def _load_weights(open_clip, model, path: Path) -> None:
    import torch

    try:
        with zipfile.ZipFile(path) as archive:
            torchscript = any(name.endswith("constants.pkl") for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        torchscript = False
    try:
        if torchscript:  # OpenAI's own RN101.pt: a TorchScript archive of the whole model
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
            for key in ("input_resolution", "context_length", "vocab_size"):
                state.pop(key, None)
            model.load_state_dict(state, strict=True)
        else:
            open_clip.load_checkpoint(model, str(path), strict=True)
    except Exception as exc:  # wrong architecture, truncated file, ...
        why = f"{type(exc).__name__}: {str(exc)[:500]}"
        raise FeatureModelError(f"cannot load CLIP weights from {path}: {why}") from exc


class ClipFrameEncoder:
    """One CLIP image tower; ``preprocess`` + ``encode`` embed frames, each row L2-normalised."""

    normalised = True

    def __init__(self, model_name: str = "RN101", pretrained: str = "openai", *, checkpoint: str | Path | None = None,
                 device: str = "cpu", offline: bool = False) -> None:
        open_clip = _import_open_clip()
        if model_name not in open_clip.list_models():
            raise FeatureModelError(f"open_clip has no architecture {model_name!r} (MDSVQA_FEATURES_CLIP_MODEL)")
        weights: Path | None = None
        cfg = open_clip.get_pretrained_cfg(model_name, pretrained) if pretrained != RANDOM else {}
        if checkpoint is not None:
            weights = Path(checkpoint).expanduser()
            if not weights.is_file():
                raise FeatureModelError(f"{_CHECKPOINT_SETTING}={checkpoint}: no such file (CLIP {model_name} "
                                        f"weights '{pretrained}')")
        elif pretrained != RANDOM:
            weights = _find_weights(open_clip, model_name, pretrained, offline)
        with _quiet_random_init():
            model = open_clip.create_model(model_name, pretrained=None,
                                           force_quick_gelu=bool((cfg or {}).get("quick_gelu", False)))
        if weights is not None:
            _load_weights(open_clip, model, weights)
        elif pretrained == RANDOM:
            logging.getLogger(__name__).warning("CLIP %s with random weights: the features are meaningless", model_name)
        self.visual = model.visual.to(device).eval()
        del model  # the text tower is never used
        size = getattr(self.visual, "image_size", 224)
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        self.transform = clip_preprocess(self.image_size)
        self.device = device
        self.weights = weights
        self.identity = f"clip:{model_name}:{pretrained}"
        self._lock = threading.Lock()

    def preprocess(self, frames: np.ndarray) -> dict[str, Any]:
        import torch
        from PIL import Image

        return {"pixel_values": torch.stack([self.transform(Image.fromarray(frame)) for frame in frames])}

    def encode(self, inputs: dict[str, Any]) -> np.ndarray:
        import torch

        with self._lock, torch.inference_mode():
            embedded = self.visual(inputs["pixel_values"].to(self.device)).float()
            return torch.nn.functional.normalize(embedded, dim=-1).cpu().numpy()
