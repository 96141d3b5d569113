"""Which way training learns: after a few steps the higher-reward completion has gained log-probability.

The real tiny policy and the real loop (`train`); only the rollouts are scripted, so the
rewards are known: each video's answers are fixed texts, some of which rank the videos
correctly and some wrongly. Negating the advantages of either objective, or training the
failure predictor on the MOS instead of |f - MOS|, makes these tests fail.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ml_backend.settings import Settings
from ml_backend.training.loop import TrainExample, train
from ml_backend.training.policy import Completions, Policy

from .training_helpers import SHARED_VIDEOS

# two clearly different pictures (the model must tell them apart at 56x56)
LOW, HIGH = SHARED_VIDEOS / "carphone_distorted.mp4", SHARED_VIDEOS / "bikes.mp4"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


class ScriptedRollouts:
    """The real policy, but `sample` answers each video with fixed texts (and the end token)."""

    def __init__(self, policy: Policy, answers: dict[Path, list[str]]) -> None:
        self.policy, self.answers, self.model = policy, answers, policy.model

    def trainable_parameters(self):
        return self.policy.trainable_parameters()

    def token_logprobs(self, *args, **kwargs):
        return self.policy.token_logprobs(*args, **kwargs)

    def encode(self, video: Path, task, draw=None):
        prompt = self.policy.encode(video, task, draw=draw)
        prompt.video = video
        return prompt

    def completions(self, texts: list[str]) -> Completions:
        tokenizer = self.policy.processor.tokenizer
        rows = [tokenizer(text, add_special_tokens=False)["input_ids"] + [self.policy.eos_ids[0]] for text in texts]
        width = max(map(len, rows))
        tokens = torch.full((len(rows), width), self.policy.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width))
        for i, row in enumerate(rows):
            tokens[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1.0
        return Completions(tokens.to(self.policy.device), mask, list(texts))

    def sample(self, prompt, count, **_options) -> Completions:
        texts = self.answers[prompt.video]
        assert len(texts) == count
        return self.completions(texts)

    def logprob(self, video: Path, task, text: str) -> float:
        """Total log-probability of one answer to one video under the current weights."""
        self.policy.model.eval()
        with torch.no_grad():
            prompt = self.policy.encode(video, task, draw=random.Random(0))
            value = float(self.policy.token_logprobs(prompt, self.completions([text])).sum())
        self.policy.model.train()
        return value


def _policy(tiny_model_dir: Path, **training) -> tuple[Policy, Settings]:
    # carphone has 8 frames at 2 fps, bikes 20: drawing 20 keeps them all, so every step and
    # every measurement sees the same (training-size) input
    knobs = dict(max_frames=20, frame_side=56, videos_per_step=2, max_steps=4, epochs=4,
                 learning_rate=5e-3, kl_beta=0.0)
    knobs.update(training)
    settings = Settings(base=str(tiny_model_dir / "base"), adapter=str(tiny_model_dir / "adapter"), offline=True,
                        device="cpu", training=knobs)
    return Policy.load(settings, str(tiny_model_dir / "adapter")), settings


def test_quality_grpo_raises_the_answer_that_ranks_the_videos_right(tiny_model_dir):
    policy, settings = _policy(tiny_model_dir, group_size=4)
    right, wrong = "<think>x</think><answer>1</answer>", "<think>x</think><answer>5</answer>"
    # LOW (MOS 1) answers 1 twice and 5 twice; HIGH (MOS 5) the mirror image. Within each group the
    # answer that orders the two videos as their MOS do earns the higher reward.
    scripted = ScriptedRollouts(policy, {LOW: [right, right, wrong, wrong], HIGH: [wrong, wrong, right, right]})
    margin_before = scripted.logprob(LOW, "quality", right) - scripted.logprob(LOW, "quality", wrong)
    reports = train(scripted, [TrainExample(LOW, 1.0), TrainExample(HIGH, 5.0)], settings.training, "quality")
    assert len(reports) == 4
    margin_after = scripted.logprob(LOW, "quality", right) - scripted.logprob(LOW, "quality", wrong)
    assert margin_after > margin_before + 1.0


def test_difficulty_reinforce_prefers_answers_that_rank_by_the_error_of_f(tiny_model_dir, tmp_path):
    """Three copies of one video, so two answers to the same picture compete within one batch.

    Errors of f: A 3.5 (MOS 1, f 4.5), B 0.2 (MOS 5, f 4.8), C 0.0 (MOS 3, f 3.0). A answers 5
    and B answers 1: both rank by the error, so A's answer costs little and B's more (C's 2
    sits above B's 1 although C's error is lower). REINFORCE without a baseline pushes every
    answer down, B's "1" more: the margin log p(5) - log p(1) on this picture grows. Ranked
    by the MOS instead, A's "5" would be the costly one and the margin would shrink.
    """
    copies = []
    for name in ("a", "b", "c"):
        copy = tmp_path / f"{name}.mp4"
        copy.write_bytes(LOW.read_bytes())
        copies.append(copy)
    a, b, c = copies
    policy, settings = _policy(tiny_model_dir, videos_per_step=3, max_steps=3, epochs=3)
    scripted = ScriptedRollouts(policy, {a: ["<answer>5</answer>"], b: ["<answer>1</answer>"],
                                         c: ["<answer>2</answer>"]})

    def margin() -> float:
        return scripted.logprob(a, "difficulty", "<answer>5</answer>") - \
            scripted.logprob(a, "difficulty", "<answer>1</answer>")

    before = margin()
    examples = [TrainExample(a, 1.0, f_score=4.5), TrainExample(b, 5.0, f_score=4.8),
                TrainExample(c, 3.0, f_score=3.0)]
    reports = train(scripted, examples, settings.training, "difficulty")
    assert len(reports) == 3
    after = margin()
    assert after > before + 1.0
