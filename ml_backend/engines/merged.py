"""A base with one LoRA adapter folded into its weights: a checkpoint any engine can serve.

vLLM refuses LoRA on ``lm_head`` (the published adapter and every trained version have one),
so the vLLM engine serves ``W + scale * B @ A`` as plain weights instead: PEFT's own
``merge_and_unload`` on the CPU (its delta is computed in float32 for half-precision weights),
saved in the dtype the engine runs (float32 on the CPU, bfloat16 on CUDA), with the base's
processor files (tokenizer, chat template, preprocessor configs) and generation config.

:func:`merged_checkpoint` keeps one per (base, adapter, dtype) fingerprint under
``MDSVQA_CACHE_DIR/merged/`` and builds it once (a flock serialises concurrent builders; the
folder appears by one rename, so a reader never sees half of it). ``mdsvqa export --merged DIR``
writes the same checkpoint into a folder of your choice (:func:`export_merged`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

from ..errors import ModelNotFoundError
from ..model.sources import TINY_MARKER, ModelSource

log = logging.getLogger(__name__)

MERGE_FORMAT = 1  # bump when the way a checkpoint is merged changes: a new key, a new folder
INFO_FILE = "mdsvqa_merged.json"


def merged_key(base: ModelSource, adapter: ModelSource, dtype: str) -> str:
    """Folder name of a merged checkpoint: the adapter's name and a hash of both fingerprints and the dtype."""
    ident = {"format": MERGE_FORMAT, "base": base.fingerprint, "adapter": adapter.fingerprint, "dtype": dtype}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in adapter.short_name)[:40] or "adapter"
    return f"{name}-{digest}"


def merged_checkpoint(cache_dir: Path, base: ModelSource, adapter: ModelSource, dtype: str) -> Path:
    """The cached merged checkpoint of ``base`` + ``adapter`` in ``dtype``, built on first use."""
    from ..training._files import lock_blocking

    root = Path(cache_dir) / "merged"
    key = merged_key(base, adapter, dtype)
    target = root / key
    if (target / INFO_FILE).is_file():
        return target
    fd = lock_blocking(root / f".{key}.lock")
    try:
        if (target / INFO_FILE).is_file():  # another process built it while we waited
            return target
        staging = root / f".{key}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        if target.exists():  # a folder without its info file: not ours to trust
            shutil.rmtree(target)
        log.info("merging %s into %s (%s): once per adapter version", adapter.spec, base.spec, dtype)
        export_merged(base, adapter, staging, dtype=dtype)
        from ..training._files import fsync_tree

        fsync_tree(staging)
        os.replace(staging, target)
    finally:
        os.close(fd)
    return target


def export_merged(base: ModelSource, adapter: ModelSource, out: Path, *, dtype: str) -> Path:
    """Write base + adapter merged, in ``dtype``, with the base's processor and generation config, to ``out``."""
    import torch
    from peft import PeftModel
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    out = Path(out)
    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(base.path), dtype=getattr(torch, dtype), local_files_only=True)
    except Exception as exc:
        raise ModelNotFoundError(f"base model {base.spec!r}: cannot load weights from {base.path}: {exc}") from exc
    try:
        peft_model = PeftModel.from_pretrained(model, str(adapter.path), is_trainable=False)
    except Exception as exc:
        raise ModelNotFoundError(f"adapter {adapter.spec!r}: cannot load from {adapter.path}: {exc}") from exc
    merged = peft_model.merge_and_unload()
    out.mkdir(parents=True, exist_ok=True)
    merged.save_pretrained(out)
    AutoProcessor.from_pretrained(str(base.path), local_files_only=True).save_pretrained(out)
    for source in (base, adapter):
        if (source.path / TINY_MARKER).is_file():
            shutil.copyfile(source.path / TINY_MARKER, out / TINY_MARKER)
    info = {"format": MERGE_FORMAT, "dtype": dtype,
            "base": {"spec": base.spec, "fingerprint": base.fingerprint},
            "adapter": {"spec": adapter.spec, "fingerprint": adapter.fingerprint}}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")  # written last: the folder is complete
    return out
