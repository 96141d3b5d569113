"""Batch geometry, schedule and rollout config of training, as the reference ran them (SPEC 6)."""

from __future__ import annotations

import random

import torch

from ml_backend.settings import TrainingSettings
from ml_backend.training import loop as L
from ml_backend.training.loop import TrainExample, linear_decay, make_batches, micro_batches
from ml_backend.training.policy import rollout_generation_config

from .test_training_direction import HIGH, LOW, ScriptedRollouts, _policy


def test_reference_geometry_by_objective():
    settings = TrainingSettings()
    assert settings.geometry("quality") == (2, 16)  # 4 GPUs x 2 videos, 2 accumulation steps
    assert settings.geometry("difficulty") == (8, 64)  # 8 GPUs x 8 videos
    assert TrainingSettings(videos_compared=4, videos_per_step=12).geometry("quality") == (4, 12)
    assert TrainingSettings(videos_compared=8, videos_per_step=4).geometry("quality") == (8, 8)


def test_a_step_of_16_is_eight_micro_batches_of_two_from_one_dataset():
    examples = [TrainExample(f"t{i}.mp4", 1.0) for i in range(32)] + \
        [TrainExample(f"s{i}.mp4", 1.0, dataset="source") for i in range(16)]
    batches = make_batches(examples, 16, random.Random(0))
    assert sorted(map(len, batches)) == [16, 16, 16]
    assert all(len({e.dataset for e in batch}) == 1 for batch in batches)
    micros = micro_batches(batches[0], 2)
    assert [len(m) for m in micros] == [2] * 8
    assert [e for m in micros for e in m] == batches[0]
    assert [len(m) for m in micro_batches(batches[0][:5], 2)] == [2, 3]  # no lone video


def test_learning_rate_decays_linearly_to_zero():
    factor = linear_decay(4)
    assert [factor(step) for step in range(5)] == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_rollouts_use_their_own_generation_config():
    config = rollout_generation_config(1.0, 256, 4)
    assert (config.do_sample, config.temperature, config.top_k, config.top_p) == (True, 1.0, 50, 1.0)
    assert config.repetition_penalty == 1.0 and config.num_return_sequences == 4 and config.max_new_tokens == 256


class GradientRecorder:
    """Stands in for the optimizer: keeps the accumulated gradients instead of stepping."""

    def __init__(self, params) -> None:
        self.params, self.grads = params, None

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            p.grad = None

    def step(self) -> None:
        self.grads = [p.grad.detach().clone() for p in self.params]


def test_accumulated_micro_batches_equal_the_mean_over_devices(tiny_model_dir, monkeypatch):
    """One step over micro-batches of 2 and 3 videos equals the mean of the two micro-batch mean losses.

    (Unequal sizes: dividing by the step's video count instead would give other gradients.)"""
    monkeypatch.setattr(L, "MAX_GRAD_NORM", float("inf"))  # compare raw gradients
    policy, settings = _policy(tiny_model_dir, group_size=2)
    right, wrong = "<think>x</think><answer>1</answer>", "<think>x</think><answer>5</answer>"
    answers = {LOW: [right, wrong], HIGH: [wrong, right]}
    scripted = ScriptedRollouts(policy, answers)
    params = policy.trainable_parameters()
    policy.model.eval()  # LoRA dropout off: both computations must see the same network
    micros = [[TrainExample(LOW, 1.0), TrainExample(HIGH, 5.0)],
              [TrainExample(HIGH, 5.0), TrainExample(LOW, 1.0), TrainExample(LOW, 1.5)]]
    recorder = GradientRecorder(params)
    L._step(scripted, recorder, params, micros, settings.training, "quality", "quality", 1, 1, 0, random.Random(0))

    # the same rollouts as one big batch: the mean over micro-batches of each one's mean loss
    total = 0.0
    for micro in micros:
        rollouts, advantages, *_ = L._rollouts(scripted, micro, settings.training, "quality", "quality", 1,
                                               random.Random(0))
        micro_loss = 0.0
        for (_example, prompt, completions), adv in zip(rollouts, advantages):
            logp = policy.token_logprobs(prompt, completions)
            loss, _ = L.policy_gradient_loss(logp, torch.as_tensor(adv, dtype=torch.float32), completions.mask)
            micro_loss = micro_loss + loss
        total = total + micro_loss / len(rollouts)
    for p in params:
        p.grad = None
    (total / len(micros)).backward()
    expected = [p.grad.detach().clone() for p in params]
    assert any(g.abs().sum() > 0 for g in expected)
    for got, want in zip(recorder.grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-7)


def test_training_logs_the_geometry_and_schedule(tiny_model_dir, caplog):
    import logging

    policy, settings = _policy(tiny_model_dir, group_size=2, videos_per_step=4, max_steps=1)
    scripted = ScriptedRollouts(policy, {LOW: ["<answer>1</answer>"] * 2, HIGH: ["<answer>5</answer>"] * 2})
    with caplog.at_level(logging.INFO, logger="ml_backend.training.loop"):
        reports = L.train(scripted, [TrainExample(LOW, 1.0), TrainExample(HIGH, 5.0)] * 2, settings.training,
                          "quality")
    assert reports[0].videos == 4
    assert "2 videos compared per micro-batch, 4 per optimizer step" in caplog.text
    assert "decaying linearly to 0" in caplog.text
