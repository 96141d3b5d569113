"""Every-frame embeddings (CLIP, SigLIP2) computed while a video is decoded, one model per process.

``decode_video(path, settings, every_frame=accumulator)`` hands every decoded frame, at
source size and in order, a chunk at a time, to a :class:`FrameFeatureAccumulator`. It
preprocesses each chunk at once (to the encoder's input size, so nothing at source size is
kept), embeds full batches as they fill up and keeps only the embeddings: memory stays at
one batch of model inputs whatever the video's length. ``finish()`` gives one row per
decoded frame. The scorer, ``mdsvqa features`` and the backend's feature computer all go
through it, so a video is decoded once for both its scores and its features.

``load_frame_encoder`` loads the configured extractor once per process (the scorer's
decode threads share it; encoding is serialised by the encoder's own lock). A load that
failed is not retried for ``RETRY_FAILED_LOAD_S`` (a download attempt against an
unreachable hub takes ~45 s; it must not be paid per video).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import numpy as np

from ..errors import FeatureModelError, MdsVqaError

log = logging.getLogger(__name__)

RETRY_FAILED_LOAD_S = 600.0


class FrameFeatureError(MdsVqaError):
    """Embedding a video's frames failed."""


class FrameEncoder(Protocol):
    identity: str  # e.g. "clip:RN101:openai"
    normalised: bool  # rows L2-normalised

    def preprocess(self, frames: np.ndarray) -> dict[str, Any]:
        """uint8 (n, H, W, 3) RGB frames -> model inputs, each a tensor with n leading rows."""

    def encode(self, inputs: dict[str, Any]) -> np.ndarray:
        """Model inputs of n frames -> (n, dim) float32 embeddings (thread-safe)."""


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    if len(parts) == 1:
        return parts[0]
    return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}


def _split(inputs: dict[str, Any], n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    return {k: v[:n] for k, v in inputs.items()}, {k: v[n:] for k, v in inputs.items()}


def _rows(inputs: dict[str, Any]) -> int:
    return int(next(iter(inputs.values())).shape[0])


class FrameFeatureAccumulator:
    """The ``every_frame`` sink of one video: embeds its frames in batches, keeps only the embeddings.

    ``keep_going=True`` (the scorer's use): a failure to embed is kept for ``finish()`` to
    raise, and the decoding, hence the video's score, goes on.
    """

    def __init__(self, encoder: FrameEncoder, batch_size: int = 64, *, keep_going: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.encoder = encoder
        self.batch_size = int(batch_size)
        self.keep_going = keep_going
        self.error: str | None = None
        self.frames_seen = 0
        self._pending: list[dict[str, Any]] = []
        self._pending_rows = 0
        self._embedded: list[np.ndarray] = []
        self._result: np.ndarray | None = None

    def __call__(self, frames: np.ndarray, first: int) -> None:
        if self._result is not None:
            raise FrameFeatureError("frames arrived after finish()")
        if first != self.frames_seen:
            raise FrameFeatureError(f"frames must arrive in order, each once: expected frame {self.frames_seen}, "
                                    f"got {first}")
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
            raise FrameFeatureError(f"expected uint8 (n, H, W, 3) frames, got {frames.dtype} {frames.shape}")
        if len(frames) == 0:
            return
        self.frames_seen += len(frames)
        if self.error is not None:
            return
        try:
            self._pending.append(self.encoder.preprocess(frames))
            self._pending_rows += len(frames)
            while self._pending_rows >= self.batch_size:
                self._embed(self.batch_size)
        except Exception as exc:
            if not self.keep_going:
                raise
            log.exception("embedding frames failed")
            self.error = f"{type(exc).__name__}: {exc}"
            self._pending, self._pending_rows, self._embedded = [], 0, []

    def _embed(self, n: int) -> None:
        batch, rest = _split(_concat(self._pending), n)
        self._pending = [rest] if _rows(rest) else []
        self._pending_rows -= n
        self._embedded.append(np.asarray(self.encoder.encode(batch), dtype=np.float32))

    def finish(self) -> np.ndarray:
        """(frames_seen, dim) float32, one row per frame in decoding order."""
        if self.error is not None:
            raise FrameFeatureError(f"embedding the frames failed: {self.error}")
        if self._result is None:
            if self._pending_rows:
                self._embed(self._pending_rows)
            if not self._embedded:
                raise FrameFeatureError("no frame was decoded")
            self._result = np.concatenate(self._embedded)
            self._embedded = []
            if self._result.shape[0] != self.frames_seen:  # an encoder returning the wrong row count
                raise FrameFeatureError(f"{self._result.shape[0]} embeddings for {self.frames_seen} frames")
        return self._result


def offline_mode(settings: Any) -> bool:
    if getattr(settings, "offline", False):
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except ImportError:  # pragma: no cover - a dependency of transformers
        return False


def feature_device(settings: Any) -> str:
    """MDSVQA_FEATURES_DEVICE; 'auto' follows MDSVQA_DEVICE, whose 'auto' is CUDA when available."""
    import torch

    device = settings.features.device
    if device == "auto":
        device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise FeatureModelError(f"feature device {device!r} requested but CUDA is not available on this machine "
                                "(MDSVQA_FEATURES_DEVICE / MDSVQA_DEVICE)")
    return device


_LOCK = threading.Lock()
_ENCODERS: dict[tuple, FrameEncoder] = {}
_FAILED: dict[tuple, tuple[float, FeatureModelError]] = {}


def _build(features: Any, device: str, offline: bool) -> FrameEncoder:
    if features.extractor == "clip":
        from .clip import ClipFrameEncoder

        return ClipFrameEncoder(features.clip_model, features.clip_pretrained, checkpoint=features.clip_checkpoint,
                                device=device, offline=offline)
    if features.extractor == "siglip2":
        from .siglip import Siglip2FrameEncoder

        return Siglip2FrameEncoder(features.siglip2_model, path=features.siglip2_path, device=device,
                                   offline=offline)
    raise ValueError(f"extractor {features.extractor!r} does not embed frames (the vision tower runs in the scorer)")


def load_frame_encoder(settings: Any) -> FrameEncoder:
    """The configured every-frame encoder, loaded once per process (raises :class:`FeatureModelError`)."""
    features = settings.features
    device = feature_device(settings)
    offline = offline_mode(settings)
    key = (features.model_dump_json(exclude={"device", "batch_size"}), device, offline)
    with _LOCK:
        if key in _ENCODERS:
            return _ENCODERS[key]
        failed = _FAILED.get(key)
        if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_LOAD_S:
            raise failed[1]
        try:
            encoder = _build(features, device, offline)
        except FeatureModelError as exc:
            _FAILED[key] = (time.monotonic(), exc)
            raise
        _FAILED.pop(key, None)
        _ENCODERS[key] = encoder
        log.info("loaded frame encoder %s on %s", encoder.identity, device)
        return encoder


def embed_video_frames(path: Any, settings: Any, encoder: FrameEncoder | None = None):
    """Decode ``path`` once: (the scorer's DecodedVideo, every frame's embeddings)."""
    from ..video.decoding import decode_video

    accumulator = FrameFeatureAccumulator(encoder or load_frame_encoder(settings), settings.features.batch_size)
    decoded = decode_video(path, settings.video, every_frame=accumulator)
    return decoded, accumulator.finish()
