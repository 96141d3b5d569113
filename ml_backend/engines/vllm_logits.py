"""The HF engine's decoding rules as a vLLM logits processor: the answer trie and suppressed tokens.

Imported by vLLM's engine process (``LLM(logits_processors=[AnswerConstraint])``); a request
opts in with ``SamplingParams(extra_args={"mdsvqa": request_args(...)})``. The trie is the very
:class:`~ml_backend.scoring.constraint.AnswerTrie` that ``generate(prefix_allowed_tokens_fn=...)``
walks in the HF engine, built from token sequences the scorer sends (its own tokenizer's), so
both engines allow exactly the same tokens at every step: greedy search then takes the same
path. A regex (vLLM's structured outputs) allows every token spelling of an answer, and an
untrained model picks other spellings, hence other digits (seen on the tiny model).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from typing import Any

import torch
from vllm.v1.sample.logits_processor import AdapterLogitsProcessor

from ..scoring.constraint import AnswerTrie

EXTRA_ARGS_KEY = "mdsvqa"


def request_args(trie_sequences: Sequence[Sequence[int]] | None, end_ids: Sequence[int],
                 suppress: Sequence[int]) -> dict[str, Any]:
    """A request's ``extra_args[EXTRA_ARGS_KEY]``: the trie's answers as token ids (or None), tokens never made."""
    args: dict[str, Any] = {"suppress": [int(t) for t in suppress]}
    if trie_sequences is not None:
        sequences = [[int(t) for t in seq] for seq in trie_sequences]
        ends = [int(t) for t in end_ids]
        args |= {"answers": sequences, "end_ids": ends,
                 "key": hashlib.sha256(json.dumps([sequences, ends]).encode()).hexdigest()[:16]}
    return args


class AnswerConstraint(AdapterLogitsProcessor):
    """Per request: only the trie's next tokens (then its end tokens), and never a suppressed token."""

    def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
        super().__init__(vllm_config, device, is_pin_memory)
        self._tries: dict[str, AnswerTrie] = {}  # one per answer set (one per tokenizer in practice)

    def is_argmax_invariant(self) -> bool:
        return False  # it changes what greedy search picks

    def new_req_logits_processor(self, params: Any) -> Callable[[list[int], torch.Tensor], torch.Tensor] | None:
        args = (getattr(params, "extra_args", None) or {}).get(EXTRA_ARGS_KEY)
        if not args:
            return None
        trie: AnswerTrie | None = None
        if args.get("answers") is not None:
            key = str(args["key"])
            trie = self._tries.get(key)
            if trie is None:
                trie = self._tries[key] = AnswerTrie(args["answers"], args["end_ids"])
        suppress = [int(t) for t in args.get("suppress", [])]
        if trie is None and not suppress:
            return None
        return _constrain(trie, suppress)


def _constrain(trie: AnswerTrie | None, suppress: list[int]) -> Callable[[list[int], torch.Tensor], torch.Tensor]:
    def constrain(output_ids: list[int], logits: torch.Tensor) -> torch.Tensor:
        if trie is not None:
            allowed = torch.tensor(trie.allowed(output_ids), dtype=torch.long, device=logits.device)
            masked = torch.full_like(logits, float("-inf"))
            masked[allowed] = logits[allowed]
            logits = masked
        if suppress:
            logits[torch.tensor(suppress, dtype=torch.long, device=logits.device)] = float("-inf")
        return logits

    return constrain
