"""How many visual tokens one video may bring, checked before any frame of it is read.

A 10 minute video at 2 fps becomes 768 frames: tens of thousands of visual tokens (SPEC 3
caps a video at about 115k). What the model needs grows with that count (linearly with
SDPA / FlashAttention-2; with the square of it for eager attention and for the padding mask
of a left-padded batch), and a worker over its memory is killed by the kernel with no error
to report, again on every retry. So each video's token count is computed from its sampling
plan (frame count and resized size, known after probing) and compared with a budget:

- ``MDSVQA_MAX_VISUAL_TOKENS`` when set (> 0);
- else derived from the memory free right after the model was loaded (``load_model``
  measures it, weights in, no video yet; then fixed) and a per-token cost estimated from
  the model's config (docs/memory.md)::

      memory  = 0.8 x (available RAM on CPU; free GPU memory on CUDA)
                - 2 GiB x decoders                          decord's queue of 1080p frames: 2 decode
                                                            threads, or the decode worker processes
      cost(L) = model_bytes x L + quadratic_bytes x L^2     where the model runs
              + input_bytes x L x in flight                 host RAM: frames and patches of the
                                                            videos in flight (threads: 2 x batch_size;
                                                            workers: MDSVQA_DECODE_AHEAD + batch_size)
      budget  = the largest L with cost(L) <= memory        (on CUDA, the host RAM, less the
                                                            decoders, bounds the input part)

Over budget the video fails alone with :class:`VideoTooLongError`, a final error (stored,
not retried into a crash loop); the rest of its batch is scored. A batch whose padded mask
would cost more than one video at the budget is run one video at a time instead.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import VideoError
from ..video.patches import PatchLayout, planned_token_count
from ..video.sampling import SamplingPlan

log = logging.getLogger(__name__)

MEMORY_FRACTION = 0.8  # of the memory free at load: the rest is headroom for the process and its neighbours
# What one decoder holds at its peak, reserved for each when the budget is derived:
# a decode thread of the scorer: decord's queue of decoded source frames, whatever the video's
# length, ~1.5-2.3 GB measured for a 1080p stream (docs/memory.md);
DECODE_THREAD_MEMORY = 2 * 2**30
# a decode worker process: 3.0-3.4 GB on 20 s of 1080p (benchmarks/pipeline.py; 0.5 GB of it the
# interpreter, torch and decord before any video, the rest decord's queue and the video's arrays).
# Also what sizes the default worker count (scoring.prepare.default_decode_workers).
DECODE_WORKER_MEMORY = 3 * 2**30
DECODE_WORKERS = 2  # decode threads of the in-process path (worker processes pass their own count)
SAFETY = 1.25  # on the estimated activations: allocator slack, temporaries the estimate leaves out
TEXT_TOKENS = 256  # prompt text around the video placeholder (about 60 tokens), rounded up generously
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class VideoTooLongError(VideoError):
    """A video whose visual tokens exceed the worker's budget: refused before anything is decoded.

    Final: the same video on the same worker always gets the same answer.
    """

    def __init__(self, message: str, *, tokens: int, budget: int) -> None:
        super().__init__(message)
        self.tokens = tokens
        self.budget = budget

    def __reduce__(self):  # keyword-only fields: the default (type, args) would lose them (decode workers)
        return functools.partial(VideoTooLongError, tokens=self.tokens, budget=self.budget), (str(self),)


@dataclass(frozen=True)
class MemoryModel:
    """Estimated bytes one visual token costs, from the model's config and runtime.

    ``model_bytes``: where the model runs (RAM on CPU, GPU memory on CUDA), per token of one
    sequence: the pixel tensor on the device, the vision tower's activations of the merge^2
    patches behind a token, the language model's activations and its KV cache.
    ``input_bytes``: host RAM per token while a video waits for the model: its uint8 frames
    (while being patched) and float32 patches.
    ``quadratic_bytes``: per squared sequence length: eager attention's score matrices (all
    heads) and its float mask; 0 with SDPA and FlashAttention-2, which never hold them.
    ``padded_mask_bytes``: per squared length and row of a batch whose prompts differ in
    length: the boolean 4-D mask and the float copy SDPA's CPU kernel makes of it.
    """

    model_bytes: float
    input_bytes: float
    quadratic_bytes: float
    padded_mask_bytes: float

    @classmethod
    def for_model(cls, config: Any, *, dtype: str, attention: str, device: str,
                  layout: PatchLayout | None = None) -> MemoryModel:
        """The estimate for a Qwen2.5-VL config (``config.vision_config``, ``config.text_config``)."""
        layout = layout or PatchLayout()
        element = DTYPE_BYTES.get(dtype, 4)
        vision = config.vision_config
        text = getattr(config, "text_config", config)
        patches = layout.merge_size ** 2  # vision patches behind one merged token
        values = 3 * layout.temporal_patch_size * layout.patch_size ** 2  # one patch's pixels

        hidden, inter = int(text.hidden_size), int(text.intermediate_size)
        heads = int(text.num_attention_heads)
        kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
        head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
        layers = int(text.num_hidden_layers)
        v_hidden, v_inter = int(vision.hidden_size), int(vision.intermediate_size)
        v_head_dim = v_hidden // int(vision.num_heads)

        pixels = patches * values * (4 + element)  # float32 batch tensor + its copy in the model's dtype
        # One layer at a time (inference keeps no activations): ~8 hidden-sized tensors (residual,
        # norm, q/k/v, attention output, projections) and ~4 MLP-sized (gate, up, act, product).
        vision_act = patches * (element * (8 * v_hidden + 4 * v_inter) + 4 * 3 * v_head_dim)  # + rotary cos/sin
        text_act = element * (8 * hidden + 4 * inter) + 4 * (2 * 3 * head_dim + 3 * 2)  # + M-RoPE cos/sin, ids
        kv_cache = 2 * layers * kv_heads * head_dim * element
        model_bytes = pixels + SAFETY * (vision_act + text_act) + kv_cache

        input_bytes = patches * values * 4 + layout.temporal_patch_size * layout.size_factor ** 2 * 3

        # eager: scores in the dtype, softmax in float32 and back, plus the float mask
        quadratic = float(heads * (2 * element + 4) + element) if attention == "eager" else 0.0
        padded_mask = 0.0 if attention == "flash_attention_2" else 1 + max(element, 4)
        return cls(float(model_bytes), float(input_bytes), float(quadratic), float(padded_mask))

    def model_cost(self, tokens: int) -> float:
        length = tokens + TEXT_TOKENS
        return self.model_bytes * tokens + self.quadratic_bytes * length * length

    def batch_cost(self, tokens: list[int]) -> float:
        """Model-side bytes of one batch of videos with these token counts (left-padded when unequal)."""
        cost = sum(self.model_cost(t) for t in tokens)
        if len(set(tokens)) > 1:
            length = max(tokens) + TEXT_TOKENS
            cost += self.padded_mask_bytes * len(tokens) * length * length
        return cost


def _largest_under(linear: float, quadratic: float, memory: float) -> int:
    """Largest L with linear*L + quadratic*(L + TEXT_TOKENS)^2 <= memory (0 when nothing fits)."""
    if memory <= 0 or linear <= 0:
        return 0
    if quadratic <= 0:
        return max(0, int(memory // linear))
    # quadratic*(L+c)^2 + linear*L - memory = 0, solved for L
    c = TEXT_TOKENS
    a, b, k = quadratic, 2 * quadratic * c + linear, quadratic * c * c - memory
    root = (-b + math.sqrt(b * b - 4 * a * k)) / (2 * a)
    return max(0, int(root))


def derive_budget(memory_model: MemoryModel, *, model_memory: float, host_memory: float | None,
                  batch_size: int, decoders: int = DECODE_WORKERS, decoder_memory: int = DECODE_THREAD_MEMORY,
                  in_flight: int | None = None) -> int:
    """Visual tokens one video may have so that the worst case fits (module docstring).

    ``model_memory``: bytes free where the model runs; ``host_memory``: bytes of host RAM
    when the model runs elsewhere (CUDA), None when it is the same pool (CPU). ``decoders``:
    decode threads or worker processes, ``decoder_memory`` reserved for each; ``in_flight``:
    prepared videos held at most (default: two batches, the decode threads' prefetch).
    """
    in_flight = max(1, in_flight) if in_flight is not None else 2 * max(1, batch_size)
    reserve = decoders * decoder_memory
    if host_memory is None:
        return _largest_under(memory_model.model_bytes + in_flight * memory_model.input_bytes,
                              memory_model.quadratic_bytes, MEMORY_FRACTION * model_memory - reserve)
    host = max(0, int((MEMORY_FRACTION * host_memory - reserve) // (in_flight * memory_model.input_bytes)))
    on_device = _largest_under(memory_model.model_bytes, memory_model.quadratic_bytes, MEMORY_FRACTION * model_memory)
    return min(on_device, host)


# -- free memory ------------------------------------------------------------------------------

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _inactive_file(stat: Path, key: str) -> int:
    try:
        for line in stat.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


def _cgroup_room(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """Room left under this container's memory limit (reclaimable page cache counted as free)."""
    v2 = root / "memory.max"
    if v2.exists():
        limit, used = _read_int(v2), _read_int(root / "memory.current")
        if limit is None or used is None:  # "max": no limit
            return None
        return max(0, limit - used + _inactive_file(root / "memory.stat", "inactive_file"))
    v1 = root / "memory"
    limit, used = _read_int(v1 / "memory.limit_in_bytes"), _read_int(v1 / "memory.usage_in_bytes")
    if limit is None or used is None or limit >= 1 << 60:  # the v1 way of saying "no limit"
        return None
    return max(0, limit - used + _inactive_file(v1 / "memory.stat", "total_inactive_file"))


def available_host_memory() -> int:
    """Bytes of RAM this process can still use: MemAvailable, or less under a cgroup limit."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    if available is None:  # not Linux: free pages
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 0
    room = _cgroup_room()
    return available if room is None else min(available, room)


def free_device_memory(device: str) -> int:
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


# -- the budget of a loaded model -------------------------------------------------------------

@dataclass(frozen=True)
class TokenBudget:
    """The per-video limit in force and where it came from (for messages and logs)."""

    tokens: int
    memory_model: MemoryModel
    source: str  # how the limit was set, in words

    def check(self, path: str | os.PathLike, plan: SamplingPlan, layout: PatchLayout) -> int:
        """The plan's visual tokens; raises :class:`VideoTooLongError` when over the budget."""
        tokens = planned_token_count(plan.num_frames, plan.height, plan.width, layout)
        if tokens > self.tokens:
            need = self.memory_model.model_cost(tokens) + self.memory_model.input_bytes * tokens
            raise VideoTooLongError(
                f"{path}: too long for this worker's memory: {plan.num_frames} sampled frames at "
                f"{plan.width}x{plan.height} make {tokens:,} visual tokens, over the budget of {self.tokens:,} "
                f"({self.source}). Score it on a machine with more memory, or raise the budget with "
                f"MDSVQA_MAX_VISUAL_TOKENS={tokens} if this one has about {need / 2**30:.1f} GiB to spare "
                "(over-raised, the worker is killed by the kernel).",
                tokens=tokens, budget=self.tokens,
            )
        return tokens

    def batch_fits(self, tokens: list[int]) -> bool:
        """Whether these videos may share one forward pass (else: one at a time)."""
        if len(tokens) <= 1:
            return True
        return self.memory_model.batch_cost(tokens) <= self.memory_model.model_cost(self.tokens)


_measure_lock = threading.Lock()


def _memory_at_load(loaded) -> tuple[int, int | None]:
    """Free memory, measured once per loaded model (the first time a budget is needed), then fixed:
    a worker gives the same video the same answer whatever runs beside it later."""
    if loaded.free_memory is not None:  # not loaded.lock: the model thread holds it while generating
        return loaded.free_memory
    with _measure_lock:
        if loaded.free_memory is None:  # a LoadedModel not made by load_model, which measures it
            loaded.free_memory = free_memory_now(loaded.runtime.device)
        return loaded.free_memory


def free_memory_now(device: str) -> tuple[int, int | None]:
    """(bytes free where the model runs, host RAM when that is a GPU else None)."""
    if device.startswith("cuda"):
        return free_device_memory(device), available_host_memory()
    return available_host_memory(), None


def memory_model_of(loaded) -> MemoryModel:
    model = loaded.model
    config = model.get_base_model().config if hasattr(model, "get_base_model") else model.config
    runtime = loaded.runtime
    return MemoryModel.for_model(config, dtype=runtime.dtype, attention=runtime.attention,
                                 device=runtime.device, layout=loaded.layout)


def token_budget(settings, loaded, *, decoders: int = DECODE_WORKERS, decoder_memory: int = DECODE_THREAD_MEMORY,
                 in_flight: int | None = None) -> TokenBudget:
    """The budget for videos scored with ``loaded`` under ``settings`` (MDSVQA_MAX_VISUAL_TOKENS or derived).

    ``decoders``, ``decoder_memory`` and ``in_flight`` as in :func:`derive_budget` (the scorer's decode worker
    processes pass theirs: ``scoring.prepare.ProcessDecoding.budget_args``).
    """
    memory_model = memory_model_of(loaded)
    if settings.max_visual_tokens > 0:
        return TokenBudget(settings.max_visual_tokens, memory_model, "MDSVQA_MAX_VISUAL_TOKENS")
    first = loaded.free_memory is None
    model_memory, host_memory = _memory_at_load(loaded)
    held = in_flight if in_flight is not None else 2 * settings.batch_size
    tokens = derive_budget(memory_model, model_memory=model_memory, host_memory=host_memory,
                           batch_size=settings.batch_size, decoders=decoders, decoder_memory=decoder_memory,
                           in_flight=held)
    if host_memory is None:
        per_token = memory_model.model_bytes + held * memory_model.input_bytes
        where = "available RAM"
    else:
        where, per_token = "free GPU memory", memory_model.model_bytes
    budget = TokenBudget(tokens, memory_model, f"derived from {model_memory / 2**30:.1f} GiB of {where} at model "
                                               f"load, ~{per_token / 1024:.0f} KiB per token")
    if first:
        log.info("visual-token budget per video: %d (%s)", budget.tokens, budget.source)
    return budget
