"""Selection features as the paper: CLIP RN101 / SigLIP2 on every frame, from the scorer's own decode.

CLIP runs with random weights (``pretrained='random'``: the real RN101 architecture) and
SigLIP2 as a tiny random model on disk, through the same loaders as the real weights.
Clips are tiny synthetic videos of a few frames: RN101 costs ~0.5 s a frame on this CPU.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

# torch before decord: decord2 dlopens every nvidia/*/lib/*.so (libnvblas too) RTLD_GLOBAL,
# and torch's matrix products then crash (segfault) if torch is loaded after it
import torch

from ml_backend.cli import main
from ml_backend.errors import FeatureModelError
from ml_backend.features.frames import FrameFeatureAccumulator, FrameFeatureError, embed_video_frames
from ml_backend.settings import FeatureSettings, Settings
from selection.features import features_path
from tests.media import VIDEOS, encode_video, moving_pattern, small_clip_model

FRAMES = 5  # frames per test clip


def _clip_video(path, count=FRAMES, seed=0):
    return encode_video(path, moving_pattern(count, 48, 64, seed=seed), fps=10)


def _decoded_frames(path) -> np.ndarray:
    import decord

    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy()


@pytest.fixture(scope="module")
def random_clip():
    from ml_backend.features.clip import ClipFrameEncoder

    return ClipFrameEncoder("RN101", "random")


# -- CLIP preprocessing: the reference's clip.load("RN101") pipeline --------------------------------

def _reference_preprocess(frame: np.ndarray, size: int = 224) -> np.ndarray:
    """clip.load's transform written out with PIL and numpy: short side to 224 bicubic, centre crop, normalise."""
    from PIL import Image

    from ml_backend.features.clip import CLIP_MEAN, CLIP_STD

    image = Image.fromarray(frame)
    width, height = image.size
    if width <= height:
        new_w, new_h = size, int(size * height / width)
    else:
        new_w, new_h = int(size * width / height), size
    image = image.resize((new_w, new_h), Image.BICUBIC)
    top, left = round((new_h - size) / 2.0), round((new_w - size) / 2.0)
    image = image.crop((left, top, left + size, top + size)).convert("RGB")
    array = np.asarray(image, dtype=np.float32) / np.float32(255)
    array = (array - np.array(CLIP_MEAN, dtype=np.float32)) / np.array(CLIP_STD, dtype=np.float32)
    return array.transpose(2, 0, 1)


@pytest.mark.parametrize("video", ["bikes.mp4", "carphone_pristine.mp4"])  # 640x272 down, 176x144 up
def test_clip_preprocessing_is_the_reference_pipeline(video):
    import decord
    import open_clip
    from PIL import Image

    from ml_backend.features.clip import clip_preprocess

    frame = decord.VideoReader(str(VIDEOS / video))[7].asnumpy()
    ours = clip_preprocess(224)(Image.fromarray(frame)).numpy()
    assert ours.shape == (3, 224, 224)
    np.testing.assert_allclose(ours, _reference_preprocess(frame), rtol=0, atol=1e-6)
    # open_clip's own eval transform for RN101 with the 'openai' tag is the same pipeline
    cfg = open_clip.get_pretrained_cfg("RN101", "openai")
    theirs = open_clip.image_transform(224, is_train=False, mean=cfg["mean"], std=cfg["std"],
                                       interpolation=cfg["interpolation"], resize_mode=cfg["resize_mode"])
    np.testing.assert_array_equal(ours, theirs(Image.fromarray(frame)).numpy())


# -- one row per decoded frame, from one decode ----------------------------------------------------

def test_clip_features_one_normalised_row_per_frame(random_clip, tmp_path):
    path = _clip_video(tmp_path / "clip.mp4")
    frames = _decoded_frames(path)
    assert len(frames) == FRAMES
    settings = Settings(features=FeatureSettings(batch_size=3))  # 5 frames: a full batch and a partial one
    decoded, features = embed_video_frames(path, settings, random_clip)
    assert features.shape == (FRAMES, 512) and features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    direct = random_clip.encode(random_clip.preprocess(frames))  # all frames in one batch, in order
    np.testing.assert_allclose(features, direct, atol=1e-5)
    assert decoded.frames.shape[0] == decoded.plan.num_frames  # the scorer's frames came from the same pass


class _MeanEncoder:
    """Cheap stand-in: a frame's embedding is its mean colour (tells frames and their order apart)."""

    identity = "test:mean"
    normalised = False

    def __init__(self):
        self.batches = []

    def preprocess(self, frames):

        return {"pixel_values": torch.from_numpy(frames.reshape(len(frames), -1, 3).mean(axis=1))}

    def encode(self, inputs):
        self.batches.append(len(inputs["pixel_values"]))
        return inputs["pixel_values"].numpy().astype(np.float32)


def test_the_sink_sees_every_frame_once_and_the_scorer_frames_are_unchanged(tmp_path):
    from ml_backend.video.decoding import DECODE_CHUNK, decode_video

    count = DECODE_CHUNK + 7  # two chunks
    path = encode_video(tmp_path / "v.mp4", moving_pattern(count, 48, 64, seed=3), fps=10)
    encoder = _MeanEncoder()
    accumulator = FrameFeatureAccumulator(encoder, batch_size=5)
    settings = Settings()
    with_sink = decode_video(path, settings.video, every_frame=accumulator)
    without = decode_video(path, settings.video)
    np.testing.assert_array_equal(with_sink.frames, without.frames)
    features = accumulator.finish()
    expected = _decoded_frames(path).reshape(count, -1, 3).mean(axis=1)
    np.testing.assert_allclose(features, expected, rtol=1e-6)
    assert accumulator.frames_seen == count and sum(encoder.batches) == count
    assert max(encoder.batches) <= 5, "embedded in batches, not all at once"
    with pytest.raises(FrameFeatureError, match="in order"):
        FrameFeatureAccumulator(encoder)(np.zeros((2, 4, 4, 3), np.uint8), 3)


def _count_decodes(monkeypatch) -> list:
    from ml_backend.video import decoding

    opened = []
    real_open = decoding._open

    def counting(path, **kwargs):
        opened.append(path.name)
        return real_open(path, **kwargs)

    monkeypatch.setattr(decoding, "_open", counting)
    return opened


@pytest.fixture
def clip_cli(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MDSVQA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MDSVQA_FEATURES_CLIP_PRETRAINED", "random")
    monkeypatch.setenv("MDSVQA_DEVICE", "cpu")
    return ["--base", str(tiny_model[0]), "--adapter", str(tiny_model[1]), "--no-progress"]


def test_score_writes_clip_features_of_every_frame_from_the_scoring_decode(clip_cli, tmp_path, monkeypatch):
    clips = tmp_path / "clips"
    clips.mkdir()
    for i in range(2):
        _clip_video(clips / f"c{i}.mp4", count=4 + i, seed=i)
    opened = _count_decodes(monkeypatch)
    out = tmp_path / "scores.json"
    assert main(["score", str(clips), "--out", str(out), "--features", str(tmp_path / "f"), *clip_cli]) == 0
    assert sorted(opened) == ["c0.mp4", "c1.mp4"], "one decode per video for both scores and features"
    assert all(entry["score"] is not None for entry in json.loads(out.read_text()).values())
    for i in range(2):
        with np.load(features_path(tmp_path / "f", f"c{i}.mp4")) as stored:
            features, extractor = stored["features"], str(stored["extractor"])
        assert features.shape == (4 + i, 512), "one row per decoded frame"
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
        assert extractor == "clip:RN101:random"

    # `mdsvqa features` gives the same rows (its own single decode), and the score cache's hits get theirs
    opened.clear()
    assert main(["features", str(clips / "c1.mp4"), "--out", str(tmp_path / "alone"), *clip_cli]) == 0
    assert opened == ["c1.mp4"]
    np.testing.assert_allclose(np.load(features_path(tmp_path / "alone", "c1.mp4"))["features"],
                               np.load(features_path(tmp_path / "f", "c1.mp4"))["features"], atol=1e-5)
    opened.clear()
    assert main(["score", str(clips / "c0.mp4"), "--out", str(out), "--features", str(tmp_path / "later"),
                 *clip_cli]) == 0
    assert opened == ["c0.mp4"], "a cache hit is decoded once, for its features"
    assert np.load(features_path(tmp_path / "later", "c0.mp4"))["features"].shape == (4, 512)


def test_scores_survive_an_extractor_that_cannot_load(settings_factory, tmp_path, caplog):
    from ml_backend.scoring import DifficultyScorer

    settings = settings_factory(offline=True, device="cpu", use_cache=False)  # clip + 'openai': not here offline
    scorer = DifficultyScorer.from_settings(settings)
    scorer.with_features = True
    try:
        result = scorer.score_one(_clip_video(tmp_path / "v.mp4", count=4))
    finally:
        scorer.close()
    assert result.ok and result.features is None
    assert "MDSVQA_FEATURES_CLIP_CHECKPOINT" in caplog.text


# -- weights: what is missing, and how to provide it ------------------------------------------------

def test_missing_clip_weights_offline_name_them():
    from ml_backend.features.frames import load_frame_encoder

    with pytest.raises(FeatureModelError) as error:
        load_frame_encoder(Settings(offline=True, device="cpu"))
    message = str(error.value)
    for needed in ("RN101", "'openai'", "offline", "MDSVQA_FEATURES_CLIP_CHECKPOINT", "RN101.pt",
                   "timm/resnet101_clip.openai"):
        assert needed in message, needed
    with pytest.raises(FeatureModelError, match=r"MDSVQA_FEATURES_CLIP_CHECKPOINT=/no/RN101\.pt: no such file"):
        load_frame_encoder(Settings(offline=True, device="cpu",
                                    features=FeatureSettings(clip_checkpoint="/no/RN101.pt")))


def test_clip_checkpoint_file_is_loaded(tmp_path):
    """A local weights file goes through the same loader (a small ResNet CLIP config, to stay fast)."""
    import open_clip

    from ml_backend.features.clip import ClipFrameEncoder

    small_clip_model(tmp_path, "mdsvqa-test-rn")
    torch.manual_seed(0)
    original = open_clip.create_model("mdsvqa-test-rn", pretrained=None).eval()
    weights = tmp_path / "weights.bin"
    torch.save(original.state_dict(), weights)
    encoder = ClipFrameEncoder("mdsvqa-test-rn", "test-weights", checkpoint=weights)
    assert encoder.identity == "clip:mdsvqa-test-rn:test-weights" and encoder.image_size == 64
    frames = moving_pattern(3, 48, 80)
    inputs = encoder.preprocess(frames)
    with torch.inference_mode():
        expected = original.encode_image(inputs["pixel_values"], normalize=True).numpy()
    np.testing.assert_allclose(encoder.encode(inputs), expected, atol=1e-5)
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(FeatureModelError, match="cannot load CLIP weights"):
        ClipFrameEncoder("mdsvqa-test-rn", "test-weights", checkpoint=weights)


@pytest.fixture(scope="module")
def tiny_siglip(tmp_path_factory):
    """A tiny random SigLIP (the giant-opt checkpoint's model type) with its image processor, on disk."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    folder = tmp_path_factory.mktemp("tiny-siglip")
    small = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    config = SiglipConfig(text_config=dict(vocab_size=64, max_position_embeddings=16, **small),
                          vision_config=dict(image_size=32, patch_size=8, **small))
    SiglipModel(config).save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def test_siglip2_features_are_get_image_features_not_normalised(tiny_siglip, tmp_path):
    from PIL import Image
    from transformers import AutoModel
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from ml_backend.features.frames import load_frame_encoder

    settings = Settings(device="cpu", offline=True, features=FeatureSettings(
        extractor="siglip2", siglip2_model="test/tiny-siglip", siglip2_path=tiny_siglip, batch_size=2))
    encoder = load_frame_encoder(settings)
    assert load_frame_encoder(settings) is encoder, "loaded once per process"
    assert encoder.identity == "siglip2:test/tiny-siglip"
    path = _clip_video(tmp_path / "v.mp4")
    _decoded, features = embed_video_frames(path, settings)
    assert features.shape == (FRAMES, 16)
    norms = np.linalg.norm(features, axis=1)
    assert np.abs(norms - 1).max() > 0.1, "SigLIP2 features stay as the model gives them"
    # the PIL processor: transformers 4.x's (the reference's) SiglipImageProcessor; 5.x defaults to torchvision's
    processor = SiglipImageProcessorPil.from_pretrained(tiny_siglip)
    model = AutoModel.from_pretrained(tiny_siglip).eval()
    inputs = processor(images=[Image.fromarray(f) for f in _decoded_frames(path)], return_tensors="pt")
    with torch.inference_mode():
        expected = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output.numpy()
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_missing_siglip2_weights_name_them(tmp_path):
    from ml_backend.features.frames import load_frame_encoder

    with pytest.raises(FeatureModelError) as error:
        load_frame_encoder(Settings(device="cpu", offline=True, features=FeatureSettings(extractor="siglip2")))
    assert "google/siglip2-giant-opt-patch16-384" in str(error.value)
    assert "MDSVQA_FEATURES_SIGLIP2_PATH" in str(error.value)
    with pytest.raises(FeatureModelError, match=f"MDSVQA_FEATURES_SIGLIP2_PATH={tmp_path}: no model folder"):
        load_frame_encoder(Settings(device="cpu", features=FeatureSettings(extractor="siglip2",
                                                                           siglip2_path=tmp_path)))


# -- the backend's feature keeping --------------------------------------------------------------------

def test_features_for_tasks_scored_earlier_come_from_one_decode(random_clip, tmp_path, monkeypatch):
    from ml_backend.features import frames as frames_module
    from ml_backend.labelstudio.media import LocalMedia
    from ml_backend.prioritize.features import FeatureRequest, FeatureSource, FeatureStore, feature_computer

    video = _clip_video(tmp_path / "v.mp4", count=4)

    class Resolver:
        def fetch(self, ref, *, task_id, connection):
            return LocalMedia(video, temporary=False, size=video.stat().st_size)

    settings = Settings(device="cpu", features=FeatureSettings(clip_pretrained="random"))
    monkeypatch.setattr(frames_module, "load_frame_encoder", lambda _settings: random_clip)
    opened = _count_decodes(monkeypatch)
    store = FeatureStore.for_settings(tmp_path / "features", settings)
    assert store.directory.name.startswith("clip-") and store.extractor == "clip:RN101:random"
    source = FeatureSource(store, feature_computer(settings, lambda: None, Resolver(), None))
    loaded = source.features([FeatureRequest("http://x/v.mp4", "http://x/v.mp4", 1)])
    assert not loaded.problems and loaded.frames["http://x/v.mp4"].shape == (4, 512)
    assert opened == ["v.mp4"] and source.computed == 1
    with np.load(store.path("http://x/v.mp4")) as stored:
        assert str(stored["extractor"]) == "clip:RN101:random"
