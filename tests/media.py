"""Test media made at run time from the shared videos: derived, broken and edge-case files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
VIDEOS = SHARED / "videos"
GOLDEN = SHARED / "golden" / "qwen2_5_vl_video_patches.npz"
REFERENCE_PROMPTS_FILE = SHARED / "golden" / "reference_prompts.json"
CHAT_TEMPLATE_GOLDEN = SHARED / "golden" / "qwen2_5_vl_chat_template.json"


def reference_prompts() -> dict[str, str]:
    """The prompt texts the reference renders (transformers 4.49), from shared/golden."""
    data = json.loads(REFERENCE_PROMPTS_FILE.read_text())
    return {task: data[task] for task in ("difficulty", "quality")}
SHARED_VIDEO_NAMES = ["bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4"]


def encode_video(path: Path, frames: np.ndarray | list, fps: int = 25, codec: str = "libx264",
                 options: dict[str, str] | None = None) -> Path:
    """Write RGB uint8 frames (T, H, W, 3) as an H.264 mp4 (``options``: the encoder's, e.g. B-frames, GOP)."""
    import av

    frames = list(frames)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.height, stream.width = frames[0].shape[:2] if frames else (48, 64)
        stream.pix_fmt = "yuv420p"
        if not frames:
            container.start_encoding()
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def moving_pattern(count: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Frames with structure and motion (a codec-friendly, non-constant test signal)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = rng.integers(0, 255, size=3)
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    for t in range(count):
        for c in range(3):
            frames[t, :, :, c] = (base[c] + (xx + 3 * t) * (c + 1) // 4 + yy // 2) % 256
    return frames


def faststart_copy(source: Path, target: Path) -> Path:
    """Remux with the index first, so that truncating it leaves a parseable but incomplete file."""
    import av

    with av.open(str(source)) as inp, av.open(str(target), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        for packet in inp.demux(inp.streams.video[0]):
            if packet.dts is None:
                continue
            packet.stream = stream
            out.mux(packet)
    return target


def make_bad_videos(folder: Path) -> dict[str, Path]:
    """Every kind of bad input the scorer must survive, keyed by what is wrong with it."""
    folder.mkdir(parents=True, exist_ok=True)
    bikes = VIDEOS / "bikes.mp4"
    data = bikes.read_bytes()
    bad = {
        "empty": folder / "empty.mp4",
        "text": folder / "notes.mp4",
        "truncated_index": folder / "truncated_index.mp4",
        "truncated_data": folder / "truncated_data.mp4",
    }
    bad["empty"].write_bytes(b"")
    bad["text"].write_text("this is a text file, not a video\n")
    bad["truncated_index"].write_bytes(data[: len(data) // 2])
    full = faststart_copy(bikes, folder / "faststart.tmp")
    full_bytes = full.read_bytes()
    bad["truncated_data"].write_bytes(full_bytes[: len(full_bytes) // 3])
    full.unlink()
    bad["zero_frames"] = encode_video(folder / "zero_frames.mp4", [])
    bad["one_frame"] = encode_video(folder / "one_frame.mp4", moving_pattern(1, 48, 64))
    return bad


def small_clip_model(folder: Path, name: str) -> Path:
    """Register a small ResNet CLIP config with open_clip (fast to build; 64 px input); its config file."""
    import open_clip

    config = folder / f"{name}.json"
    config.write_text(json.dumps({"embed_dim": 16, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1],
                                                                  "width": 8, "patch_size": None},
                                  "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 16, "heads": 2,
                                               "layers": 1}}))
    open_clip.add_model_config(config)
    return config
