"""Running the model on a prepared batch and turning its text into scores.

Three decoding modes (``Settings.decoding``):
- ``constrained`` (default): greedy along the answer trie; deterministic, always parseable.
- ``greedy``: free-form greedy text, parsed afterwards; may fail to parse.
- ``sample``: the reference's sampling (top-k 50, top-p 1, checkpoint temperature),
  ``num_samples`` answers per video averaged over those that parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..answers import parse_score
from ..errors import AnswerParseError
from ..model.loading import DIFFICULTY_ADAPTER, LoadedModel
from ..prompts import Task
from ..settings import Settings
from .constraint import AnswerTrie
from .inputs import PreparedVideo, PromptEncoder


@dataclass(frozen=True)
class Answer:
    """What the model said about one video: the score, or why there is none."""

    score: float | None
    text: str
    error: str | None = None


@dataclass(frozen=True)
class StopTokens:
    """Where generation ends and what pads a batch: the same for serving, rollouts and f's estimates."""

    end_ids: list[int]
    pad_id: int


def stop_tokens(generation_config: Any, tokenizer: Any) -> StopTokens:
    """The checkpoint's end tokens plus the chat turn's end (``<|im_end|>``), and its pad token."""
    configured = generation_config.eos_token_id
    ids = [int(i) for i in (configured if isinstance(configured, (list, tuple)) else [configured]) if i is not None]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end not in ids and im_end != tokenizer.unk_token_id:
        ids.insert(0, im_end)
    if not ids:
        ids = [int(tokenizer.eos_token_id)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else generation_config.pad_token_id
    return StopTokens(ids, int(pad if pad is not None else ids[0]))


def generation_options(stop: StopTokens, suppress: list[int]) -> dict:
    """``generate`` options every call shares: end and pad tokens, video placeholders never generated."""
    return {"eos_token_id": stop.end_ids, "pad_token_id": stop.pad_id, "suppress_tokens": suppress}


def greedy_options(max_new_tokens: int) -> dict:
    """Greedy search, with the checkpoint's sampling defaults silenced (they do not apply to it)."""
    return {"do_sample": False, "max_new_tokens": max_new_tokens, "temperature": None, "top_k": None, "top_p": None}


# The reference's sampling (SPEC 4): top-k 50, top-p 1. Serving, rollouts and f's estimates use it.
TOP_K = 50
TOP_P = 1.0


def reference_sampling(max_new_tokens: int, samples: int, temperature: float | None = None) -> dict:
    """``generate`` options of the reference's inference sampling: top-k 50, top-p 1, the rest
    (temperature unless given) from the checkpoint's generation config.

    Serving (``decoding=sample``) and training's estimates of f both sample with these.
    """
    options: dict = {"do_sample": True, "top_k": TOP_K, "top_p": TOP_P, "max_new_tokens": max_new_tokens,
                     "num_return_sequences": samples}
    if temperature is not None:
        options["temperature"] = temperature
    return options


def decoding_identity(settings: Settings, task: Task) -> dict:
    """Decoding settings that change the answer, for cache keys."""
    ident: dict = {"task": task, "decoding": settings.decoding}
    if settings.decoding != "constrained":
        ident["max_new_tokens"] = settings.max_new_tokens
    if settings.decoding == "sample":
        ident.update(num_samples=settings.num_samples, temperature=settings.temperature, seed=settings.seed)
    return ident


class AnswerGenerator:
    """Batched generation for one task with one adapter (or the bare base when adapter is None)."""

    def __init__(self, loaded: LoadedModel, settings: Settings, *, task: Task = "difficulty",
                 adapter: str | None = DIFFICULTY_ADAPTER) -> None:
        self.loaded = loaded
        self.settings = settings
        self.task = task
        self.adapter = adapter
        base = loaded.model.get_base_model() if hasattr(loaded.model, "get_base_model") else loaded.model
        self.encoder = PromptEncoder(loaded.processor, base.config.video_token_id, loaded.layout.merge_size)
        self.stop = stop_tokens(base.generation_config, loaded.tokenizer)
        self.end_ids = self.stop.end_ids
        self.trie = AnswerTrie.for_tokenizer(loaded.tokenizer, self.end_ids)

    def generate(self, videos: Sequence[PreparedVideo]) -> list[Answer]:
        import contextlib

        import torch

        loaded = self.loaded
        batch = self.encoder.encode(self.task, videos)
        device = loaded.runtime.device
        dtype = getattr(torch, loaded.runtime.dtype)
        batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
        batch["pixel_values_videos"] = batch["pixel_values_videos"].to(dtype)
        prompt_length = batch["input_ids"].shape[1]

        s = self.settings
        options = generation_options(self.stop, self.encoder.placeholder_ids())
        samples = 1
        if s.decoding == "constrained":
            options.update(greedy_options(self.trie.max_new_tokens),
                           prefix_allowed_tokens_fn=self.trie.prefix_function(prompt_length))
        elif s.decoding == "greedy":
            options.update(greedy_options(s.max_new_tokens))
        else:
            samples = s.num_samples
            options.update(reference_sampling(s.max_new_tokens, samples, s.temperature))

        with loaded.lock, torch.inference_mode():
            if self.adapter is None:
                context = loaded.model.disable_adapter()
            else:
                loaded.model.set_adapter(self.adapter)
                context = contextlib.nullcontext()
            if s.decoding == "sample":
                torch.manual_seed(s.seed)
            with context:
                output = loaded.model.generate(**batch, **options)
        texts = loaded.tokenizer.batch_decode(output[:, prompt_length:], skip_special_tokens=True)
        return [self._answer(texts[i * samples:(i + 1) * samples]) for i in range(len(videos))]

    @staticmethod
    def _answer(texts: list[str]) -> Answer:
        scores, errors = [], []
        for text in texts:
            try:
                scores.append(parse_score(text))
            except AnswerParseError as exc:
                errors.append(str(exc))
        joined = texts[0] if len(texts) == 1 else "\n---\n".join(texts)
        if not scores:
            return Answer(None, joined, f"unparseable answer: {errors[0]}")
        return Answer(sum(scores) / len(scores), joined)
