"""Where model files live: a hub id or a local folder becomes a local folder plus a fingerprint.

Resolving first and loading from a folder second gives one loading path for the real
checkpoints and the tiny test model, and a cheap identity for the score cache.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ModelNotFoundError

TINY_MARKER = "mdsvqa_tiny_model.json"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_CONFIG_NAMES = ("config.json", "adapter_config.json", "generation_config.json", "preprocessor_config.json",
                 "chat_template.json", "tokenizer_config.json")


@dataclass(frozen=True)
class ModelSource:
    """A resolved base model or adapter."""

    spec: str  # what the user asked for: hub id or path
    path: Path  # local folder holding the files
    fingerprint: str  # changes whenever the files do
    is_tiny: bool  # a random test model written by `mdsvqa tiny-model`

    @property
    def short_name(self) -> str:
        return Path(self.spec.rstrip("/")).name or self.spec


def _looks_like_path(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().exists() or spec.count("/") != 1


def _fingerprint_folder(path: Path) -> str:
    """Hash of config contents plus name, size and mtime of each weight file (no full read of GBs)."""
    digest = hashlib.sha256()
    for name in _CONFIG_NAMES:
        file = path / name
        if file.is_file():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    for file in sorted(path.iterdir()):
        if file.suffix in _WEIGHT_SUFFIXES:
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def resolve_source(spec: str, *, kind: str, offline: bool, required_file: str,
                   cache_dir: Path | None = None) -> ModelSource:
    """Local folder for ``spec`` (downloading into the HF cache unless offline).

    ``kind`` ("base model" or "adapter") and ``required_file`` only shape the error message,
    which names everything that was tried and how to point at local copies.
    """
    hint = (
        f"Point at a local copy with --{'base' if kind == 'base model' else 'adapter'} /path "
        f"(or MDSVQA_{'BASE' if kind == 'base model' else 'ADAPTER'}), pre-download it with "
        f"`huggingface-cli download {spec}` on a machine with hub access, or create a random test "
        f"model with `mdsvqa tiny-model DIR`."
    )
    if _looks_like_path(spec):
        path = Path(spec).expanduser().resolve()
        if not path.is_dir():
            raise ModelNotFoundError(f"{kind} {spec!r}: no such directory ({path}). {hint}")
        if not (path / required_file).is_file():
            raise ModelNotFoundError(f"{kind} {spec!r}: {path} has no {required_file}. {hint}")
        return ModelSource(spec, path, _fingerprint_folder(path), (path / TINY_MARKER).exists())

    from huggingface_hub import snapshot_download  # lazy: hub client only when a hub id is used

    try:
        local = Path(snapshot_download(spec, local_files_only=offline, cache_dir=cache_dir))
    except Exception as exc:  # offline miss, unknown repo, unreachable hub, gated repo ...
        where = "the local Hugging Face cache" if offline else "the Hugging Face hub and the local cache"
        raise ModelNotFoundError(
            f"{kind} {spec!r} not found in {where} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}). {hint}"
        ) from exc
    if not (local / required_file).is_file():
        raise ModelNotFoundError(f"{kind} {spec!r}: downloaded snapshot {local} has no {required_file}. {hint}")
    # The snapshot folder is named after the commit: the best fingerprint there is.
    return ModelSource(spec, local, local.name[:16] + _fingerprint_folder(local)[:8], (local / TINY_MARKER).exists())


def read_tiny_marker(path: Path) -> dict:
    return json.loads((path / TINY_MARKER).read_text())
