"""A compact policy-gradient loop: GRPO for the quality model f, REINFORCE for the failure predictor g.

Hand-written because no library fits (docs/training.md): trl's GRPOTrainer builds
prompts through a processor call per sample and has no place for our own video
decoding, patch tensors and per-batch ranking rewards that compare *different* videos.
What is left is small: sample, score with :mod:`ml_backend.training.rewards`,
one policy-gradient step with a KL penalty to the adapter-disabled model.

Loss per completion (as TRL's GRPO with one update per rollout batch):
``mean_t[ -exp(logp_t - sg(logp_t)) * A + beta * (exp(ref_t - logp_t) - (ref_t - logp_t) - 1) ]``;
the ratio is 1 in value and carries the gradient of log-prob; the KL term is the
k3 estimator, always >= 0.
"""

from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import TrainingDataError, VideoError
from ..settings import TrainingSettings
from . import rewards as R

log = logging.getLogger(__name__)

Objective = Literal["quality", "difficulty"]
MAX_GRAD_NORM = 1.0


@dataclass(frozen=True)
class TrainExample:
    video: Path
    mos: float  # on the model's 1-5 scale
    dataset: str = "target"  # a step never mixes datasets (reference: one dataset per micro-batch)
    f_score: float | None = None  # quality model's score; needed by the difficulty objective


@dataclass(frozen=True)
class StepReport:
    step: int
    total_steps: int
    epoch: int
    videos: int
    loss: float
    kl: float
    reward: float  # mean total reward (quality) or mean advantage (difficulty)
    parsed: float  # share of sampled answers holding a score
    formatted: float  # share of sampled answers in the exact expected format
    seconds: float


def make_batches(examples: Sequence[TrainExample], videos_per_step: int, rng: random.Random
                 ) -> list[list[TrainExample]]:
    """Shuffled batches of ``videos_per_step`` videos from one dataset each (one optimizer step each).

    Rewards compare videos within a batch, so a batch needs two videos: a one-video
    remainder joins the previous batch of its dataset; a dataset of one video is dropped.
    """
    by_dataset: dict[str, list[TrainExample]] = {}
    for example in examples:
        by_dataset.setdefault(example.dataset, []).append(example)
    batches: list[list[TrainExample]] = []
    for name, items in sorted(by_dataset.items()):
        items = items[:]
        rng.shuffle(items)
        chunks = [items[i:i + videos_per_step] for i in range(0, len(items), videos_per_step)]
        if len(chunks) > 1 and len(chunks[-1]) < 2:
            chunks[-2].extend(chunks.pop())
        if len(chunks[-1]) < 2:
            log.warning("dataset %s has a single video: it cannot be ranked and is left out", name)
            chunks.pop()
        batches.extend(chunks)
    rng.shuffle(batches)
    return batches


def policy_gradient_loss(logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                         ref_logp: torch.Tensor | None = None, beta: float = 0.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over completions of the masked per-token loss; returns (loss, mean KL).

    ``logp``/``ref_logp``/``mask``: (n, T); ``advantages``: (n,). A completion with no
    real tokens contributes zero.
    """
    ratio = torch.exp(logp - logp.detach())
    per_token = -ratio * advantages[:, None].to(logp.dtype)
    kl = torch.zeros_like(logp)
    if ref_logp is not None and beta > 0:
        delta = ref_logp.detach() - logp
        kl = torch.exp(delta) - delta - 1.0
        per_token = per_token + beta * kl
    tokens = mask.sum(dim=1).clamp(min=1.0)
    loss = ((per_token * mask).sum(dim=1) / tokens).mean()
    mean_kl = ((kl * mask).sum(dim=1) / tokens).mean().detach()
    return loss, mean_kl


def micro_batches(batch: Sequence[TrainExample], compared: int) -> list[list[TrainExample]]:
    """A step's videos in micro-batches of ``compared`` (the rewards' comparison groups).

    A one-video remainder joins the previous micro-batch: a lone video has nothing to be ranked against.
    """
    chunks = [list(batch[i:i + compared]) for i in range(0, len(batch), compared)]
    if len(chunks) > 1 and len(chunks[-1]) < 2:
        chunks[-2].extend(chunks.pop())
    return chunks


def linear_decay(total_steps: int) -> Callable[[int], float]:
    """Learning-rate factor after ``step`` optimizer steps: 1 at the start, falling linearly to 0 at the end."""
    return lambda step: max(0.0, (total_steps - step) / total_steps)


def _rollout_count(objective: Objective, settings: TrainingSettings) -> int:
    return settings.group_size if objective == "quality" else 1  # g: one generation per video


def train(policy, examples: Sequence[TrainExample], settings: TrainingSettings, objective: Objective, *,
          seed: int = 0, on_step: Callable[[StepReport], None] | None = None) -> list[StepReport]:
    """Run the objective over ``examples``; returns one report per optimizer step.

    ``policy`` is a :class:`ml_backend.training.policy.Policy` (or anything with its
    ``encode``/``sample``/``token_logprobs``/``trainable_parameters``). Only its LoRA
    weights change.
    """
    if objective == "difficulty" and any(e.f_score is None or not math.isfinite(e.f_score) for e in examples):
        raise TrainingDataError("the difficulty objective needs the quality model's score of every video")
    task = "quality" if objective == "quality" else "difficulty"
    rng = random.Random(seed)
    torch.manual_seed(seed)
    params = policy.trainable_parameters()
    if not params:
        raise TrainingDataError("the model has no trainable (LoRA) parameters")
    optimizer = torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=0.0)
    compared, per_step = settings.geometry(objective)
    first_epoch = make_batches(examples, per_step, rng)
    if not first_epoch:
        raise TrainingDataError("not enough videos for one training batch (each batch needs two)")
    total = len(first_epoch) * settings.epochs  # batch count depends only on dataset sizes
    if settings.max_steps is not None:
        total = min(total, settings.max_steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_decay(total))
    log.info("%s: %d videos compared per micro-batch, %d per optimizer step, %d steps, lr %.3g decaying "
             "linearly to 0", objective, compared, per_step, total, settings.learning_rate)
    reports: list[StepReport] = []
    policy.model.train()
    step = 0
    for epoch in range(settings.epochs):
        batches = first_epoch if epoch == 0 else make_batches(examples, per_step, rng)
        for batch in batches:
            if step >= total:
                return reports
            step += 1
            report = _step(policy, optimizer, params, micro_batches(batch, compared), settings, objective, task,
                           step, total, epoch, rng)
            schedule.step()
            if report is None:
                continue
            reports.append(report)
            log.info("step %d/%d loss %.4f kl %.4f reward %.3f parsed %.2f", step, total, report.loss,
                     report.kl, report.reward, report.parsed)
            if on_step is not None:
                on_step(report)
    return reports


def _rollouts(policy, micro: Sequence[TrainExample], settings: TrainingSettings, objective: Objective, task: str,
              step: int, rng: random.Random):
    """Sampled answers of one micro-batch and their advantages (rewards compare its videos only)."""
    count = _rollout_count(objective, settings)
    rollouts = []
    for example in micro:
        try:
            prompt = policy.encode(example.video, task, draw=rng)  # frames redrawn at every step
        except VideoError as exc:
            log.warning("step %d: skipping %s: %s", step, example.video, exc)
            continue
        completions = policy.sample(prompt, count, temperature=settings.temperature,
                                    max_new_tokens=settings.max_new_tokens)
        rollouts.append((example, prompt, completions))
    if len(rollouts) < 2:
        log.warning("step %d: a micro-batch with fewer than two usable videos is skipped", step)
        return None
    mos = np.array([example.mos for example, _, _ in rollouts])
    if objective == "quality":
        scored = R.quality_rewards([c.texts for _, _, c in rollouts], mos)
        return rollouts, scored["advantage"], scored["reward"].ravel(), scored["format"].ravel(), scored["scores"]
    f = np.array([example.f_score for example, _, _ in rollouts])
    scored = R.difficulty_rewards([c.texts[0] for _, _, c in rollouts], f, mos)
    return (rollouts, scored["advantage"][:, None], scored["advantage"], 1.0 - scored["penalty"],
            scored["scores"])


def _step(policy, optimizer, params, micros: list[list[TrainExample]], settings: TrainingSettings,
          objective: Objective, task: str, step: int, total: int, epoch: int, rng: random.Random) -> StepReport | None:
    """One optimizer step accumulated over micro-batches, as the reference's GPUs x accumulation steps.

    Each micro-batch's loss is its mean over videos, divided by the number of micro-batches:
    the gradient equals the mean over micro-batches that data parallelism and accumulation give.
    """
    started = time.monotonic()
    optimizer.zero_grad(set_to_none=True)
    losses: list[float] = []
    kls: list[float] = []
    rewards: list[float] = []
    formats: list[float] = []
    parsed: list[bool] = []
    videos = used = 0
    for micro in micros:  # one micro-batch's rollouts in memory at a time
        scored = _rollouts(policy, micro, settings, objective, task, step, rng)
        if scored is None:
            continue
        used += 1
        rollouts, advantages, reward, formatted, scores = scored
        for (example, prompt, completions), video_advantages in zip(rollouts, advantages):
            logp = policy.token_logprobs(prompt, completions)
            ref = None
            if settings.kl_beta > 0:
                with torch.no_grad():
                    ref = policy.token_logprobs(prompt, completions, use_adapter=False)
            adv = torch.as_tensor(video_advantages, dtype=torch.float32, device=logp.device)
            loss, kl = policy_gradient_loss(logp, adv, completions.mask.to(logp.device), ref, settings.kl_beta)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"step {step}: non-finite loss on {example.video}")
            (loss / len(rollouts) / len(micros)).backward()
            losses.append(float(loss.detach()))
            kls.append(float(kl))
        videos += len(rollouts)
        rewards.extend(np.ravel(reward))
        formats.extend(np.ravel(formatted))
        parsed.extend(np.isfinite(np.ravel(scores)))
    if not used:
        log.warning("step %d: no micro-batch with two usable videos, skipped", step)
        return None
    if used < len(micros):  # gradients are linear: make it the mean over the micro-batches that ran
        for param in params:
            if param.grad is not None:
                param.grad.mul_(len(micros) / used)
    torch.nn.utils.clip_grad_norm_(params, MAX_GRAD_NORM)
    optimizer.step()
    return StepReport(step=step, total_steps=total, epoch=epoch, videos=videos,
                      loss=float(np.mean(losses)), kl=float(np.mean(kls)), reward=float(np.mean(rewards)),
                      parsed=float(np.mean(parsed)), formatted=float(np.mean(formats)),
                      seconds=time.monotonic() - started)
