"""``mdsvqa score`` end to end: real videos, real loading code, the tiny model, the reference JSON."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from ml_backend.cli import main
from tests.media import REPO, SHARED_VIDEO_NAMES, make_bad_videos


@pytest.fixture
def score(tiny_model, tmp_path, monkeypatch):
    """Run ``mdsvqa score`` in-process with the tiny model and a private cache; return (exit, json)."""
    base, adapter = tiny_model
    monkeypatch.setenv("MDSVQA_CACHE_DIR", str(tmp_path / "cache"))

    def run(*paths, out=None, extra=()):
        out = out or tmp_path / "scores.json"
        code = main(["score", *map(str, paths), "--base", str(base), "--adapter", str(adapter),
                     "--out", str(out), "--no-progress", *extra])
        return code, json.loads(out.read_text())

    return run


def test_scores_the_shared_videos_deterministically(score, shared_videos, tmp_path, capsys):
    code, first = score(shared_videos, extra=["--no-cache"])
    assert code == 0
    assert sorted(first) == SHARED_VIDEO_NAMES
    for entry in first.values():
        assert entry["reasoning"] == "N/A"
        assert 1.0 <= entry["score"] <= 5.0
        assert "meaningless" in entry["warning"]
    assert "MEANINGLESS" in capsys.readouterr().err
    code, second = score(shared_videos, out=tmp_path / "again.json", extra=["--no-cache", "--batch-size", "1"])
    assert code == 0
    assert {k: v["score"] for k, v in second.items()} == {k: v["score"] for k, v in first.items()}


def test_bad_files_are_flagged_and_good_ones_still_scored(score, shared_videos, tmp_path):
    bad = make_bad_videos(tmp_path / "bad")
    good = shutil.copy(shared_videos / "carphone_pristine.mp4", tmp_path / "bad" / "good.mp4")
    code, result = score(tmp_path / "bad", tmp_path / "missing.mp4")
    assert code == 1
    assert 1.0 <= result["good.mp4"]["score"] <= 5.0
    assert result["missing.mp4"]["score"] is None and "no such file" in result["missing.mp4"]["error"]
    for path in bad.values():
        entry = result[path.name]
        assert entry["score"] is None, path.name
        assert path.name in entry["error"]
    assert len(result) == len(bad) + 2
    assert good.exists()


def test_cache_makes_a_second_run_a_lookup(tiny_model, shared_videos, settings_factory):
    from ml_backend.scoring import DifficultyScorer

    settings = settings_factory()
    paths = sorted(shared_videos.glob("*.mp4"))
    first = {r.name: r for r in DifficultyScorer.from_settings(settings).score_paths(paths)}
    assert not any(r.cached for r in first.values())

    restarted = DifficultyScorer.from_settings(settings)  # a new process would build exactly this
    second = {r.name: r for r in restarted.score_paths(paths)}
    assert all(r.cached for r in second.values())
    assert {k: r.difficulty for k, r in second.items()} == {k: r.difficulty for k, r in first.items()}
    assert restarted._loaded is None, "a fully cached run must not load the model"
    assert restarted.cached_result(paths[0]).difficulty == first[paths[0].name].difficulty


def test_cache_key_changes_with_settings_that_change_the_answer(settings_factory, shared_videos):
    from ml_backend.scoring import DifficultyScorer
    from ml_backend.settings import VideoSettings

    path = shared_videos / "carphone_distorted.mp4"
    default = DifficultyScorer.from_settings(settings_factory())
    list(default.score_paths([path]))
    assert default.cached_result(path) is not None
    fewer_frames = DifficultyScorer.from_settings(settings_factory(video=VideoSettings(fps=1.0)))
    sampled = DifficultyScorer.from_settings(settings_factory(decoding="sample", num_samples=2))
    assert fewer_frames.cached_result(path) is None
    assert sampled.cached_result(path) is None
    for video in (VideoSettings(resize="decoder"), VideoSettings(second_per_grid="sampled")):
        assert DifficultyScorer.from_settings(settings_factory(video=video)).cached_result(path) is None


def test_scores_cached_for_the_old_model_input_are_not_served(settings_factory, shared_videos):
    """Entries written before the exact-input pipeline (prompt version 1) must miss."""
    from ml_backend.fileio import file_digest
    from ml_backend.scoring import DifficultyScorer
    from ml_backend.scoring.cache import CachedScore, ScoreCache, cache_key

    settings = settings_factory()
    scorer = DifficultyScorer.from_settings(settings)
    path = shared_videos / "carphone_distorted.mp4"
    old_video = settings.video.model_dump(exclude={"max_side", "resize", "second_per_grid"})
    old = {**scorer.identity(), "prompt_version": 1, "video": old_video}
    cache = ScoreCache(settings.cache_path)
    cache.put(cache_key(file_digest(path), old), CachedScore(4.44, "<answer>4.44</answer>", "old"))
    assert len(cache) == 1
    assert scorer.cached_result(path) is None


def test_score_and_serve_render_the_reference_difficulty_prompt(settings_factory):
    """What the scorers of `score` and `serve` really send, built from the settings as those commands do."""
    from ml_backend.scoring import DifficultyScorer
    from ml_backend.server.service import _load_real_scorer
    from tests.media import reference_prompts

    expected = reference_prompts()["difficulty"]
    for scorer in (DifficultyScorer.from_settings(settings_factory()), _load_real_scorer(settings_factory())):
        assert scorer.task == "difficulty"
        assert scorer.generator.encoder.render(scorer.task) == expected
        ids = scorer.generator.encoder.prompt_ids(scorer.task, __import__("numpy").array([1, 2, 2]))
        text = scorer.loaded.tokenizer.decode(ids)
        assert text == expected  # one placeholder for a 1x2x2 grid: the exact text goes to the model


def test_resume_keeps_existing_scores_and_retries_failures(score, shared_videos, tmp_path):
    out = tmp_path / "partial.json"
    out.write_text(json.dumps({
        "bikes.mp4": {"reasoning": "N/A", "score": 4.99},
        "carphone_pristine.mp4": {"reasoning": "N/A", "score": None, "error": "earlier failure"},
    }))
    code, result = score(shared_videos, out=out, extra=["--resume"])
    assert code == 0
    assert result["bikes.mp4"]["score"] == 4.99  # kept, not rescored
    assert result["carphone_pristine.mp4"]["score"] is not None  # retried
    assert sorted(result) == SHARED_VIDEO_NAMES


def test_duplicate_file_names_are_reported_not_overwritten(score, shared_videos, tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        shutil.copy(shared_videos / "carphone_distorted.mp4", tmp_path / folder / "clip.mp4")
    code, result = score(tmp_path / "a", tmp_path / "b")
    assert code == 1
    assert result["clip.mp4"]["score"] is not None
    duplicate = result[str(tmp_path / "b" / "clip.mp4")]
    assert duplicate["score"] is None and "duplicate file name" in duplicate["error"]


def test_sampled_and_free_form_decoding_stay_available(settings_factory, shared_videos):
    from ml_backend.scoring import DifficultyScorer

    path = shared_videos / "carphone_distorted.mp4"
    sampled = DifficultyScorer.from_settings(settings_factory(decoding="sample", num_samples=3, use_cache=False))
    result = sampled.score_one(path)
    # A random model rarely writes a parseable answer freely: either a score or a kept raw text.
    assert result.ok or (result.raw_text is not None and "unparseable" in result.error)
    free = DifficultyScorer.from_settings(settings_factory(decoding="greedy", max_new_tokens=8, use_cache=False))
    greedy = free.score_one(path)
    assert greedy.raw_text is not None
    assert greedy.ok or "unparseable" in greedy.error


def test_unreadable_directory_is_reported(tiny_model, shared_videos, tmp_path):
    """Runs the CLI without the capabilities that let root read any directory."""
    locked = tmp_path / "pool" / "locked"
    locked.mkdir(parents=True)
    shutil.copy(shared_videos / "carphone_distorted.mp4", locked / "hidden.mp4")
    shutil.copy(shared_videos / "carphone_pristine.mp4", tmp_path / "pool" / "visible.mp4")
    locked.chmod(0)
    drop = "-dac_override,-dac_read_search"
    prefix = ["setpriv", f"--bounding-set={drop}", f"--inh-caps={drop}"] if os.geteuid() == 0 else []
    env = {**os.environ, "MDSVQA_CACHE_DIR": str(tmp_path / "cache")}
    try:
        proc = subprocess.run(
            [*prefix, sys.executable, "-m", "ml_backend.cli", "score", str(tmp_path / "pool"),
             "--base", str(tiny_model[0]), "--adapter", str(tiny_model[1]), "--out", str(tmp_path / "s.json"),
             "--no-progress"],
            cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        )
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 1, proc.stderr
    result = json.loads((tmp_path / "s.json").read_text())
    assert result[str(locked)]["score"] is None
    assert "cannot read directory" in result[str(locked)]["error"]
    assert result["visible.mp4"]["score"] is not None
    assert "hidden.mp4" not in result


def test_help_is_quick_and_imports_no_heavy_library():
    code = ("import sys; from ml_backend.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'decord', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_tiny_model_command_writes_loadable_folders(tmp_path, capsys):
    assert main(["tiny-model", str(tmp_path / "m")]) == 0
    assert (tmp_path / "m" / "base" / "config.json").is_file()
    assert (tmp_path / "m" / "adapter" / "adapter_config.json").is_file()
    assert "meaningless" in capsys.readouterr().out


def test_cache_keys_separate_videos_and_identities():
    from ml_backend.scoring.cache import cache_key

    identity = {"model": {"base": "x"}, "video": {"fps": 2.0}}
    assert cache_key("aaa", identity) != cache_key("bbb", identity)
    assert cache_key("aaa", identity) != cache_key("aaa", {**identity, "video": {"fps": 1.0}})
    assert cache_key("aaa", identity) == cache_key("aaa", dict(reversed(list(identity.items()))))


def test_resume_exit_status_counts_only_the_requested_videos(score, shared_videos, tmp_path, capsys):
    out = tmp_path / "partial.json"
    out.write_text(json.dumps({"gone.mp4": {"reasoning": "N/A", "score": None, "error": "an old failure"}}))
    code, result = score(shared_videos / "carphone_distorted.mp4", out=out, extra=["--resume"])
    assert code == 0  # every requested video scored; the old failure stays in the file but not in the status
    assert result["gone.mp4"]["score"] is None and result["carphone_distorted.mp4"]["score"] is not None
    assert "1 scored, 0 failed" in capsys.readouterr().err
    code, _ = score(shared_videos / "carphone_distorted.mp4", tmp_path / "missing.mp4", out=out, extra=["--resume"])
    assert code == 1  # a requested video that fails still fails the run
