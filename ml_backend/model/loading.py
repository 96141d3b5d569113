"""Loading the base model f with its named LoRA adapters, once per process.

One Qwen2.5-VL base in memory carries several PEFT adapters: ``difficulty`` (the
failure predictor g) now, quality and trained versions later. f itself is the base
with adapters disabled.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from dataclasses import dataclass, field, replace
from typing import Any

from ..errors import ModelNotFoundError
from ..settings import Settings
from ..video.patches import PatchLayout
from .sources import ModelSource, resolve_source

log = logging.getLogger(__name__)

DIFFICULTY_ADAPTER = "difficulty"

TINY_WARNING = (
    "THE BASE MODEL IS A TINY RANDOM TEST MODEL (mdsvqa tiny-model): its scores are "
    "MEANINGLESS. Point --base/--adapter at the real checkpoints for real difficulty scores."
)


@dataclass(frozen=True)
class Runtime:
    device: str
    dtype: str
    attention: str


def choose_runtime(settings: Settings) -> Runtime:
    """CUDA: bf16 with FlashAttention-2 when installed, else SDPA. CPU: float32 with SDPA."""
    import torch

    device = settings.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelNotFoundError(f"device {device!r} requested but CUDA is not available on this machine")
    on_cuda = device.startswith("cuda")
    dtype = settings.dtype if settings.dtype != "auto" else ("bfloat16" if on_cuda else "float32")
    attention = settings.attention
    if attention == "auto":
        attention = "flash_attention_2" if on_cuda and importlib.util.find_spec("flash_attn") else "sdpa"
    if attention == "flash_attention_2" and dtype == "float32":
        raise ModelNotFoundError("FlashAttention-2 needs bfloat16 or float16; set MDSVQA_DTYPE or MDSVQA_ATTENTION")
    return Runtime(device, dtype, attention)


@dataclass
class ModelSpec:
    """Resolved sources and runtime: enough to identify the model without loading it."""

    base: ModelSource
    adapters: dict[str, ModelSource]
    runtime: Runtime

    @property
    def is_tiny(self) -> bool:
        return self.base.is_tiny or any(a.is_tiny for a in self.adapters.values())

    def identity(self, adapter: str | None = DIFFICULTY_ADAPTER) -> dict[str, str]:
        """Everything about the model that can change an answer (for cache keys and versions)."""
        ident = {
            "base": self.base.fingerprint,
            "dtype": self.runtime.dtype,
            "device": self.runtime.device.split(":")[0],
            "attention": self.runtime.attention,
        }
        if adapter is not None:
            ident["adapter"] = self.adapters[adapter].fingerprint
        return ident

    def version(self, adapter: str | None = DIFFICULTY_ADAPTER) -> str:
        """Human-readable model version: base, adapter and a short hash of both."""
        import hashlib

        ident = self.identity(adapter)
        digest = hashlib.sha256(repr(sorted(ident.items())).encode()).hexdigest()[:8]
        name = self.base.short_name
        if adapter is not None:
            name += f"+{self.adapters[adapter].short_name}"
        return f"{'TINY-RANDOM-' if self.is_tiny else ''}{name}@{digest}"


def resolve_model(settings: Settings) -> ModelSpec:
    """Find base and difficulty adapter (downloading unless offline) and choose the runtime."""
    base = resolve_source(settings.base, kind="base model", offline=settings.offline, required_file="config.json")
    adapter = resolve_source(settings.adapter, kind="adapter", offline=settings.offline,
                             required_file="adapter_config.json")
    return ModelSpec(base, {DIFFICULTY_ADAPTER: adapter}, choose_runtime(settings))


@dataclass
class LoadedModel:
    """The shared model: PEFT-wrapped base, processor, and the spec it was loaded from."""

    model: Any  # peft.PeftModel around Qwen2_5_VLForConditionalGeneration
    processor: Any  # transformers Qwen2_5_VLProcessor
    spec: ModelSpec
    layout: PatchLayout
    lock: threading.RLock = field(default_factory=threading.RLock)
    free_memory: tuple[int, int | None] | None = field(default=None, compare=False, repr=False)
    """Bytes free where the model runs (and host RAM when that is a GPU), measured by load_model
    with the weights in and before any video: the base of the derived visual-token budget."""

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def runtime(self) -> Runtime:
        return self.spec.runtime

    @property
    def adapters(self) -> dict[str, ModelSource]:
        return self.spec.adapters

    @property
    def is_tiny(self) -> bool:
        return self.spec.is_tiny

    def identity(self, adapter: str | None = DIFFICULTY_ADAPTER) -> dict[str, str]:
        return self.spec.identity(adapter)

    def version(self, adapter: str | None = DIFFICULTY_ADAPTER) -> str:
        return self.spec.version(adapter)

    def load_adapter(self, name: str, location: str, settings: Settings, *, label: str | None = None) -> ModelSource:
        """Add another named adapter (e.g. a trained version) to the shared base.

        ``label``: the adapter's name in model versions (default: the folder name), e.g. a
        version id, since every trained version's folder is called ``adapter``.
        """
        source = resolve_source(location, kind="adapter", offline=settings.offline,
                                required_file="adapter_config.json")
        if label is not None:
            source = replace(source, spec=label)
        with self.lock:
            if name in self.spec.adapters:
                self.model.delete_adapter(name)
            self.model.load_adapter(str(source.path), adapter_name=name, is_trainable=False)
            self.model.eval()
            self.spec.adapters[name] = source
        return source

    def unload_adapter(self, name: str) -> None:
        """Free a named adapter loaded with :meth:`load_adapter` (never the difficulty adapter loaded at start)."""
        if name == DIFFICULTY_ADAPTER:
            raise ValueError("the startup difficulty adapter stays loaded")
        with self.lock:
            if name in self.spec.adapters:
                self.model.delete_adapter(name)
                del self.spec.adapters[name]


def patch_layout(processor) -> PatchLayout:
    ip = processor.image_processor
    return PatchLayout(
        patch_size=int(ip.patch_size),
        temporal_patch_size=int(ip.temporal_patch_size),
        merge_size=int(ip.merge_size),
        mean=_rgb(ip.image_mean),
        std=_rgb(ip.image_std),
    )


def _rgb(values: Any) -> tuple[float, float, float]:
    red, green, blue = (float(x) for x in values)
    return red, green, blue


def _processor(base: ModelSource, name: str):
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(str(base.path), local_files_only=True)
    except Exception as exc:
        raise ModelNotFoundError(
            f"base model {name!r}: cannot load the processor (tokenizer, chat template, "
            f"preprocessor_config.json) from {base.path}: {exc}"
        ) from exc
    processor.tokenizer.padding_side = "left"
    return processor


def load_processor(settings: Settings):
    """Only the base model's processor (tokenizer, chat template, patch constants): no weights."""
    base = resolve_source(settings.base, kind="base model", offline=settings.offline, required_file="config.json")
    return _processor(base, settings.base)


def load_model(settings: Settings) -> LoadedModel:
    """Resolve, load and wrap base + difficulty adapter. Slow (seconds to minutes): call once."""
    spec = resolve_model(settings)
    base, adapter, runtime = spec.base, spec.adapters[DIFFICULTY_ADAPTER], spec.runtime

    from peft import PeftModel

    processor = _processor(base, settings.base)
    base_model = load_base_model(base, settings.base, runtime)
    try:
        model = PeftModel.from_pretrained(base_model, str(adapter.path), adapter_name=DIFFICULTY_ADAPTER,
                                          is_trainable=False)
    except Exception as exc:
        raise ModelNotFoundError(f"adapter {settings.adapter!r}: cannot load from {adapter.path}: {exc}") from exc
    model.eval()
    _check_attention(model, runtime.attention)

    loaded = LoadedModel(model, processor, spec, patch_layout(processor))
    from ..scoring.budget import free_memory_now

    loaded.free_memory = free_memory_now(runtime.device)  # with the weights in, before any video
    if loaded.is_tiny:
        log.warning(TINY_WARNING)
    log.info("loaded %s on %s (%s, %s)", loaded.version(), runtime.device, runtime.dtype, runtime.attention)
    return loaded


def load_base_model(base: ModelSource, name: str, runtime: Runtime):
    """The base Qwen2.5-VL on the runtime's device, placing M-RoPE positions as the reference does.

    The one place base weights are loaded, for scoring and training alike
    (``ml_backend.model.positions``: transformers 5 would place the text after a long video
    otherwise than the checkpoints were trained with).
    """
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .positions import use_reference_positions

    try:
        model = Qwen2_5_VLForConditionalGeneration.from_pretrained(
            str(base.path), dtype=getattr(torch, runtime.dtype), attn_implementation=runtime.attention,
            local_files_only=True)
    except Exception as exc:
        raise ModelNotFoundError(f"base model {name!r}: cannot load weights from {base.path}: {exc}") from exc
    model.to(runtime.device)  # type: ignore[arg-type]  # transformers' wrapper on .to hides the binding
    use_reference_positions(model)
    return model


def _check_attention(model, requested: str) -> None:
    """Say so when a part of the model does not run the attention asked for.

    Both the vision tower and the language model must use it: with "sdpa" the vision tower
    runs each window / frame of ``cu_seqlens`` as its own unmasked SDPA call and the language
    model needs no mask for one video, so torch's flash CPU kernel keeps memory linear in the
    number of tokens; "eager" holds every layer's full score matrix (quadratic; docs/memory.md).
    """
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    parts = {"language model": getattr(config, "text_config", config),
             "vision tower": getattr(config, "vision_config", None)}
    for name, part in parts.items():
        used = getattr(part, "_attn_implementation", None)
        if part is not None and used is not None and used != requested:
            log.warning("the %s runs %s attention, not the requested %s", name, used, requested)
    if requested == "eager":
        log.warning("eager attention holds full attention matrices: memory grows with the square of a "
                    "video's length (MDSVQA_ATTENTION=sdpa keeps it linear)")


_shared: dict[tuple, LoadedModel] = {}
_shared_lock = threading.Lock()


def shared_model(settings: Settings) -> LoadedModel:
    """The process-wide model for these settings, loaded on first use and never reloaded."""
    key = (settings.base, settings.adapter, settings.device, settings.dtype, settings.attention, settings.offline)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = load_model(settings)
        return _shared[key]
