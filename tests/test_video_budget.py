"""The per-video visual-token budget: counted from the sampling plan, checked before any frame is read.

A video over the budget is refused with a final per-video error (the rest of its batch
is scored); the budget is MDSVQA_MAX_VISUAL_TOKENS or derived from the device's memory.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ml_backend.errors import VideoError
from ml_backend.scoring.budget import (
    DECODE_THREAD_MEMORY,
    DECODE_WORKER_MEMORY,
    MemoryModel,
    TokenBudget,
    VideoTooLongError,
    derive_budget,
    memory_model_of,
    token_budget,
)
from ml_backend.scoring.prepare import ProcessDecoding
from ml_backend.video.patches import PatchLayout, planned_token_count, video_patches, video_token_count
from ml_backend.video.sampling import plan_sampling

SHORT = "carphone_pristine.mp4"  # 120 frames, 29.97 fps, 176x144 -> 8 frames at 364x308: 4 x 22 x 26 / 4 = 572
LONG = "bikes.mp4"  # 250 frames, 25 fps, 640x272 -> 20 frames at 644x280: 10 x 20 x 46 / 4 = 2300
BETWEEN = 1000  # a budget that takes SHORT and refuses LONG


# -- counting ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("frames", "height", "width", "tokens"), [
    (768, 280, 392, 53_760),  # the hostile peer's 10 min 64x48 video: 384 x 20 x 28 / 4
    (40, 560, 1008, 14_400),  # SPEC 3's example: 20 s of 1080p
    (8, 308, 364, 572),  # carphone: 4 x 22 x 26 / 4
    (20, 280, 644, 2_300),  # bikes: 10 x 20 x 46 / 4
    (5, 56, 84, 18),  # odd: the last frame is repeated, ceil(5 / 2) = 3 temporal patches x 4 x 6 / 4
    (4, 28, 28, 2),  # smallest: 2 x 2 x 2 / 4
])
def test_token_count_by_hand(frames, height, width, tokens):
    assert planned_token_count(frames, height, width) == tokens


def test_token_count_equals_the_patches_the_model_gets():
    layout = PatchLayout()
    for frames, height, width in [(5, 56, 84), (4, 84, 56), (2, 112, 112), (7, 28, 56)]:
        _patches, grid = video_patches(np.zeros((frames, height, width, 3), np.uint8), layout)
        assert planned_token_count(frames, height, width, layout) == video_token_count(grid)


def test_token_count_refuses_sizes_off_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of 28"):
        planned_token_count(4, 30, 56)


def test_token_count_of_the_shared_videos_plans(shared_videos):
    from ml_backend.video.decoding import probe_video

    for name, tokens in [(SHORT, 572), (LONG, 2300)]:
        probe = probe_video(shared_videos / name)
        plan = plan_sampling(probe.total_frames, probe.fps, probe.height, probe.width)
        assert planned_token_count(plan.num_frames, plan.height, plan.width) == tokens


# -- the setting ------------------------------------------------------------------------------

def test_setting_is_read_from_the_environment(monkeypatch):
    from pydantic import ValidationError

    from ml_backend.settings import Settings, load_settings

    assert Settings().max_visual_tokens == 0  # derived
    monkeypatch.setenv("MDSVQA_MAX_VISUAL_TOKENS", "1234")
    assert load_settings().max_visual_tokens == 1234
    with pytest.raises(ValidationError):
        Settings(max_visual_tokens=-1)


@pytest.fixture(scope="module")
def tiny_loaded(tiny_model):
    from ml_backend.model.loading import shared_model
    from ml_backend.settings import Settings

    base, adapter = tiny_model
    return shared_model(Settings(base=str(base), adapter=str(adapter)))


def test_setting_overrides_the_derived_budget(settings_factory, tiny_loaded):
    budget = token_budget(settings_factory(max_visual_tokens=1234), tiny_loaded)
    assert budget.tokens == 1234 and "MDSVQA_MAX_VISUAL_TOKENS" in budget.source
    derived = token_budget(settings_factory(), tiny_loaded)
    assert derived.tokens > 0 and "derived" in derived.source
    assert tiny_loaded.free_memory is not None  # measured once, then fixed
    assert token_budget(settings_factory(), tiny_loaded).tokens == derived.tokens


# -- the derived budget -----------------------------------------------------------------------

def _qwen_config(**text):
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(**text)


TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            vision_config={"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2,
                           "out_hidden_size": 64})
# Qwen2.5-VL-7B (the base of the published checkpoints)
SEVEN_B = dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
                                                     "num_heads": 16, "out_hidden_size": 3584})


def test_derived_budget_is_positive_and_grows_with_memory():
    model = MemoryModel.for_model(_qwen_config(**TINY), dtype="float32", attention="sdpa", device="cpu")
    budgets = [derive_budget(model, model_memory=gib * 2**30, host_memory=None, batch_size=2)
               for gib in (8, 16, 32, 64)]
    assert budgets[0] > 0
    assert budgets == sorted(budgets) and len(set(budgets)) == 4
    assert budgets[3] - budgets[2] == pytest.approx(2 * (budgets[2] - budgets[1]), rel=0.01)  # linear with SDPA
    # less than the decoders' reserve: nothing fits, every video is refused (never a crash)
    assert derive_budget(model, model_memory=2**30, host_memory=None, batch_size=2) == 0
    # more videos in flight (larger batches) leave less for each
    assert derive_budget(model, model_memory=2**34, host_memory=None, batch_size=8) < budgets[2]


def test_decoders_reserve_what_each_holds(settings_factory):
    """Each decoder's peak comes off the model's share: worker processes (interpreter, torch,
    decord's queue) reserve more than threads, and the count multiplies it."""
    model = MemoryModel.for_model(_qwen_config(**TINY), dtype="float32", attention="sdpa", device="cpu")
    per_token = model.model_bytes + 4 * model.input_bytes  # two batches of two in flight

    def budget(**decoders):
        return derive_budget(model, model_memory=2**35, host_memory=None, batch_size=2, **decoders)

    threads = budget()
    assert threads == budget(decoders=2, decoder_memory=DECODE_THREAD_MEMORY)
    workers = budget(decoders=2, decoder_memory=DECODE_WORKER_MEMORY)
    assert DECODE_WORKER_MEMORY > DECODE_THREAD_MEMORY
    assert threads - workers == pytest.approx(2 * (DECODE_WORKER_MEMORY - DECODE_THREAD_MEMORY) / per_token, abs=2)
    assert budget(decoders=4, decoder_memory=DECODE_WORKER_MEMORY) < workers
    assert ProcessDecoding(2, settings_factory()).budget_args()["decoder_memory"] == DECODE_WORKER_MEMORY


def test_eager_attention_gets_a_smaller_budget_that_grows_slower():
    sdpa = MemoryModel.for_model(_qwen_config(**TINY), dtype="float32", attention="sdpa", device="cpu")
    eager = MemoryModel.for_model(_qwen_config(**TINY), dtype="float32", attention="eager", device="cpu")
    assert sdpa.quadratic_bytes == 0 and eager.quadratic_bytes > 0
    small, large = (derive_budget(eager, model_memory=gib * 2**30, host_memory=None, batch_size=1) for gib in (16, 256))
    assert 0 < small < derive_budget(sdpa, model_memory=16 * 2**30, host_memory=None, batch_size=1)
    assert small < large < 8 * small  # about the square root of the memory, not linear


def test_the_7b_model_costs_far_more_per_token_and_gpu_budgets_are_bounded_by_both_memories():
    tiny = MemoryModel.for_model(_qwen_config(**TINY), dtype="float32", attention="sdpa", device="cpu")
    big = MemoryModel.for_model(_qwen_config(**SEVEN_B), dtype="bfloat16", attention="flash_attention_2",
                                device="cuda")
    assert big.model_bytes > 5 * tiny.model_bytes
    assert big.padded_mask_bytes == 0  # FlashAttention-2 unpads instead of masking
    gpu = derive_budget(big, model_memory=100 * 2**30, host_memory=2**40, batch_size=2)
    assert gpu == derive_budget(big, model_memory=100 * 2**30, host_memory=2**41, batch_size=2)  # GPU-bound
    assert derive_budget(big, model_memory=100 * 2**30, host_memory=2**30, batch_size=2) < gpu  # host-bound
    assert derive_budget(big, model_memory=200 * 2**30, host_memory=2**40, batch_size=2) > gpu


def test_token_budget_derives_from_available_memory(settings_factory, tiny_loaded, monkeypatch):
    import ml_backend.scoring.budget as budget_module

    budgets = []
    for gib in (8, 32):
        monkeypatch.setattr(budget_module, "available_host_memory", lambda gib=gib: gib * 2**30)
        monkeypatch.setattr(tiny_loaded, "free_memory", None)  # as if loaded anew
        budgets.append(token_budget(settings_factory(), tiny_loaded))
    assert 0 < budgets[0].tokens < budgets[1].tokens
    assert "8.0 GiB of available RAM" in budgets[0].source


def test_a_padded_batch_must_fit_one_videos_allowance(tiny_loaded):
    model = memory_model_of(tiny_loaded)
    budget = TokenBudget(100_000, model, "test")
    assert budget.batch_fits([50_000])
    assert budget.batch_fits([20_000, 20_000])  # equal lengths: no padding mask
    assert budget.batch_fits([500, 2_000])
    assert not budget.batch_fits([50_000, 500])  # its padding mask alone: 2 x 50k^2 x 5 bytes


# -- refusing a video -------------------------------------------------------------------------

@pytest.fixture
def pixel_reads(monkeypatch):
    """Every video whose sampled frames were read or patched (paths), recorded."""
    import ml_backend.scoring.inputs as inputs
    import ml_backend.video.decoding as decoding

    seen: list[str] = []
    original_read, original_resized, original_patches = decoding._read, decoding._read_resized, inputs.video_patches

    def read(path, *args, **kwargs):
        seen.append(Path(path).name)
        return original_read(path, *args, **kwargs)

    def read_resized(path, *args, **kwargs):
        seen.append(Path(path).name)
        return original_resized(path, *args, **kwargs)

    def patches(frames, *args, **kwargs):
        seen.append(f"patches of {len(frames)} frames")
        return original_patches(frames, *args, **kwargs)

    monkeypatch.setattr(decoding, "_read", read)
    monkeypatch.setattr(decoding, "_read_resized", read_resized)
    monkeypatch.setattr(inputs, "video_patches", patches)
    return seen


def test_over_budget_video_is_refused_before_any_frame_is_read(settings_factory, tiny_loaded, shared_videos,
                                                               pixel_reads):
    from ml_backend.scoring.scorer import prepare_video

    settings = settings_factory(max_visual_tokens=BETWEEN)
    with pytest.raises(VideoTooLongError) as caught:
        prepare_video(shared_videos / LONG, settings, tiny_loaded)
    error = caught.value
    assert isinstance(error, VideoError)
    assert (error.tokens, error.budget) == (2300, BETWEEN)
    message = str(error)
    for part in (LONG, "20 sampled frames at 644x280", "2,300 visual tokens", "budget of 1,000",
                 "MDSVQA_MAX_VISUAL_TOKENS=2300"):
        assert part in message, part
    assert pixel_reads == []  # neither decoded nor patched
    assert prepare_video(shared_videos / SHORT, settings, tiny_loaded).patches.shape == (572 * 4, 1176)
    assert set(pixel_reads) == {SHORT, "patches of 8 frames"}


def test_one_long_video_fails_alone_in_its_batch(settings_factory, tiny_loaded, shared_videos, pixel_reads):
    from ml_backend.model.loading import resolve_model
    from ml_backend.scoring import DifficultyScorer

    settings = settings_factory(max_visual_tokens=BETWEEN, batch_size=2, use_cache=False)
    scorer = DifficultyScorer(resolve_model(settings), settings, loaded=tiny_loaded)
    try:
        results = {r.name: r for r in scorer.score_paths([shared_videos / LONG, shared_videos / SHORT])}
    finally:
        scorer.close()
    assert results[SHORT].ok and 1.0 <= results[SHORT].difficulty <= 5.0
    refused = results[LONG]
    assert not refused.ok and "2,300 visual tokens" in refused.error and "MDSVQA_MAX_VISUAL_TOKENS" in refused.error
    assert LONG not in pixel_reads


def test_backend_stores_the_refusal_as_final(settings_factory, tiny_loaded, shared_videos, tmp_path):
    from ml_backend.labelstudio.media import LocalMedia
    from ml_backend.model.loading import resolve_model
    from ml_backend.scoring import DifficultyScorer
    from ml_backend.server.metrics import BackendMetrics
    from ml_backend.server.queue import MediaRequest, ScoringQueue
    from ml_backend.server.store import BackendStore

    settings = settings_factory(max_visual_tokens=BETWEEN, use_cache=False)
    scorer = DifficultyScorer(resolve_model(settings), settings, loaded=tiny_loaded)
    store = BackendStore(tmp_path / "backend.sqlite")

    class Resolver:
        def fetch(self, ref, *, task_id, connection):
            return LocalMedia(Path(ref), temporary=False, size=1)

    queue = ScoringQueue(scorer=lambda: scorer, resolver=Resolver(), store=store, metrics=BackendMetrics(),
                         on_late_result=lambda *a: None, batch_size=2, download_workers=1)
    queue.start()
    try:
        jobs = {name: queue.submit(MediaRequest(name, str(shared_videos / name), i, None), priority=1,
                                   model_version=scorer.model_version) for i, name in enumerate((LONG, SHORT))}
        assert all(job.wait(300) for job in jobs.values())
        refused = jobs[LONG].outcome
        assert refused.final and not refused.ok and "visual tokens" in refused.error
        assert jobs[SHORT].outcome.ok
        stored = store.outcome(scorer.model_version, LONG)
        assert stored is not None and "visual tokens" in stored.error
        # asked again: answered from the store, never decoded again
        assert queue.submit(MediaRequest(LONG, str(shared_videos / LONG), 3, None), priority=1,
                            model_version=scorer.model_version).error == stored.error
    finally:
        queue.stop()
        scorer.close()
        store.close()


def test_score_cli_reports_the_refusal_like_other_unusable_videos(tiny_model, shared_videos, tmp_path, monkeypatch,
                                                                   capsys):
    from ml_backend.cli import main

    base, adapter = tiny_model
    monkeypatch.setenv("MDSVQA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MDSVQA_MAX_VISUAL_TOKENS", str(BETWEEN))
    out = tmp_path / "scores.json"
    code = main(["score", str(shared_videos / LONG), str(shared_videos / SHORT), "--base", str(base),
                 "--adapter", str(adapter), "--out", str(out), "--no-progress", "--no-cache"])
    assert code == 1
    scores = json.loads(out.read_text())
    assert 1.0 <= scores[SHORT]["score"] <= 5.0
    assert scores[LONG]["score"] is None and "2,300 visual tokens" in scores[LONG]["error"]
    err = capsys.readouterr().err
    assert f"failed: {shared_videos / LONG}: too long" in err and "1 scored, 1 failed" in err


@pytest.mark.parametrize(("budget", "batches"), [(100_000, [2]), (3_000, [1, 1])])
def test_videos_whose_padding_mask_would_not_fit_run_one_at_a_time(settings_factory, tiny_loaded, shared_videos,
                                                                   monkeypatch, budget, batches):
    from ml_backend.model.loading import resolve_model
    from ml_backend.scoring import DifficultyScorer
    from ml_backend.scoring.generation import AnswerGenerator

    sizes: list[int] = []
    original = AnswerGenerator.generate

    def generate(self, videos):
        sizes.append(len(videos))
        return original(self, videos)

    monkeypatch.setattr(AnswerGenerator, "generate", generate)
    # 2300 + 572 tokens: 2 x 2556^2 x 5 bytes of mask, more than one 3000-token video's allowance
    settings = settings_factory(max_visual_tokens=budget, batch_size=2, use_cache=False)
    scorer = DifficultyScorer(resolve_model(settings), settings, loaded=tiny_loaded)
    try:
        results = list(scorer.score_paths([shared_videos / LONG, shared_videos / SHORT]))
    finally:
        scorer.close()
    assert all(r.ok for r in results) and len(results) == 2
    assert sizes == batches
