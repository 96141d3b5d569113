import json

import numpy as np
import pytest

from ml_backend.cli import main
from ml_backend.features.pooling import pool_temporal_patches
from selection.features import features_path
from selection.features import save_features as write_features
from tests.media import SHARED_VIDEO_NAMES, make_bad_videos


def test_pooling_averages_each_temporal_patch_and_normalises():
    # one video, t=2, 2x2 patches -> one merged token per temporal patch with merge 2
    tokens = np.array([[3.0, 4.0], [0.0, 2.0]])
    (pooled,) = pool_temporal_patches(tokens, np.array([[2, 2, 2]]))
    assert np.allclose(pooled, [[0.6, 0.8], [0.0, 1.0]])
    two = pool_temporal_patches(np.ones((1 + 2, 3)), np.array([[1, 2, 2], [2, 2, 2]]))
    assert [p.shape for p in two] == [(1, 3), (2, 3)]
    with pytest.raises(ValueError, match="do not match"):
        pool_temporal_patches(np.ones((5, 3)), np.array([[1, 2, 2]]))


def test_store_writes_reference_layout_atomically(tmp_path):
    target = write_features(tmp_path, "clip.final.mp4", np.ones((3, 4), dtype=np.float64),
                            extractor="clip:RN101:openai")
    assert target == features_path(tmp_path, "a/clip.final.mp4") == tmp_path / "clip.final_features.npz"
    stored = np.load(target)["features"]
    assert stored.dtype == np.float32 and stored.shape == (3, 4)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]
    with pytest.raises(ValueError, match="non-empty"):
        write_features(tmp_path, "empty.mp4", np.zeros((0, 4)), extractor="clip:RN101:openai")


@pytest.fixture
def model_args(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MDSVQA_CACHE_DIR", str(tmp_path / "cache"))
    # the base model's own vision tower (the clip extractor has its own tests: tests/test_frame_features.py)
    return ["--base", str(tiny_model[0]), "--adapter", str(tiny_model[1]), "--no-progress", "--extractor", "vision"]


def test_features_command_embeds_the_scored_frames(model_args, shared_videos, tmp_path):
    bad = make_bad_videos(tmp_path / "bad")["text"]
    code = main(["features", str(shared_videos), str(bad), "--out", str(tmp_path / "f"), *model_args])
    assert code == 1  # the text file failed, the rest went on
    for name in SHARED_VIDEO_NAMES:
        features = np.load(features_path(tmp_path / "f", name))["features"]
        assert features.ndim == 2 and features.shape[1] == 64  # tiny model's vision output size
        assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    with np.load(features_path(tmp_path / "f", "bikes.mp4")) as stored:
        bikes, extractor = stored["features"], str(stored["extractor"])
    assert bikes.shape[0] == 10  # 20 sampled frames, one embedding per temporal patch
    assert extractor.startswith("vision:") and len(extractor) == len("vision:") + 16
    assert not features_path(tmp_path / "f", bad).exists()


def test_score_writes_the_same_features_in_one_pass(model_args, shared_videos, tmp_path):
    assert main(["features", str(shared_videos), "--out", str(tmp_path / "alone"), *model_args]) == 0
    out = tmp_path / "s.json"
    assert main(["score", str(shared_videos), "--out", str(out), "--features", str(tmp_path / "both"),
                 *model_args]) == 0
    for name in SHARED_VIDEO_NAMES:
        alone = np.load(features_path(tmp_path / "alone", name))["features"]
        both = np.load(features_path(tmp_path / "both", name))["features"]
        assert np.allclose(alone, both, atol=1e-5)
    # Cache hits never reach the model: their missing features are still written.
    assert main(["score", str(shared_videos), "--out", str(out), "--features", str(tmp_path / "later"),
                 *model_args]) == 0
    assert sorted(p.name for p in (tmp_path / "later").iterdir()) == sorted(
        features_path(tmp_path, n).name for n in SHARED_VIDEO_NAMES)
    assert len(json.loads(out.read_text())) == 4
