"""Our model input against the reference's own packages (goldens of scripts/reference_parity.sh).

The goldens were made by transformers 4.49.0 + qwen-vl-utils 0.0.10 + decord 0.6.0 on torch
2.6.0 in their own virtualenv, on the shared videos and on clips generated at run time by
``scripts/reference_parity/clips.py`` (regenerated here with the same code: a clip whose
bytes differ from the golden's is an error, not a skip). Everything is compared exactly;
the only allowance is ROUNDING_ALLOWANCE on resized frames (torch versions round the uint8
bicubic resize differently in rare ties), and then the patches must equal the reference's
patches of our frames.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from ml_backend.cli import main
from ml_backend.model.loading import PatchLayout
from ml_backend.scoring.inputs import model_input
from ml_backend.settings import VideoSettings
from tests.media import REPO, SHARED_VIDEO_NAMES, VIDEOS, reference_prompts

GOLDENS = REPO / "tests" / "data" / "reference_inputs.json"
GOLDEN_ARRAYS = REPO / "tests" / "data" / "reference_inputs.npz"
# Measured (scripts/reference_parity/README.md): on downscales (bigbuckbunny 1280x720 and the
# 4k clip to 1008x560) torch 2.14.1's uint8 bicubic resize differs from torch 2.6.0's by one
# level on 0.0018% and 0.0011% of the values; every other case is bit-identical.
ROUNDING_ALLOWANCE = 5e-5
ONE_LEVEL = 1 / 255 / min(PatchLayout().std) + 1e-6  # one uint8 level after normalisation


@lru_cache(maxsize=1)
def goldens() -> dict:
    return json.loads(GOLDENS.read_text())


@lru_cache(maxsize=1)
def _clips():
    spec = importlib.util.spec_from_file_location("reference_clips", REPO / "scripts" / "reference_parity" / "clips.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _sha(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def _sampled(array: np.ndarray, sample: dict) -> np.ndarray:
    return array.reshape(-1)[np.asarray(sample["indices"], dtype=np.int64)]


def assert_matches_reference(name: str, got: dict[str, np.ndarray]) -> None:
    case = goldens()["cases"][name]
    assert got["frame_indices"].tolist() == case["frame_indices"], name
    frames = got["frames"]
    assert list(frames.shape) == case["frames"]["shape"], name
    assert got["video_grid_thw"].tolist() == case["video_grid_thw"]
    assert got["second_per_grid_ts"].tolist() == case["second_per_grid_ts"]
    assert int(got["num_video_tokens"]) == case["num_video_tokens"]
    pixels = got["pixel_values_videos"]
    assert list(pixels.shape) == case["pixel_values_videos"]["shape"] and pixels.dtype == np.float32

    if _sha(frames) == case["frames"]["sha256"]:
        assert _sha(pixels) == case["pixel_values_videos"]["sha256"], f"{name}: same frames, other patches"
        return
    # Not bit-identical: only a rounding difference of a real downscale is tolerated.
    assert name in DOWNSCALED, f"{name}: frames differ from the reference's"
    sampled = _sampled(pixels, case["pixel_values_videos"]["sampled"])
    off = np.abs(sampled - np.asarray(case["pixel_values_videos"]["sampled"]["values"], dtype=np.float32))
    assert off.max() <= ONE_LEVEL and (off > 0).sum() <= 2, name
    per_frame = [_sha(frame) for frame in frames]
    off_frames = [i for i, (a, b) in enumerate(zip(per_frame, case["frames"]["per_frame_sha256"])) if a != b]
    sums = np.asarray(frames.reshape(len(frames), -1).sum(axis=1, dtype=np.int64))
    values = frames.size / len(frames)
    for i in off_frames:  # a sum moves by at most the number of values that changed by one level
        assert abs(int(sums[i]) - case["frames"]["per_frame_sum"][i]) <= ROUNDING_ALLOWANCE * values, (name, i)
    stored = golden_frames(name)
    if stored is not None:
        diff = np.abs(frames.astype(np.int16) - stored.astype(np.int16))
        assert diff.max() <= 1 and (diff > 0).mean() <= ROUNDING_ALLOWANCE, name


DOWNSCALED = {"bigbuckbunny", "wide4k"}  # the cases whose frames are made smaller


def golden_frames(name: str) -> np.ndarray | None:
    with np.load(GOLDEN_ARRAYS) as archive:
        key = f"{name}__frames"
        return archive[key] if key in archive.files else None


def test_goldens_were_made_by_the_reference_stack():
    versions = goldens()["versions"]
    assert versions["transformers"] == "4.49.0" and versions["qwen_vl_utils"] == "0.0.10"
    assert versions["torch"].startswith("2.6.0") and versions["decord"] == "0.6.0"
    prompts = goldens()["prompts"]
    assert {task: prompts[task] for task in ("difficulty", "quality")} == reference_prompts()


def test_mdsvqa_inputs_on_the_shared_videos_match_the_reference(tiny_model, tmp_path):
    out = tmp_path / "inputs"
    paths = [VIDEOS / name for name in SHARED_VIDEO_NAMES]
    assert main(["inputs", *map(str, paths), "--out", str(out), "--base", str(tiny_model[0])]) == 0
    for path in paths:
        with np.load(out / f"{path.name}.npz") as archive:
            assert set(archive.files) == {"prompt_text", "frames", "frame_indices", "pixel_values_videos",
                                          "video_grid_thw", "second_per_grid_ts", "num_video_tokens"}
            got = {key: archive[key] for key in archive.files}
        case = goldens()["cases"][path.stem]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == case["file_sha256"]
        assert str(got["prompt_text"]) == reference_prompts()["difficulty"]
        assert_matches_reference(path.stem, got)


def test_quality_prompt_is_the_reference_text(tiny_model, tmp_path):
    out = tmp_path / "inputs"
    path = VIDEOS / "carphone_distorted.mp4"
    assert main(["inputs", str(path), "--out", str(out), "--base", str(tiny_model[0]), "--prompt", "quality"]) == 0
    with np.load(out / f"{path.name}.npz") as archive:
        assert str(archive["prompt_text"]) == reference_prompts()["quality"]


GENERATED = [name for name, case in json.loads(GOLDENS.read_text())["cases"].items() if case["source"] == "generated"]


@pytest.fixture(scope="module")
def generated_clips(tmp_path_factory) -> dict[str, Path]:
    """The clips, encoded in a fresh interpreter: once decord2 is loaded, its own FFmpeg build
    serves PyAV's encoder too and the bytes change, so they are not encoded in this process."""
    folder = tmp_path_factory.mktemp("reference-clips")
    script = REPO / "scripts" / "reference_parity" / "clips.py"
    subprocess.run([sys.executable, str(script), str(folder), "1"], check=True, capture_output=True, timeout=600)
    return {name: folder / f"{goldens()['cases'][name]['generator']}.mp4" for name in GENERATED}


@pytest.mark.parametrize("name", GENERATED)
def test_generated_clips_match_the_reference(generated_clips, name):
    path = generated_clips[name]
    case = goldens()["cases"][name]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == case["file_sha256"], (
        f"{name}: this machine's PyAV encodes the clip differently from the one the goldens were made "
        "with; run scripts/reference_parity.sh to regenerate them")
    assert_matches_reference(name, model_input(path, VideoSettings(), PatchLayout()))


def test_a_clip_shows_the_sampled_frame_indices_the_reference_used(generated_clips):
    """The reference's frame choice, checked on the pixels: the clips draw each frame's own index."""
    clips = _clips()
    name = "fps2997"
    got = model_input(generated_clips[name], VideoSettings(), PatchLayout())
    assert got["frame_indices"].tolist() == goldens()["cases"][name]["frame_indices"]
    if hasattr(clips, "read_marker"):
        assert [clips.read_marker(frame) for frame in got["frames"]] == got["frame_indices"].tolist()
