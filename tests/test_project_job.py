"""Pieces of the backend's training run that need no Label Studio: promotion rule, settings, f scores, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from pydantic import ValidationError

from ml_backend import cli
from ml_backend.server.training import job_settings
from ml_backend.settings import Settings, TrainingSettings
from ml_backend.training.pipeline import should_activate
from ml_backend.training.project_job import with_f_scores
from ml_backend.training.reporting import describe_metrics, improvement
from ml_backend.training.versions import VersionStore


def m(srcc, plcc=0.5):
    return {"srcc": srcc, "plcc": plcc, "count": 5, "total": 5}


@pytest.mark.parametrize("rule, before, after, expected", [
    ("if-not-worse", m(0.40), m(0.40), True),
    ("if-not-worse", m(0.40), m(0.41), True),
    ("if-not-worse", m(0.40), m(0.39), False),
    ("if-not-worse", m(None), m(0.10), True),  # nothing to compare with: a measured model wins
    ("if-not-worse", m(0.40), m(None), False),  # no SRCC after training: never promoted
    ("if-not-worse", None, None, False),
    ("if-better", m(0.40), m(0.40), False),
    ("if-better", m(0.40), m(0.41), True),
    ("always", m(0.40), m(None), True),
    ("never", m(0.10), m(0.90), False),
    ("if-not-worse", m(float("nan")), m(0.2), True),
    ("if-not-worse", m(0.2), m(float("nan")), False),
])
def test_promotion_rule(rule, before, after, expected):
    assert should_activate(rule, before, after) is expected


def test_objectives_and_promotion_from_the_environment(monkeypatch):
    assert TrainingSettings().objectives == ["quality", "difficulty"] and TrainingSettings().promote == "if-not-worse"
    monkeypatch.setenv("MDSVQA_TRAIN_OBJECTIVES", "difficulty")
    assert TrainingSettings().objectives == ["difficulty"]
    monkeypatch.setenv("MDSVQA_TRAIN_OBJECTIVES", " quality , difficulty ")
    assert TrainingSettings().objectives == ["quality", "difficulty"]
    monkeypatch.setenv("MDSVQA_TRAIN_OBJECTIVES", '["difficulty", "quality"]')
    assert TrainingSettings().objectives == ["difficulty", "quality"]
    for bad in ("", "quality,quality", "quality,reward"):
        monkeypatch.setenv("MDSVQA_TRAIN_OBJECTIVES", bad)
        with pytest.raises(ValidationError):
            TrainingSettings()
    monkeypatch.delenv("MDSVQA_TRAIN_OBJECTIVES")
    monkeypatch.setenv("MDSVQA_TRAIN_PROMOTE", "sometimes")
    with pytest.raises(ValidationError):
        TrainingSettings()


def test_job_settings_carry_everything_but_secrets(tmp_path):
    settings = Settings(basic_auth_user="u", basic_auth_password="p4ss", webhook_secret="s3cret",
                        label_studio_url="http://ls:8080", label_studio_api_key="tok3n", base="/models/base",
                        training={"source_labels": "rel/source.jsonl", "max_steps": 3})
    top, training = job_settings(settings)
    text = json.dumps([top, training])
    for secret in ("p4ss", "s3cret", "tok3n"):
        assert secret not in text
    assert top["base"] == "/models/base" and "label_studio_url" not in top and "training" not in top
    assert training["max_steps"] == 3 and Path(training["source_labels"]).is_absolute()
    rebuilt = Settings(**top, training=training)  # what the job process makes of it
    assert rebuilt.base == settings.base and rebuilt.training.max_steps == 3 and rebuilt.basic_auth_user is None


def test_describe_metrics_reports_the_change():
    text = describe_metrics(m(0.412, 0.390), m(0.530, 0.501))
    assert text == "SRCC 0.412 -> 0.530 (+0.118), PLCC 0.390 -> 0.501 (+0.111)"
    assert describe_metrics(None, {"srcc": None, "plcc": None, "count": 1, "total": 3}) == \
        "SRCC n/a -> n/a, PLCC n/a -> n/a, 1/3 held-out videos scored"
    assert improvement(m(0.5), m(None)) == {"srcc": None, "plcc": 0.0}


def test_f_scores_for_every_readable_video_with_the_current_f(tiny_model_dir, shared_videos, tmp_path,
                                                              one_torch_thread):
    """The tiny model's sampled answers never parse: with f_unparsed=constrained each readable video gets an f."""
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    rows = [{"video": str(shared_videos / "bikes.mp4"), "mos": 2.0},
            {"video": str(shared_videos / "carphone_pristine.mp4"), "mos": 4.0},
            {"video": str(broken), "mos": 3.0}]
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = Settings(base=str(tiny_model_dir / "base"), adapter=str(tiny_model_dir / "adapter"), offline=True,
                        device="cpu", training={"max_frames": 4, "frame_side": 56, "max_new_tokens": 4,
                                                      "f_max_new_tokens": 4, "f_unparsed": "constrained"})
    store = VersionStore(tmp_path / "models")
    quality = store.publish_folder("quality", tiny_model_dir / "adapter")
    for f_version in (None, quality):
        out, missing = with_f_scores(labels, tmp_path / "with-f.jsonl", settings, f_version)
        scored = [json.loads(line) for line in out.read_text().splitlines()]
        assert missing == 1 and "f_score" not in scored[2]
        assert all(1.0 <= r["f_score"] <= 5.0 for r in scored[:2])
        assert [r["mos"] for r in scored] == [2.0, 4.0, 3.0]

    # By default an unparseable f answer is dropped, never replaced by another estimator.
    honest = settings.model_copy(update={"training": settings.training.model_copy(update={"f_unparsed": "drop"})})
    out, missing = with_f_scores(labels, tmp_path / "honest.jsonl", honest, None)
    assert missing == 3 and not any("f_score" in json.loads(line) for line in out.read_text().splitlines())


def test_f_is_estimated_at_the_reference_inference_settings():
    from ml_backend.settings import TrainingSettings

    defaults = TrainingSettings()
    assert defaults.f_max_new_tokens == 2048 and defaults.f_unparsed == "drop"


def run_cli(*args, capsys):
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_activate_versions_and_jobs_commands(tiny_model_dir, tmp_path, capsys):
    model_dir = str(tmp_path / "models")
    store = VersionStore(model_dir)
    with store.draft("difficulty") as draft:
        shutil.copytree(tiny_model_dir / "adapter", draft.adapter_dir)
        draft.metadata.update(metrics_before=m(0.2, 0.1), metrics_after=m(0.3, 0.25))
    second = store.publish_folder("difficulty", tiny_model_dir / "adapter")

    code, out, _ = run_cli("activate", draft.id, "--model-dir", model_dir, capsys=capsys)
    assert code == 0 and out.strip() == f"active difficulty: {draft.id} (was stock)"
    run_cli("activate", second.id, "--model-dir", model_dir, capsys=capsys)
    code, out, _ = run_cli("activate", "previous", "--kind", "difficulty", "--model-dir", model_dir, capsys=capsys)
    assert code == 0 and store.pointer("difficulty").version == draft.id
    code, out, _ = run_cli("versions", "--model-dir", model_dir, capsys=capsys)
    assert f"* {draft.id}  difficulty" in out and f"  {second.id}  difficulty" in out
    assert "held-out SRCC 0.200 -> 0.300 (+0.100), PLCC 0.100 -> 0.250 (+0.150)" in out
    assert f"active difficulty: {draft.id}" in out and "active quality: none (stock model)" in out
    code, out, _ = run_cli("versions", "--model-dir", model_dir, "--json", "--kind", "quality", capsys=capsys)
    assert json.loads(out)["versions"] == []

    code, _, err = run_cli("activate", "difficulty-20990101-000000-abcdef", "--model-dir", model_dir, capsys=capsys)
    assert code == 2 and "does not exist" in err
    code, _, err = run_cli("activate", draft.id, "--kind", "quality", "--model-dir", model_dir, capsys=capsys)
    assert code == 2 and "not quality" in err
    code, _, err = run_cli("activate", "stock", "--model-dir", model_dir, capsys=capsys)
    assert code == 2 and "--kind" in err
    code, out, _ = run_cli("activate", "stock", "--kind", "difficulty", "--model-dir", model_dir, capsys=capsys)
    assert code == 0 and store.pointer("difficulty").version is None

    code, out, _ = run_cli("jobs", "--model-dir", model_dir, capsys=capsys)
    assert code == 0 and "no training jobs" in out
    code, _, err = run_cli("jobs", "--model-dir", model_dir, "--cancel", capsys=capsys)
    assert code == 2 and "no running job" in err


def test_f_estimates_sample_with_the_serving_options(tiny_model_dir, shared_videos, monkeypatch):
    """Training's f scores go through the same sampling options as serving's decoding=sample."""
    from ml_backend.scoring import generation
    from ml_backend.training import policy as policy_module
    from ml_backend.training.policy import Policy

    assert generation.reference_sampling(2048, 3) == {"do_sample": True, "top_k": 50, "top_p": 1.0,
                                                       "max_new_tokens": 2048, "num_return_sequences": 3}
    calls = []

    def spy(max_new_tokens, samples, temperature=None):
        calls.append((max_new_tokens, samples, temperature))
        return generation.reference_sampling(max_new_tokens, samples, temperature)

    monkeypatch.setattr(policy_module, "reference_sampling", spy)
    settings = Settings(base=str(tiny_model_dir / "base"), adapter=str(tiny_model_dir / "adapter"), offline=True,
                        device="cpu", training={"f_max_new_tokens": 5, "eval_samples": 2})
    policy = Policy.load(settings, None)
    policy.predict([shared_videos / "carphone_distorted.mp4"], "quality", samples=2, max_new_tokens=5)
    assert calls == [(5, 2, None)]  # the checkpoint's temperature: none given


def test_credentials_are_found_by_type_not_by_a_list():
    from pydantic import Field, SecretStr
    from pydantic_settings import BaseSettings, SettingsConfigDict

    from ml_backend.settings import CREDENTIAL, credential_env_names, credential_fields

    class Example(BaseSettings):
        model_config = SettingsConfigDict(env_prefix="X_")
        token: SecretStr | None = None
        host: str | None = Field(None, json_schema_extra=CREDENTIAL)
        workers: int = 2

    assert credential_fields(Example) == {"token", "host"}
    assert credential_env_names(Example) == {"X_TOKEN", "X_HOST"}
    assert {"LABEL_STUDIO_API_KEY", "MDSVQA_WEBHOOK_SECRET", "MDSVQA_BASIC_AUTH_PASSWORD"} <= \
        credential_env_names(Settings)
