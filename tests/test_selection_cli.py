"""``mdsvqa select`` end to end on files in a temporary folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ml_backend.cli import main
from selection.features import save_features
from selection.lambdas import CLIP_RN101_OPENAI, SIGLIP2_GIANT
from selection.reference import reference_select

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def workspace(tmp_path):
    """20 videos with clustered unit-norm features; scores with two failures; one video without features."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((4, 16))
    names = [f"video{i:02d}.mp4" for i in range(20)]
    frames = {}
    for name in names:
        f = centres[rng.integers(4)] + 0.3 * rng.standard_normal((int(rng.integers(2, 6)), 16))
        frames[name] = (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float32)
    features_dir = tmp_path / "features"
    for name in names:
        if name != "video05.mp4":  # missing features
            save_features(features_dir, name, frames[name], extractor=CLIP_RN101_OPENAI)
    scores = {name: {"reasoning": "N/A", "score": round(float(rng.uniform(1, 5)), 2)} for name in names}
    scores["video03.mp4"] = {"reasoning": "N/A", "score": None, "error": "cannot decode"}
    scores["video11.mp4"]["score"] = None
    scores_path = tmp_path / "scores.json"
    scores_path.write_text(json.dumps(scores))
    labeled_path = tmp_path / "labeled.json"
    labeled_path.write_text(json.dumps(["video07.mp4", "video03.mp4"]))  # a labeled video may lack a score
    return {"dir": tmp_path, "features": features_dir, "scores": scores_path, "labeled": labeled_path,
            "frames": frames, "score_values": scores, "names": names}


def run_select(workspace, *extra: str) -> int:
    return main(["select", "--scores", str(workspace["scores"]), "--features", str(workspace["features"]),
                 "--out", str(workspace["dir"] / "picks.json"), *extra])


def test_end_to_end_matches_reference(workspace, capsys):
    details_path = workspace["dir"] / "details.json"
    code = run_select(workspace, "--budget", "6", "--lambda", "0.5", "--labeled", str(workspace["labeled"]),
                      "--details", str(details_path))
    assert code == 0
    picks = json.loads((workspace["dir"] / "picks.json").read_text())

    # The same selection computed directly with the reference, on the usable videos.
    values = workspace["score_values"]
    candidates = [n for n in workspace["names"]
                  if values[n]["score"] is not None and n not in ("video05.mp4", "video07.mp4")]
    labeled = ["video07.mp4", "video03.mp4"]
    pool = candidates + labeled
    difficulty = [values[n]["score"] if n in candidates else np.nan for n in pool]
    expected = reference_select(difficulty, [workspace["frames"][n] for n in pool], 6, 0.5,
                                [pool.index(n) for n in labeled])
    assert picks == [pool[i] for i in expected.picks]
    assert not set(picks) & {"video03.mp4", "video05.mp4", "video07.mp4", "video11.mp4"}

    details = json.loads(details_path.read_text())
    assert [step["name"] for step in details["steps"]] == picks
    assert [step["rank"] for step in details["steps"]] == list(range(1, 7))
    np.testing.assert_allclose([s["objective"] for s in details["steps"]], expected.objectives, rtol=1e-6)
    np.testing.assert_allclose([s["mean_distance"] for s in details["steps"]], expected.mean_distances, rtol=1e-6)
    for step in details["steps"]:
        assert step["objective"] == pytest.approx(step["difficulty"] + 0.5 * step["mean_distance"])
    assert details["labeled"] == 2 and details["candidates"] == len(candidates)
    assert set(details["left_out"]) == {"video05.mp4", "video11.mp4"}

    err = capsys.readouterr().err
    assert "left out video11.mp4: score is null" in err
    assert "left out video05.mp4: features file missing" in err
    assert "video03.mp4" not in err  # labeled: its failed score does not matter
    assert "picked 6 of 16 candidates (2 labeled, 2 left out)" in err


def test_budget_larger_than_pool_orders_everything(workspace, capsys):
    assert run_select(workspace, "--budget", "100") == 0
    picks = json.loads((workspace["dir"] / "picks.json").read_text())
    assert len(picks) == 17 and len(set(picks)) == 17
    assert "budget 100 exceeds the 17 candidates" in capsys.readouterr().err


def test_budget_zero_writes_an_empty_list(workspace):
    assert run_select(workspace, "--budget", "0") == 0
    assert json.loads((workspace["dir"] / "picks.json").read_text()) == []


def test_output_is_replaced_atomically(workspace):
    out = workspace["dir"] / "picks.json"
    out.write_text("old content")
    assert run_select(workspace, "--budget", "3") == 0
    assert len(json.loads(out.read_text())) == 3
    assert sorted(p.name for p in workspace["dir"].iterdir() if p.name.startswith(".picks")) == []


def test_out_of_range_score_is_an_error(workspace, capsys):
    values = workspace["score_values"]
    values["video09.mp4"]["score"] = 7.5
    workspace["scores"].write_text(json.dumps(values))
    assert run_select(workspace, "--budget", "3") == 2
    err = capsys.readouterr().err
    assert "mdsvqa select: error:" in err and "video09.mp4 (7.5)" in err and "outside [1, 5]" in err
    assert not (workspace["dir"] / "picks.json").exists()


def test_labeled_video_without_features_is_an_error(workspace, capsys):
    workspace["labeled"].write_text(json.dumps(["video05.mp4"]))
    assert run_select(workspace, "--budget", "3", "--labeled", str(workspace["labeled"])) == 2
    err = capsys.readouterr().err
    assert "labeled video(s) have no usable features" in err and "video05.mp4" in err


@pytest.mark.parametrize("content, message", [
    ('{"a.mp4": {"score": 2.0}, "a.mp4": {"score": 3.0}}', "more than once"),
    ("[1, 2]", "expected"),
    ("{", "not valid JSON"),
])
def test_bad_scores_file(workspace, capsys, content, message):
    workspace["scores"].write_text(content)
    assert run_select(workspace, "--budget", "3") == 2
    assert message in capsys.readouterr().err


def test_duplicate_stems_are_an_error(workspace, capsys):
    values = workspace["score_values"]
    values["clips/video01.mkv"] = {"reasoning": "N/A", "score": 2.0}
    workspace["scores"].write_text(json.dumps(values))
    assert run_select(workspace, "--budget", "3") == 2
    assert "share a features-file stem" in capsys.readouterr().err


def test_nothing_usable(workspace, capsys):
    workspace["scores"].write_text(json.dumps({"video05.mp4": {"reasoning": "N/A", "score": 2.0}}))
    assert run_select(workspace, "--budget", "3") == 2
    assert "nothing to select from" in capsys.readouterr().err


def test_negative_budget(workspace, capsys):
    assert run_select(workspace, "--budget", "-1") == 2
    assert "--budget must be >= 0" in capsys.readouterr().err


def test_help_does_not_import_torch():
    code = ("import sys; from ml_backend.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules, 'numpy' in sys.modules)")
    completed = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert completed.stdout.split() == ["False", "False"]


# -- lambda per extractor; one extractor per run ----------------------------------------------------

def _rewrite_features(workspace, extractor_of) -> None:
    """Re-save every features file with ``extractor_of(name)`` (None: an older file without the key)."""
    for name, frames in workspace["frames"].items():
        if name == "video05.mp4":
            continue
        extractor = extractor_of(name)
        path = workspace["features"] / f"{Path(name).stem}_features.npz"
        if extractor is None:
            np.savez(path, features=frames)
        else:
            save_features(workspace["features"], name, frames, extractor=extractor)


def _expected(workspace, budget, lam):
    values = workspace["score_values"]
    pool = [n for n in workspace["names"] if values[n]["score"] is not None and n != "video05.mp4"]
    result = reference_select([values[n]["score"] for n in pool], [workspace["frames"][n] for n in pool], budget, lam)
    return [pool[i] for i in result.picks]


@pytest.mark.parametrize("extractor, lam", [(CLIP_RN101_OPENAI, 0.25), (SIGLIP2_GIANT, 0.075)])
def test_lambda_defaults_to_the_extractors(workspace, capsys, extractor, lam):
    _rewrite_features(workspace, lambda _name: extractor)
    details = workspace["dir"] / "details.json"
    assert run_select(workspace, "--budget", "8", "--details", str(details)) == 0
    recorded = json.loads(details.read_text())
    assert (recorded["lambda"], recorded["extractor"]) == (lam, extractor)
    assert recorded["lambda_source"] == f"default for {extractor}"
    assert json.loads((workspace["dir"] / "picks.json").read_text()) == _expected(workspace, 8, lam)
    assert f"features: {extractor}, lambda {lam:g}" in capsys.readouterr().err


def test_vision_tower_features_need_an_explicit_lambda(workspace, capsys):
    _rewrite_features(workspace, lambda _name: "vision:0123456789abcdef")
    assert run_select(workspace, "--budget", "3") == 2
    err = capsys.readouterr().err
    assert "vision tower" in err and "--lambda" in err and "arbitrarily" in err
    assert not (workspace["dir"] / "picks.json").exists()
    assert run_select(workspace, "--budget", "3", "--lambda", "0.4") == 0
    assert json.loads((workspace["dir"] / "picks.json").read_text()) == _expected(workspace, 3, 0.4)


def test_older_files_without_extractor_are_reported(workspace, capsys):
    _rewrite_features(workspace, lambda _name: None)
    assert run_select(workspace, "--budget", "3") == 2
    assert "do not record their extractor" in capsys.readouterr().err
    assert run_select(workspace, "--budget", "3", "--lambda", "0.25") == 0
    assert "extractor not recorded (file written before extractors were recorded)" in capsys.readouterr().err


@pytest.mark.parametrize("other", [SIGLIP2_GIANT, None])
def test_extractors_are_never_mixed(workspace, capsys, other):
    _rewrite_features(workspace, lambda name: other if name in ("video01.mp4", "video02.mp4") else CLIP_RN101_OPENAI)
    assert run_select(workspace, "--budget", "3", "--lambda", "0.25") == 2
    err = capsys.readouterr().err
    assert "different extractors" in err and "video01.mp4, video02.mp4" in err
    assert f"'{CLIP_RN101_OPENAI}': 15 video(s)" in err
    assert (repr(other) if other else "not recorded") in err
    assert not (workspace["dir"] / "picks.json").exists()


def test_diagnostic_reports_the_quality_model_on_the_pool_and_on_the_picks(workspace, capsys):
    from ml_backend.training.evaluation import evaluate

    rng = np.random.default_rng(1)
    names = workspace["names"]
    mos = {name: float(rng.uniform(1, 5)) for name in names}
    f = {name: {"score": round(mos[name] + float(rng.normal(0, 0.7)), 2)} for name in names}
    (workspace["dir"] / "f.json").write_text(json.dumps(f))
    (workspace["dir"] / "mos.jsonl").write_text("".join(json.dumps({"video": f"/pool/{n}", "mos": m}) + "\n"
                                                       for n, m in mos.items()))
    code = run_select(workspace, "--budget", "8", "--mos", str(workspace["dir"] / "mos.jsonl"),
                      "--baseline", str(workspace["dir"] / "f.json"))
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    picks = json.loads((workspace["dir"] / "picks.json").read_text())
    whole = evaluate([f[n]["score"] for n in names], [mos[n] for n in names])
    subset = evaluate([f[n]["score"] for n in picks], [mos[n] for n in picks])
    assert out == [f"quality model on all labeled videos: SRCC {whole.srcc:.4f}, PLCC {whole.plcc:.4f} (n=20)",
                   f"quality model on the picks: SRCC {subset.srcc:.4f}, PLCC {subset.plcc:.4f} (n=8)"]


def test_diagnostic_needs_both_files(workspace, capsys):
    assert run_select(workspace, "--budget", "2", "--mos", str(workspace["scores"])) == 2
    assert "both --mos and --baseline" in capsys.readouterr().err
