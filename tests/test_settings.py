import re

import pytest
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from ml_backend.settings import Settings, VideoSettings, load_settings
from tests.media import REPO


def test_environment_and_overrides(monkeypatch):
    monkeypatch.setenv("MDSVQA_BATCH_SIZE", "7")
    monkeypatch.setenv("MDSVQA_VIDEO_FPS", "1.5")
    monkeypatch.setenv("LABEL_STUDIO_API_KEY", "secret-token")
    settings = load_settings(device="cpu", base=None)
    assert settings.batch_size == 7 and settings.device == "cpu"
    assert settings.base == "hollow404/VQR1-7B-YouTubeUGC"  # None overrides fall back
    assert settings.video.fps == 1.5
    assert "secret-token" not in repr(settings)
    assert settings.label_studio_api_key.get_secret_value() == "secret-token"


def test_invalid_values_are_refused():
    with pytest.raises(ValidationError):
        Settings(batch_size=0)
    with pytest.raises(ValidationError):
        VideoSettings(min_frames=10, max_frames=4)
    with pytest.raises(ValidationError):
        Settings(dtype="int8")


def test_every_setting_is_documented_in_the_readme():
    readme = (REPO / "README.md").read_text()
    documented = set(re.findall(r"`((?:MDSVQA|LABEL_STUDIO)_[A-Z0-9_]+)`", readme))
    expected = {"LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY"}
    for name, field in Settings.model_fields.items():
        group = field.annotation if isinstance(field.annotation, type) else None
        if group is not None and issubclass(group, BaseSettings):  # nested group with its own prefix
            prefix = group.model_config["env_prefix"]
            expected |= {f"{prefix}{sub.upper()}" for sub in group.model_fields}
        elif not name.startswith("label_studio"):
            expected.add(f"MDSVQA_{name.upper()}")
    assert expected <= documented, sorted(expected - documented)


def test_feature_settings_and_lambda_default(monkeypatch):
    settings = Settings()
    assert settings.features.extractor == "clip" and settings.features.clip_model == "RN101"
    assert settings.features.clip_pretrained == "openai" and settings.features.clip_checkpoint is None
    assert settings.features.siglip2_model == "google/siglip2-giant-opt-patch16-384"
    assert settings.priority.diversity_lambda is None, "lambda comes from the extractor unless set"
    monkeypatch.setenv("MDSVQA_FEATURES_EXTRACTOR", "siglip2")
    monkeypatch.setenv("MDSVQA_FEATURES_CLIP_CHECKPOINT", "/models/RN101.pt")
    monkeypatch.setenv("MDSVQA_PRIORITY_DIVERSITY_LAMBDA", "0.1")
    settings = load_settings()
    assert settings.features.extractor == "siglip2" and str(settings.features.clip_checkpoint) == "/models/RN101.pt"
    assert settings.priority.diversity_lambda == 0.1
    monkeypatch.setenv("MDSVQA_FEATURES_EXTRACTOR", "dino")
    with pytest.raises(ValidationError):
        load_settings()
