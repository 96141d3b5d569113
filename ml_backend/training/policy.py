"""The model being trained: base + one trainable LoRA adapter, rollouts and per-token log-probs.

Training needs things serving does not: sampled completions kept as token ids, and a
differentiable forward that scores those tokens under the adapter (policy) and with
the adapter disabled (the frozen reference for the KL term). One PEFT model gives
both, so the 7B base is in memory once. Prompts are the reference's (no "Video 1:" vision
id); a training step sees the reference's training input (``MDSVQA_TRAIN_MAX_FRAMES``
random sorted frames of the 2-fps sample, squashed to ``MDSVQA_TRAIN_FRAME_SIDE``),
predictions the inference input.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import ModelNotFoundError, VideoError
from ..model.loading import TINY_WARNING, Runtime, choose_runtime, load_base_model, patch_layout
from ..model.lora import lora_config
from ..model.sources import ModelSource, resolve_source
from ..prompts import Task
from ..scoring.generation import TOP_K, TOP_P, generation_options, greedy_options, reference_sampling, stop_tokens
from ..scoring.inputs import PromptEncoder, mm_token_type_ids
from ..settings import Settings, VideoSettings
from ..video.decoding import decode_video
from ..video.patches import PatchLayout, video_patches
from ..video.sampling import training_plan
from .rewards import parse_scores

if TYPE_CHECKING:
    from ..scoring.constraint import AnswerTrie

log = logging.getLogger(__name__)



@dataclass
class VideoPrompt:
    """One video with its prompt, as tensors on the model's device (batch of one)."""

    input_ids: torch.Tensor  # (1, L)
    pixel_values_videos: torch.Tensor  # (patches, 1176)
    video_grid_thw: torch.Tensor  # (1, 3)
    second_per_grid: float


@dataclass
class Completions:
    """Sampled answers to one prompt: token ids right-padded, a mask of real tokens, decoded texts."""

    tokens: torch.Tensor  # (n, T)
    mask: torch.Tensor  # (n, T) float, 1 up to and including the end token
    texts: list[str]


class Policy:
    """A Qwen2.5-VL base with one trainable LoRA adapter (named "default")."""

    def __init__(self, model: Any, processor: Any, runtime: Runtime, base: ModelSource,
                 start_adapter: ModelSource | None, video_settings: VideoSettings, *,
                 frames_per_step: int = 14, frame_side: int = 504) -> None:
        self.model = model
        self.processor = processor
        self.runtime = runtime
        self.base = base
        self.start_adapter = start_adapter
        self.video_settings = video_settings  # inference sampling; training draws from its plan
        self.frames_per_step = frames_per_step
        self.frame_side = frame_side
        self.layout: PatchLayout = patch_layout(processor)
        self.device = torch.device(runtime.device)
        config = model.get_base_model().config
        # Training prompts carry no "Video 1: " id (SPEC section 2).
        self.prompts = PromptEncoder(processor, int(config.video_token_id), self.layout.merge_size)
        # the serving path's end and pad tokens (one generation stack: scoring.generation)
        self.stop = stop_tokens(model.get_base_model().generation_config, processor.tokenizer)
        self.eos_ids = self.stop.end_ids
        self.pad_id = self.stop.pad_id
        self._trie: AnswerTrie | None = None  # the answer trie of constrained_score, built on first use

    # --- loading ---------------------------------------------------------------------------------

    @classmethod
    def load(cls, settings: Settings, adapter: str | None) -> Policy:
        """Base ``settings.base`` plus a trainable adapter: ``adapter`` (a folder or hub id) or a fresh LoRA.

        Only LoRA weights require gradients; the vision tower carries no LoRA at all
        (``ml_backend.model.lora``).
        """
        from peft import PeftModel, get_peft_model
        from transformers import AutoProcessor

        base = resolve_source(settings.base, kind="base model", offline=settings.offline, required_file="config.json")
        start = None if adapter is None else resolve_source(adapter, kind="adapter", offline=settings.offline,
                                                            required_file="adapter_config.json")
        runtime = choose_runtime(settings)
        try:
            processor = AutoProcessor.from_pretrained(str(base.path), local_files_only=True)
        except Exception as exc:
            raise ModelNotFoundError(f"base model {settings.base!r}: cannot load from {base.path}: {exc}") from exc
        processor.tokenizer.padding_side = "left"
        model = load_base_model(base, settings.base, runtime)
        if settings.training.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        if start is None:
            peft_model = get_peft_model(model, lora_config())
        else:
            try:
                peft_model = PeftModel.from_pretrained(model, str(start.path), is_trainable=True)
            except Exception as exc:
                raise ModelNotFoundError(f"adapter {adapter!r}: cannot load from {start.path}: {exc}") from exc
        if base.is_tiny:
            log.warning(TINY_WARNING)
        return cls(peft_model, processor, runtime, base, start, settings.video,
                   frames_per_step=settings.training.max_frames, frame_side=settings.training.frame_side)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def save_adapter(self, directory: Path) -> None:
        self.model.save_pretrained(str(directory), save_embedding_layers=False)

    # --- inputs ----------------------------------------------------------------------------------

    def encode(self, video: Path, task: Task, draw: random.Random | None = None) -> VideoPrompt:
        """Decode ``video`` and build its prompt (raises VideoError on bad files).

        With ``draw`` (a training step): the reference's training input, ``frames_per_step``
        frames drawn by ``draw`` from the 2-fps frames, squashed to ``frame_side``; without:
        exactly the inference input, as serving gives it (held-out evaluation, f's scores).
        """
        adjust = None
        if draw is not None:
            def adjust(plan):
                return training_plan(plan, side=self.frame_side, frames=self.frames_per_step, rng=draw)
        decoded = decode_video(video, self.video_settings, adjust_plan=adjust)
        patches, grid = video_patches(decoded.frames, self.layout)
        ids = self.prompts.prompt_ids(task, grid)
        return VideoPrompt(
            input_ids=torch.tensor([ids], device=self.device),
            pixel_values_videos=torch.from_numpy(patches).to(self.device, getattr(torch, self.runtime.dtype)),
            video_grid_thw=torch.from_numpy(grid)[None].to(self.device),
            second_per_grid=float(decoded.plan.seconds_per_grid),
        )

    # --- rollouts --------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, prompt: VideoPrompt, count: int, *, temperature: float, max_new_tokens: int,
               use_adapter: bool = True) -> Completions:
        """``count`` sampled answers with the rollouts' own generation config.

        Explicit and complete (temperature, top-k 50, top-p 1, no repetition penalty), as the
        reference's trainer builds it: nothing is inherited from the checkpoint's
        generation_config.json (Qwen2.5-VL ships repetition_penalty 1.05 there).
        """
        sequences = self._generate(prompt, use_adapter=use_adapter,
                                   generation_config=rollout_generation_config(temperature, max_new_tokens, count))
        tokens = sequences[:, prompt.input_ids.shape[1]:]
        mask = completion_mask(tokens, self.eos_ids)
        lengths = mask.sum(dim=1).long().tolist()
        texts = [self.processor.tokenizer.decode(row[:n], skip_special_tokens=True)
                 for row, n in zip(tokens.tolist(), lengths)]
        return Completions(tokens, mask, texts)

    def predict(self, videos: list[Path], task: Task, *, samples: int, max_new_tokens: int,
                use_adapter: bool = True, fallback: bool = False) -> np.ndarray:
        """Mean parsed score of ``samples`` answers per video at inference settings; NaN where none parsed.

        Inference settings as the reference's inference, with serving's sampling options
        (:func:`~ml_backend.scoring.generation.reference_sampling`): the full inference input,
        top-k 50, top-p 1, the checkpoint's temperature. ``fallback``: where no sampled answer
        parses, take the constrained answer instead (a different estimator: only for random test
        models). Videos that cannot be decoded stay NaN either way.
        """
        scores = np.full(len(videos), np.nan)
        for index, video in enumerate(videos):
            try:
                prompt = self.encode(video, task)
            except VideoError as exc:
                log.warning("no %s score for %s: %s", task, video, exc)
                continue
            sequences = self._generate(prompt, use_adapter=use_adapter, **reference_sampling(max_new_tokens, samples))
            tokens = sequences[:, prompt.input_ids.shape[1]:]
            lengths = completion_mask(tokens, self.eos_ids).sum(dim=1).long().tolist()
            texts = [self.processor.tokenizer.decode(row[:n], skip_special_tokens=True)
                     for row, n in zip(tokens.tolist(), lengths)]
            parsed = parse_scores(texts)
            if np.isfinite(parsed).any():
                scores[index] = float(np.nanmean(parsed))
            elif fallback:
                scores[index] = self.constrained_score(prompt, use_adapter=use_adapter)
        return scores

    @torch.no_grad()
    def constrained_score(self, prompt: VideoPrompt, *, use_adapter: bool = True) -> float:
        """The greedy answer along the answer trie (always parseable, deterministic)."""
        from ..scoring.constraint import AnswerTrie

        if self._trie is None:
            self._trie = AnswerTrie.for_tokenizer(self.processor.tokenizer, self.eos_ids)
        sequences = self._generate(prompt, use_adapter=use_adapter, **greedy_options(self._trie.max_new_tokens),
                                   prefix_allowed_tokens_fn=self._trie.prefix_function(prompt.input_ids.shape[1]))
        text = self.processor.tokenizer.decode(sequences[0, prompt.input_ids.shape[1]:], skip_special_tokens=True)
        return float(parse_scores([text])[0])

    def _generate(self, prompt: VideoPrompt, *, use_adapter: bool, **options) -> torch.Tensor:
        """``generate`` on one prompt in eval mode, with or without the adapter; training mode restored."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self._adapter(use_adapter):
                return self.model.generate(
                    input_ids=prompt.input_ids, attention_mask=torch.ones_like(prompt.input_ids),
                    mm_token_type_ids=mm_token_type_ids(prompt.input_ids, self.prompts.video_token_id),
                    pixel_values_videos=prompt.pixel_values_videos, video_grid_thw=prompt.video_grid_thw,
                    second_per_grid_ts=[prompt.second_per_grid],
                    **generation_options(self.stop, self.prompts.placeholder_ids()), **options)
        finally:
            self.model.train(was_training)

    # --- scoring tokens --------------------------------------------------------------------------

    def token_logprobs(self, prompt: VideoPrompt, completions: Completions, *, use_adapter: bool = True
                       ) -> torch.Tensor:
        """Log-probability of every completion token, shape (n, T); differentiable unless under no_grad."""
        count = completions.tokens.shape[0]
        prompt_ids = prompt.input_ids.expand(count, -1)
        input_ids = torch.cat([prompt_ids, completions.tokens], dim=1)
        attention = torch.cat([torch.ones_like(prompt_ids), completions.mask.to(prompt_ids.dtype)], dim=1)
        with self._adapter(use_adapter):
            logits = self.model(
                input_ids=input_ids, attention_mask=attention,
                mm_token_type_ids=mm_token_type_ids(input_ids, self.prompts.video_token_id),
                pixel_values_videos=prompt.pixel_values_videos.repeat(count, 1),
                video_grid_thw=prompt.video_grid_thw.repeat(count, 1),
                second_per_grid_ts=torch.full((count,), prompt.second_per_grid, device=self.device),
                use_cache=False,
            ).logits
        start = prompt.input_ids.shape[1]
        completion_logits = logits[:, start - 1:-1].float()
        return torch.log_softmax(completion_logits, dim=-1).gather(-1, completions.tokens[..., None]).squeeze(-1)

    def _adapter(self, enabled: bool):
        import contextlib

        return contextlib.nullcontext() if enabled else self.model.disable_adapter()


def rollout_generation_config(temperature: float, max_new_tokens: int, count: int):
    """The generation config of training rollouts, built from scratch (SPEC 6)."""
    from transformers import GenerationConfig

    return GenerationConfig(do_sample=True, temperature=temperature, top_k=TOP_K, top_p=TOP_P, repetition_penalty=1.0,
                            max_new_tokens=max_new_tokens, num_return_sequences=count)


def completion_mask(tokens: torch.Tensor, end_ids: list[int]) -> torch.Tensor:
    """1.0 for every token up to and including the first end token of its row, 0.0 after it."""
    is_end = torch.zeros_like(tokens, dtype=torch.bool)
    for end in end_ids:
        is_end |= tokens == end
    ended_before = torch.cumsum(is_end.long(), dim=1) - is_end.long()  # ends strictly before each position
    return (ended_before == 0).float()
