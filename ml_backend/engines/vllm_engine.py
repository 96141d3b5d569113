"""Scoring on vLLM (``MDSVQA_ENGINE=vllm``): same frames, prompt and decoding rules as the HF engine.

What vLLM gets, per video:

- the prompt as token ids, rendered and tokenized by our :class:`PromptEncoder` with one video
  placeholder, which vLLM expands to the video's token count (tested equal to ours);
- the exact frames our decoder planned and resized (``decode_video``: the frames
  :func:`~ml_backend.scoring.scorer.prepare_video` patches), as ``(frames uint8 TxHxWx3, metadata)``
  with ``do_sample_frames=False`` and the processor's resizing off (``do_resize=False``), so vLLM
  only patches them; the metadata's fps is chosen so that vLLM's ``second_per_grid_ts``
  (temporal patch / sampled fps) is ours (1.0 by default, as the checkpoints were trained);
- the decoding rules of :class:`~ml_backend.scoring.generation.AnswerGenerator`: the same end
  tokens, the same answer trie (a logits processor, :mod:`.vllm_logits`) or, with
  ``MDSVQA_VLLM_CONSTRAINT=regex``, vLLM's structured outputs with :func:`~ml_backend.answers.answer_regex`,
  placeholder tokens suppressed, the checkpoint's repetition penalty, the reference's sampling.

vLLM refuses LoRA on ``lm_head``, so each adapter version is served as a merged checkpoint
(:mod:`.merged`, cached under ``MDSVQA_CACHE_DIR/merged``) by an engine of its own: a new active
version means a merged checkpoint and a new engine beside the old one until the switch
(``ml_backend.server.live``); an evicted version's engine is shut down.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..answers import allowed_answers, answer_regex
from ..errors import ConfigurationError
from ..model.loading import DIFFICULTY_ADAPTER, LoadedModel, ModelSpec, Runtime, patch_layout, resolve_model
from ..model.sources import resolve_source
from ..prompts import Task
from ..scoring.budget import TEXT_TOKENS, VideoTooLongError
from ..scoring.cache import ScoreCache
from ..scoring.constraint import AnswerTrie
from ..scoring.generation import TOP_K, TOP_P, Answer, AnswerGenerator, decoding_identity
from ..scoring.inputs import PreparedVideo
from ..scoring.scorer import DifficultyScorer
from ..settings import Settings
from ..video.decoding import decode_video
from ..video.patches import PatchLayout, planned_token_count, video_grid
from ..video.sampling import SamplingPlan

log = logging.getLogger(__name__)

ATTENTION = "vllm"  # the runtime's attention kernel: vLLM's own (part of cache keys and model versions)


@dataclass(frozen=True)
class FramesVideo(PreparedVideo):
    """A video as vLLM takes it: the planned frames themselves (vLLM patches them), no patches of ours."""

    frames: np.ndarray = field(default_factory=lambda: np.empty((0, 0, 0, 3), np.uint8), repr=False)


def video_item(video: FramesVideo, layout: PatchLayout) -> tuple[np.ndarray, dict[str, Any]]:
    """``(frames, metadata)`` for vLLM: frames as given (no sampling, no resizing), our temporal spacing."""
    count = len(video.frames)
    # vLLM's (HF's) second_per_grid_ts = temporal_patch_size / sampled fps, sampled fps = fps here
    fps = layout.temporal_patch_size / video.seconds_per_grid
    return video.frames, {"total_num_frames": count, "fps": fps, "duration": count / fps, "video_backend": "numpy",
                          "frames_indices": list(range(count)), "do_sample_frames": False}


def vllm_runtime(runtime: Runtime) -> Runtime:
    return Runtime(runtime.device, runtime.dtype, ATTENTION)


def trie_sequences(trie: AnswerTrie) -> list[list[int]]:
    """Every complete token sequence of the trie (its answers, as the HF engine encoded them)."""
    found: list[list[int]] = []

    def walk(node: dict[int, dict], prefix: list[int]) -> None:
        for token, child in node.items():
            if token == -1:
                found.append(prefix)
            else:
                walk(child, [*prefix, token])

    walk(trie.root, [])
    return found


def engine_args(checkpoint: Path, settings: Settings, runtime: Runtime) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for one merged checkpoint."""
    from .vllm_logits import AnswerConstraint

    v = settings.vllm
    args: dict[str, Any] = {
        "model": str(checkpoint), "tokenizer": str(checkpoint), "dtype": runtime.dtype, "seed": settings.seed,
        "limit_mm_per_prompt": {"image": 0, "video": 1},
        "mm_processor_kwargs": {"do_resize": False},  # our frames are already at their planned size
        "logits_processors": [AnswerConstraint],
        "enforce_eager": v.enforce_eager, "tensor_parallel_size": v.tensor_parallel_size,
    }
    if v.max_model_len is not None:
        args["max_model_len"] = v.max_model_len
    if runtime.device.startswith("cuda"):
        args["gpu_memory_utilization"] = v.gpu_memory_utilization
    if v.kv_cache_gib is not None:
        args["kv_cache_memory_bytes"] = int(v.kv_cache_gib * 2**30)
    return args


class VllmEngine:
    """One ``vllm.LLM`` on one checkpoint, with the base's config and generation config (what HF reads).

    :meth:`shutdown` frees it (its processes and memory); the next :meth:`generate` or :meth:`start`
    starts it again, so a scorer holding it never sees a dead engine.
    """

    def __init__(self, checkpoint: Path, base_path: Path, settings: Settings, runtime: Runtime) -> None:
        from transformers import AutoConfig, GenerationConfig

        self.checkpoint = checkpoint
        self.config = AutoConfig.from_pretrained(str(base_path), local_files_only=True)
        self.generation_config = GenerationConfig.from_pretrained(str(base_path), local_files_only=True)
        self.lock = threading.Lock()
        self._args = engine_args(checkpoint, settings, runtime)
        self._llm: Any = None
        self.max_model_len = 0
        self.start()

    @property
    def running(self) -> bool:
        return self._llm is not None

    def start(self) -> None:
        with self.lock:
            self._start()

    def _start(self) -> None:
        if self._llm is not None:
            return
        # Spawned engine processes, never forked from a process with decode and request threads.
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        from vllm import LLM

        self._llm = LLM(**self._args)
        self.max_model_len = int(self._llm.llm_engine.model_config.max_model_len)
        log.info("vLLM engine on %s started", self.checkpoint)

    def generate(self, prompts: list[dict[str, Any]], params: Any) -> list[Any]:
        with self.lock:
            self._start()
            return list(self._llm.generate(prompts, params, use_tqdm=False))

    def processed(self, prompt: dict[str, Any]) -> Any:
        """What vLLM's own input processor makes of one prompt (token ids and processed video): for tests."""
        self.start()
        renderer = self._llm.llm_engine.renderer
        return renderer._process_multimodal(prompt["prompt_token_ids"], prompt["multi_modal_data"], None,
                                            self._llm.llm_engine.model_config.mm_processor_kwargs,
                                            skip_mm_cache=True)  # the data itself, not a cache reference

    def shutdown(self) -> None:
        with self.lock:
            llm, self._llm = self._llm, None
        if llm is not None:
            core = getattr(llm.llm_engine, "engine_core", None)
            if core is not None:
                core.shutdown()
            log.info("vLLM engine on %s shut down", self.checkpoint)


class VllmGenerator(AnswerGenerator):
    """:class:`AnswerGenerator`'s prompt, end tokens and trie; the model work on a :class:`VllmEngine`."""

    def __init__(self, loaded: LoadedModel, settings: Settings, *, task: Task = "difficulty",
                 adapter: str | None = DIFFICULTY_ADAPTER) -> None:
        super().__init__(loaded, settings, task=task, adapter=adapter)
        self.engine: VllmEngine = loaded.model
        self.params = self.sampling_params()

    def sampling_params(self) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        from .vllm_logits import EXTRA_ARGS_KEY, request_args

        s = self.settings
        suppress = self.encoder.placeholder_ids()
        generation = self.engine.generation_config
        common: dict[str, Any] = {
            # texts are decoded here with the checkpoint's tokenizer, as the HF engine decodes them (vLLM's
            # incremental detokenizer holds back incomplete UTF-8 at the end of a text)
            "stop_token_ids": list(self.stop.end_ids), "detokenize": False,
            # HF's generate applies the checkpoint's repetition penalty in every mode; so does vLLM here
            "repetition_penalty": float(getattr(generation, "repetition_penalty", None) or 1.0),
        }
        if s.decoding == "constrained" and s.vllm.constraint == "trie":
            return SamplingParams(temperature=0.0, max_tokens=self.trie.max_new_tokens, **common, extra_args={
                EXTRA_ARGS_KEY: request_args(trie_sequences(self.trie), self.stop.end_ids, suppress)})
        extra = {EXTRA_ARGS_KEY: request_args(None, self.stop.end_ids, suppress)}
        if s.decoding == "constrained":
            longest = max(len(answer) for answer in allowed_answers()) + 1  # a character a token at worst, + end
            return SamplingParams(temperature=0.0, max_tokens=longest, **common, extra_args=extra,
                                  structured_outputs=StructuredOutputsParams(regex=answer_regex()))
        if s.decoding == "greedy":
            return SamplingParams(temperature=0.0, max_tokens=s.max_new_tokens, **common, extra_args=extra)
        temperature = s.temperature if s.temperature is not None else getattr(generation, "temperature", None)
        return SamplingParams(n=s.num_samples, temperature=float(temperature if temperature is not None else 1.0),
                              top_k=TOP_K, top_p=TOP_P, seed=s.seed, max_tokens=s.max_new_tokens, **common,
                              extra_args=extra)

    def prompt(self, video: PreparedVideo) -> dict[str, Any]:
        """One request: our prompt with one placeholder (vLLM expands it) and the video's frames."""
        if not isinstance(video, FramesVideo):
            raise TypeError("the vLLM engine takes FramesVideo (decoded frames), not patches")
        before, after = self.encoder.halves(self.task)
        return {"prompt_token_ids": [*before, self.encoder.video_token_id, *after],
                "multi_modal_data": {"video": video_item(video, self.loaded.layout)}}

    def generate(self, videos: Sequence[PreparedVideo]) -> list[Answer]:
        outputs = self.engine.generate([self.prompt(video) for video in videos], self.params)
        decode = self.loaded.tokenizer.batch_decode
        return [self._answer(decode([list(c.token_ids) for c in output.outputs], skip_special_tokens=True))
                for output in outputs]


class VllmScorer(DifficultyScorer):
    """:class:`DifficultyScorer` on a vLLM engine of its own: one adapter, merged into the base.

    The engine starts on first use (``loaded``), on the merged checkpoint of this scorer's adapter
    (built and cached on first use), and stops with :meth:`close`. ``loaded`` is a
    :class:`LoadedModel` whose ``model`` is that :class:`VllmEngine` (with the base's processor,
    patch layout and spec), so everything that reads the tokenizer or the layout works unchanged;
    vision-tower features need the transformers model and are refused.
    """

    def __init__(self, spec: ModelSpec, settings: Settings, cache: ScoreCache | None = None, *,
                 task: Task = "difficulty", adapter: str | None = DIFFICULTY_ADAPTER, decode_workers: int = 2,
                 with_features: bool = False, engine: VllmEngine | None = None) -> None:
        spec = replace(spec, runtime=vllm_runtime(spec.runtime))
        super().__init__(spec, settings, cache, task=task, adapter=adapter, decode_workers=decode_workers,
                         with_features=with_features)
        if settings.decoding == "constrained":  # the regex admits other token paths: other cache entries
            self._identity["decoding"] = {**decoding_identity(settings, task), "constraint": settings.vllm.constraint}
        self._engine = engine
        self._owns_engine = engine is None
        self._vllm_generator: VllmGenerator | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> VllmScorer:
        check_vllm_importable()
        device = settings.device
        if device.startswith("cuda:") and device != "cuda:0":
            raise ConfigurationError(f"the vLLM engine uses the GPUs CUDA_VISIBLE_DEVICES names, not {device}: "
                                     "set CUDA_VISIBLE_DEVICES instead of MDSVQA_DEVICE")
        cache = ScoreCache(settings.cache_path) if settings.use_cache else None
        return cls(resolve_model(settings), settings, cache)

    # The engine ---------------------------------------------------------------------------------
    @property
    def owns_model(self) -> bool:
        return True

    def checkpoint(self) -> Path:
        """The folder the engine serves: the base merged with this scorer's adapter (the base itself for f)."""
        from .merged import merged_checkpoint

        if self.adapter is None:
            return self.spec.base.path
        return merged_checkpoint(self.settings.cache_dir, self.spec.base, self.spec.adapters[self.adapter],
                                 self.spec.runtime.dtype)

    @property
    def loaded(self) -> LoadedModel:
        with self._load_lock:
            if self._loaded is None:
                from ..model.loading import TINY_WARNING, load_processor

                if self._engine is None:
                    self._engine = VllmEngine(self.checkpoint(), self.spec.base.path, self.settings,
                                              self.spec.runtime)
                processor = load_processor(self.settings)
                self._loaded = LoadedModel(self._engine, processor, self.spec, patch_layout(processor))
                if self.spec.is_tiny:
                    log.warning(TINY_WARNING)
                log.info("serving %s on vLLM (%s, %s)", self.model_version, self.spec.runtime.device,
                         self.spec.runtime.dtype)
            return self._loaded

    @property
    def engine(self) -> VllmEngine:
        engine = self.loaded.model
        assert isinstance(engine, VllmEngine)
        return engine

    @property
    def generator(self) -> AnswerGenerator:
        loaded = self.loaded
        with self._load_lock:
            if self._vllm_generator is None:
                self._vllm_generator = VllmGenerator(loaded, self.settings, task=self.task, adapter=self.adapter)
            return self._vllm_generator

    def for_adapter(self, name: str, location: str, *, label: str | None = None) -> DifficultyScorer:
        """A scorer of another adapter version: its own merged checkpoint and engine (started on first use)."""
        source = resolve_source(location, kind="adapter", offline=self.settings.offline,
                                required_file="adapter_config.json")
        if label is not None:
            source = replace(source, spec=label)
        spec = ModelSpec(self.spec.base, {**self.spec.adapters, name: source}, self.spec.runtime)
        scorer = VllmScorer(spec, self.settings, self.cache, task=self.task, adapter=name,
                            with_features=self.with_features)
        _ = scorer.loaded  # merge and start now, off the request path, before the switch
        return scorer

    def suspend(self) -> None:
        """Stop the engine (its memory is free for another version's); the next batch or :meth:`resume` restarts it."""
        engine = self._engine
        if engine is not None and self._owns_engine and engine.running:
            engine.shutdown()

    def resume(self) -> None:
        self.engine.start()

    def close(self, *, cache: bool = True) -> None:
        super().close(cache=cache)
        with self._load_lock:
            engine, self._loaded, self._vllm_generator = self._engine, None, None
            if self._owns_engine:
                self._engine = None
        if engine is not None and self._owns_engine:
            engine.shutdown()

    # Inputs -------------------------------------------------------------------------------------
    def token_limit(self) -> int:
        """Visual tokens one video may have: MDSVQA_MAX_VISUAL_TOKENS, else what the engine's max_model_len leaves."""
        if self.settings.max_visual_tokens > 0:
            return self.settings.max_visual_tokens
        return self.engine.max_model_len - TEXT_TOKENS - 64

    def _prepare_video(self, path: Path, *, every_frame: Callable[[np.ndarray, int], None] | None = None
                       ) -> PreparedVideo:
        if self.with_features and not self.frame_features:
            raise ConfigurationError("vision-tower features (MDSVQA_FEATURES_EXTRACTOR=vision) need the hf engine; "
                                     "with vllm use clip or siglip2")
        loaded, limit = self.loaded, self.token_limit()

        def check(plan: SamplingPlan) -> None:
            tokens = planned_token_count(plan.num_frames, plan.height, plan.width, loaded.layout)
            if tokens > limit:
                raise VideoTooLongError(
                    f"{path}: too long for this vLLM engine: {plan.num_frames} sampled frames at "
                    f"{plan.width}x{plan.height} make {tokens:,} visual tokens, over {limit:,} "
                    "(MDSVQA_MAX_VISUAL_TOKENS if set, else the engine's max_model_len less the prompt and answer; "
                    "raise MDSVQA_VLLM_MAX_MODEL_LEN up to the model's limit)", tokens=tokens, budget=limit)

        decoded = decode_video(path, self.settings.video, every_frame=every_frame, check_plan=check)
        frames = decoded.frames
        grid = video_grid(len(frames), frames.shape[1], frames.shape[2], loaded.layout)
        return FramesVideo(np.empty((0, 0), np.float32), grid, decoded.plan.seconds_per_grid, frames)

    def _batch_fits(self, videos: list[PreparedVideo]) -> bool:
        return True  # vLLM batches sequences without a padding mask


def check_vllm_importable() -> None:
    """Raise a clear error when vLLM is missing (before any weights are merged)."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        raise ConfigurationError("MDSVQA_ENGINE=vllm needs vLLM: pip install 'mdsvqa-labelstudio[vllm]' "
                                 "(scripts/setup_vllm.sh on a CPU host)")
