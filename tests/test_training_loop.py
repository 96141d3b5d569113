"""The policy-gradient loop: loss math, batching, and real optimizer steps on the tiny model."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch

from ml_backend.settings import Settings
from ml_backend.training.loop import TrainExample, make_batches, policy_gradient_loss, train
from ml_backend.training.policy import Policy, completion_mask

from .training_helpers import SHARED_VIDEOS

VIDEOS = sorted(SHARED_VIDEOS.glob("*.mp4"))


def tiny_settings(root: Path, **training) -> Settings:
    knobs = dict(max_frames=4, frame_side=56, max_new_tokens=12, group_size=3, videos_per_step=4,
                 max_steps=2, learning_rate=1e-3)
    knobs.update(training)
    return Settings(base=str(root / "base"), adapter=str(root / "adapter"), offline=True, device="cpu",
                    training=knobs)


# --- pure pieces ---------------------------------------------------------------------------------

def test_loss_gradient_is_minus_advantage_over_tokens():
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.9], [0.1, 0.2, 0.3]])).requires_grad_()
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    advantages = torch.tensor([2.0, -1.0])
    loss, kl = policy_gradient_loss(logp, advantages, mask)
    assert loss.item() == pytest.approx(((-2.0) + 1.0) / 2)  # ratio is 1 in value
    loss.backward()
    expected = torch.tensor([[-2 / 2 / 2, -2 / 2 / 2, 0.0], [1 / 3 / 2] * 3])
    torch.testing.assert_close(logp.grad, expected)
    assert kl.item() == 0.0


def test_kl_term_is_zero_at_the_reference_and_positive_elsewhere():
    logp = torch.log(torch.tensor([[0.5, 0.4]])).requires_grad_()
    mask = torch.ones(1, 2)
    zero_adv = torch.zeros(1)
    loss, kl = policy_gradient_loss(logp, zero_adv, mask, ref_logp=logp.detach().clone(), beta=0.04)
    loss.backward()
    assert kl.item() == 0.0 and torch.all(logp.grad == 0)
    ref = torch.log(torch.tensor([[0.2, 0.9]]))
    loss, kl = policy_gradient_loss(logp, zero_adv, mask, ref_logp=ref, beta=0.04)
    delta = ref - logp.detach()
    expected = (torch.exp(delta) - delta - 1).mean()
    assert kl.item() == pytest.approx(expected.item()) and kl.item() > 0
    assert loss.item() == pytest.approx(0.04 * expected.item())


def test_completion_mask_stops_after_the_first_end_token():
    tokens = torch.tensor([[5, 6, 2, 0, 0], [5, 2, 7, 2, 0], [5, 6, 7, 8, 9]])
    mask = completion_mask(tokens, [2, 0])
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_batches_stay_within_a_dataset_use_every_video_once_and_never_hold_one_video():
    examples = [TrainExample(Path(f"t{i}"), 1.0, "target") for i in range(9)]
    examples += [TrainExample(Path(f"s{i}"), 1.0, "source") for i in range(5)]
    examples += [TrainExample(Path("lonely"), 1.0, "third")]
    batches = make_batches(examples, 4, random.Random(0))
    assert all(len({e.dataset for e in b}) == 1 for b in batches)
    assert all(len(b) >= 2 for b in batches)
    used = [e.video for b in batches for e in b]
    assert sorted(map(str, used)) == sorted(str(e.video) for e in examples if e.dataset != "third")
    assert sorted(len(b) for b in batches) == [4, 5, 5]  # 9 -> 4+4+1 -> 4+5; 5 -> 4+1 -> 5


# --- the tiny model ------------------------------------------------------------------------------

def snapshot(policy: Policy) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in policy.model.named_parameters()}


def changed(policy: Policy, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, p in policy.model.named_parameters() if not torch.equal(p.detach(), before[name])}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_quality_grpo_steps_change_only_lora_weights(tiny_model_dir):
    settings = tiny_settings(tiny_model_dir)
    policy = Policy.load(settings, str(tiny_model_dir / "adapter"))
    assert {n for n, p in policy.model.named_parameters() if p.requires_grad} == \
        {n for n, _ in policy.model.named_parameters() if "lora_" in n}
    before = snapshot(policy)
    examples = [TrainExample(v, float(i + 1)) for i, v in enumerate(VIDEOS)]
    reports = train(policy, examples, settings.training, "quality", seed=0)
    assert [r.step for r in reports] == [1, 2] and all(r.videos == 4 for r in reports)
    assert all(math.isfinite(r.loss) and math.isfinite(r.kl) and r.kl >= 0 for r in reports)
    moved = changed(policy, before)
    assert moved and all("lora_" in name for name in moved)
    assert not any("visual" in name for name in moved)


def test_difficulty_reinforce_steps_change_only_lora_weights(tiny_model_dir):
    settings = tiny_settings(tiny_model_dir, max_steps=1)
    policy = Policy.load(settings, str(tiny_model_dir / "adapter"))
    before = snapshot(policy)
    examples = [TrainExample(v, float(i + 1), f_score=3.0) for i, v in enumerate(VIDEOS)]
    reports = train(policy, examples, settings.training, "difficulty", seed=0)
    assert len(reports) == 1 and math.isfinite(reports[0].loss)
    assert reports[0].reward <= 0  # advantages are -(loss + penalty)
    moved = changed(policy, before)
    assert moved and all("lora_" in name for name in moved)


def test_fresh_lora_starts_at_the_reference(tiny_model_dir):
    settings = tiny_settings(tiny_model_dir, max_steps=1)
    policy = Policy.load(settings, None)
    assert all("lora_" in n for n, p in policy.model.named_parameters() if p.requires_grad)
    prompt = policy.encode(VIDEOS[0], "quality")
    completions = policy.sample(prompt, 2, temperature=1.0, max_new_tokens=6)
    with torch.no_grad():
        policy.model.eval()
        torch.testing.assert_close(policy.token_logprobs(prompt, completions),
                                   policy.token_logprobs(prompt, completions, use_adapter=False))
    reports = train(policy, [TrainExample(v, float(i)) for i, v in enumerate(VIDEOS)], settings.training,
                    "quality")
    assert reports[0].kl == pytest.approx(0.0, abs=1e-6)  # LoRA B starts at zero: policy == reference


def test_gradient_checkpointing_still_trains_only_lora(tiny_model_dir):
    settings = tiny_settings(tiny_model_dir, max_steps=1, gradient_checkpointing=True)
    policy = Policy.load(settings, str(tiny_model_dir / "adapter"))
    assert policy.model.get_base_model().is_gradient_checkpointing
    before = snapshot(policy)
    reports = train(policy, [TrainExample(v, float(i)) for i, v in enumerate(VIDEOS)], settings.training,
                    "quality")
    assert math.isfinite(reports[0].loss)
    moved = changed(policy, before)
    assert moved and all("lora_" in name for name in moved)
