"""Names of feature extractors: what each ``<stem>_features.npz`` records, and the store folders.

Cheap (no torch, nothing loaded): the backend names its feature store at start-up.

- ``clip:<architecture>:<pretrained tag>``, e.g. ``clip:RN101:openai`` (the paper's default);
- ``siglip2:<hub id>``, e.g. ``siglip2:google/siglip2-giant-opt-patch16-384``;
- ``vision:<fingerprint>``: the base model's vision tower, pooled per temporal patch; the
  fingerprint covers the base model (not the adapter: it never touches the tower), dtype,
  device type, attention kernel and frame sampling.
"""

from __future__ import annotations

import hashlib
from typing import Any

VISION_POOLING_VERSION = "vision-tower-temporal-mean-l2-v1"


def vision_fingerprint(spec: Any, video_settings: Any) -> str:
    """16 hex digits naming everything the vision-tower features depend on."""
    ident = {
        "model": spec.identity(None),
        "video": video_settings.model_dump(exclude={"max_side"}),
        "pooling": VISION_POOLING_VERSION,
    }
    return hashlib.sha256(repr(sorted((k, repr(v)) for k, v in ident.items())).encode()).hexdigest()[:16]


def vision_identity(spec: Any, video_settings: Any) -> str:
    return f"vision:{vision_fingerprint(spec, video_settings)}"


def extractor_identity(settings: Any, spec: Any = None) -> str:
    """The identity of the extractor ``settings.features`` selects (``spec``: the model, for 'vision')."""
    features = settings.features
    if features.extractor == "clip":
        return f"clip:{features.clip_model}:{features.clip_pretrained}"
    if features.extractor == "siglip2":
        return f"siglip2:{features.siglip2_model}"
    if spec is None:
        from ..model.loading import resolve_model

        spec = resolve_model(settings)  # names the model without loading it
    return vision_identity(spec, settings.video)


def store_dirname(identity: str) -> str:
    """Folder name of a feature store: ``vision-<fingerprint>`` (as before identities were recorded), else
    ``<kind>-<16 hex digits of the identity>``."""
    kind, _, rest = identity.partition(":")
    if kind == "vision":
        return f"vision-{rest}"
    return f"{kind}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
