"""The answer constraint admits the model's own formats and never overrides a valid greedy answer.

The logits are scripted: a bias added on top of the tiny model's own logits makes one
answer the model's clear preference, with an invalid token as the runner-up where it
matters. Greedy search with and without the constraint then runs through the real
``generate`` of the real (tiny) model with the real tokenizer.
"""

from __future__ import annotations

import pytest
import torch

from ml_backend.answers import parse_score
from ml_backend.model.loading import load_model
from ml_backend.scoring.constraint import AnswerTrie
from ml_backend.scoring.generation import stop_tokens


@pytest.fixture(scope="module")
def loaded(tiny_model, tmp_path_factory):
    from ml_backend.settings import Settings

    base, adapter = tiny_model
    return load_model(Settings(base=str(base), adapter=str(adapter), cache_dir=tmp_path_factory.mktemp("cache")))


class ScriptedPreference:
    """Adds a large bias to the next token of ``preferred`` (then the end token) and a smaller one to ``runner_up``."""

    def __init__(self, preferred: list[int], end_id: int, prompt_length: int, runner_up: int) -> None:
        self.preferred, self.end_id, self.prompt_length, self.runner_up = preferred, end_id, prompt_length, runner_up

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_length
        wanted = self.preferred[step] if step < len(self.preferred) else self.end_id
        bias = torch.zeros_like(scores)
        bias[:, self.runner_up] = 500.0
        bias[:, wanted] = 1000.0
        return scores + bias


def _greedy(loaded, text: str, *, constrained: bool, runner_up_text: str = "7") -> str:
    from transformers import LogitsProcessorList

    tokenizer = loaded.tokenizer
    end_ids = stop_tokens(loaded.model.get_base_model().generation_config, loaded.tokenizer).end_ids
    prompt = tokenizer("<|im_start|>assistant\n", add_special_tokens=False, return_tensors="pt")
    length = prompt["input_ids"].shape[1]
    preferred = tokenizer(text, add_special_tokens=False)["input_ids"]
    runner_up = tokenizer(runner_up_text, add_special_tokens=False)["input_ids"][0]
    trie = AnswerTrie.for_tokenizer(tokenizer, end_ids)
    options = dict(do_sample=False, max_new_tokens=len(preferred) + 2, eos_token_id=end_ids,
                   pad_token_id=tokenizer.pad_token_id, temperature=None, top_k=None, top_p=None,
                   logits_processor=LogitsProcessorList([ScriptedPreference(preferred, end_ids[0], length, runner_up)]))
    if constrained:
        options["prefix_allowed_tokens_fn"] = trie.prefix_function(length)
    with torch.inference_mode(), loaded.model.disable_adapter():
        output = loaded.model.generate(**prompt, **options)
    return tokenizer.decode(output[0, length:], skip_special_tokens=True)


@pytest.mark.parametrize("answer, score", [("<answer>2.0</answer>", 2.0), ("<answer>3</answer>", 3.0),
                                           ("<answer>4.25</answer>", 4.25)])
def test_constrained_greedy_equals_unconstrained_greedy_when_that_is_valid(loaded, answer, score):
    free = _greedy(loaded, answer, constrained=False)
    assert free == answer  # the script really decides the unconstrained answer
    assert _greedy(loaded, answer, constrained=True) == free
    assert parse_score(free) == score


@pytest.mark.parametrize("invalid", ["<answer>2.345</answer>", "<answer>6</answer>", "<answer>5.5</answer>",
                                     "<answer>3.0 maybe</answer>"])
def test_an_invalid_preference_still_ends_in_a_valid_answer(loaded, invalid):
    free = _greedy(loaded, invalid, constrained=False)
    assert free == invalid
    forced = _greedy(loaded, invalid, constrained=True)
    assert forced != invalid
    assert forced.startswith("<answer>") and forced.endswith("</answer>")
    assert 1.0 <= parse_score(forced) <= 5.0


def test_serving_and_training_share_end_and_pad_tokens(tiny_model_dir, settings_factory):
    """One generation stack: the policy's end/pad tokens are the scorer's, <|im_end|> included."""
    from ml_backend.model.loading import shared_model
    from ml_backend.scoring.generation import AnswerGenerator
    from ml_backend.training.policy import Policy

    settings = settings_factory()
    loaded = shared_model(settings)
    serving = AnswerGenerator(loaded, settings).stop
    policy = Policy.load(settings, adapter=None)
    assert policy.stop == serving
    im_end = loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert serving.end_ids[0] == im_end and serving.pad_id == loaded.tokenizer.pad_token_id
