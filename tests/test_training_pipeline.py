"""End to end on the tiny model: labels -> version, in the foreground, through the CLI and as a job."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ml_backend.commands import train as train_command
from ml_backend.errors import TrainingDataError
from ml_backend.model.loading import load_model
from ml_backend.settings import Settings
from ml_backend.training.jobs import JobManager
from ml_backend.training.pipeline import run_training
from ml_backend.training.versions import VersionStore

from .training_helpers import SHARED_VIDEOS

TRAINING = dict(f_max_new_tokens=8, f_unparsed="constrained", max_frames=4, frame_side=56, max_new_tokens=8,
                group_size=2, videos_per_step=3, max_steps=1, learning_rate=1e-3, min_train_labels=2,
                min_held_out_labels=3, held_out_fraction=0.5)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def labels(tmp_path) -> Path:
    """Six labelled videos (the four real ones plus two renamed copies) and one broken row."""
    folder = tmp_path / "videos"
    folder.mkdir()
    names = []
    for source in sorted(SHARED_VIDEOS.glob("*.mp4")):
        shutil.copy(source, folder / source.name)
        names.append(source.name)
    for extra, source in (("copy_a.mp4", "bikes.mp4"), ("copy_b.mp4", "carphone_distorted.mp4")):
        shutil.copy(folder / source, folder / extra)
        names.append(extra)
    rows = [{"video": f"videos/{name}", "mos": 10.0 * (i + 1), "f_score": 1.0 + (i * 7 % 5) * 0.8}
            for i, name in enumerate(names)]
    rows.append({"video": "videos/missing.mp4", "mos": 50})
    path = tmp_path / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def settings_for(root: Path) -> Settings:
    return Settings(base=str(root / "base"), adapter=str(root / "adapter"), offline=True, device="cpu",
                    training=TRAINING)


def test_run_training_publishes_a_loadable_version(tiny_model_dir, labels, tmp_path, caplog, capsys):
    import logging

    caplog.set_level(logging.WARNING, logger="ml_backend.training.pipeline")
    model_dir = tmp_path / "models"
    progress: list[float] = []
    start = tiny_model_dir / "adapter"  # random LoRA: the KL term alone moves it, whatever the rewards
    outcome = run_training(labels, model_dir, settings=settings_for(tiny_model_dir), objective="quality",
                           adapter=str(start), activate="always",
                           progress=lambda fraction, message: progress.append(fraction))
    store = VersionStore(model_dir)
    version = store.get(outcome.version_id)
    assert version.kind == "quality" and store.active("quality").id == version.id and outcome.activated
    meta = version.metadata
    assert meta["data_hash"] and meta["settings"]["labels"] == {"train": 3, "held_out": 3, "source": 0,
                                                                 "skipped": 1}
    assert meta["metrics_before"]["total"] == 3 and meta["metrics_after"]["total"] == 3
    assert meta["steps"] == 1 and meta["tiny_model"] is True and meta["parent"] is None
    protocol = meta["protocol"]
    assert protocol["geometry"] == {"videos_compared": 2, "videos_per_step": 3, "rollouts_per_video": 2}
    assert protocol["schedule"]["decay"] == "linear to 0" and protocol["split"]["seed"] == 0
    assert protocol["data"]["regime"].startswith("target only") and protocol["data"]["source"] == 0
    assert "4-parameter logistic" in protocol["metric"] and "redrawn every step" in protocol["frames"]["training"]
    assert len(outcome.skipped_labels) == 1 and "missing.mp4" in outcome.skipped_labels[0]
    assert progress == sorted(progress) and progress[-1] == 1.0
    assert "no source-domain labels" in caplog.text
    from ml_backend.cli import main

    assert main(["versions", "--model-dir", str(model_dir)]) == 0
    shown = capsys.readouterr().out
    assert "geometry 2 videos compared per micro-batch, 3 per step" in shown
    assert "data target only (no source-domain labels): 3 target + 0 source to train, 3 held out (seed 0)" in shown

    saved = load_file(version.adapter_path / "adapter_model.safetensors")
    initial = load_file(start / "adapter_model.safetensors")
    assert saved.keys() == initial.keys()
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)  # trained weights were written

    # The serving loader takes the published adapter as it is.
    served = load_model(Settings(base=str(tiny_model_dir / "base"), adapter=str(version.adapter_path),
                                 offline=True, device="cpu"))
    assert served.adapters["difficulty"].path == version.adapter_path.resolve()

    # A second round continues from the active version and records it as parent.
    again = run_training(labels, model_dir, settings=settings_for(tiny_model_dir), objective="quality",
                         adapter="active", activate="never")
    assert store.get(again.version_id).parent == version.id
    assert store.active("quality").id == version.id  # activate="never"


def test_too_few_labels_are_refused_before_the_model_loads(tiny_model_dir, labels, tmp_path):
    short = tmp_path / "short.jsonl"
    short.write_text("".join(labels.read_text().splitlines(keepends=True)[:3]))
    with pytest.raises(TrainingDataError, match="too few labels"):
        run_training(short, tmp_path / "models", settings=Settings(base="/nonexistent", training=TRAINING))
    assert not (tmp_path / "models" / "versions").exists()


def test_cli_train_prints_the_version_id(tiny_model_dir, labels, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MDSVQA_ADAPTER", str(tiny_model_dir / "adapter"))
    for key, value in TRAINING.items():
        monkeypatch.setenv(f"MDSVQA_TRAIN_{key.upper()}", str(value))
    parser = argparse.ArgumentParser()
    train_command.add_parser(parser.add_subparsers())
    args = parser.parse_args(["train", "--labels", str(labels), "--model-dir", str(tmp_path / "models"),
                              "--base", str(tiny_model_dir / "base"), "--objective", "difficulty",
                              "--max-steps", "1", "--device", "cpu", "--offline", "--activate", "never"])
    assert args.run(args) == 0
    out = capsys.readouterr().out
    version_id = out.strip().splitlines()[-1].removeprefix("version: ")
    version = VersionStore(tmp_path / "models").get(version_id)
    assert version.kind == "difficulty" and version.metadata["settings"]["start_adapter"].endswith("adapter")
    assert version.metadata["settings"]["training"]["max_new_tokens"] == TRAINING["max_new_tokens"]


def test_training_as_a_job_process(tiny_model_dir, labels, tmp_path):
    jobs = JobManager(tmp_path / "models")
    try:
        status = jobs.start_training(labels, objective="quality", activate="always",
                                     settings={"base": str(tiny_model_dir / "base"), "offline": True,
                                               "device": "cpu"},
                                     training=TRAINING)
        done = jobs.wait(status.job_id, timeout=300)
    finally:
        for child in jobs._children:
            if child.poll() is None:
                child.kill()
                child.wait()
    assert done.state == "succeeded", Path(done.log_path).read_text()[-3000:]
    version_id = done.result["version_id"]
    assert VersionStore(tmp_path / "models").active("quality").id == version_id
    assert done.result["activated"] is True and done.result["steps"] == 1 and done.progress == 1.0
    assert "published" in done.message


def test_difficulty_scores_missing_f_with_the_given_scorer(tiny_model_dir, labels, tmp_path):
    rows = [json.loads(line) for line in labels.read_text().splitlines()]
    for row in rows:
        row.pop("f_score", None)
    plain = tmp_path / "plain.jsonl"
    plain.write_text("".join(json.dumps(r) + "\n" for r in rows))
    asked: list[list[Path]] = []

    def scorer(paths):
        asked.append(list(paths))
        return np.linspace(1.0, 5.0, len(paths))

    outcome = run_training(plain, tmp_path / "models", settings=settings_for(tiny_model_dir),
                           objective="difficulty", activate="never", quality_scorer=scorer)
    assert len(asked) == 1 and len(asked[0]) == 6  # every usable video, once
    assert VersionStore(tmp_path / "models").get(outcome.version_id).kind == "difficulty"
    assert outcome.metrics_before["total"] == 3
