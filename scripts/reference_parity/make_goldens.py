"""Write the reference parity goldens under tests/data/.

Run ONLY with the reference virtualenv's python (``scripts/reference_parity.sh`` does
that): torch 2.6.0, torchvision 0.21.0, transformers 4.49.0, qwen-vl-utils 0.0.10 and
decord 0.6.0, the MDS-VQA reference's pins. Never imports the project (``ml_backend``).

Inputs (``reference_inputs.json`` + ``.npz``): every shared video and every synthetic
clip of ``clips.py`` goes through the reference inference preprocessing exactly:
``qwen_vl_utils.process_vision_info([messages])`` with the video-then-text user message,
then ``Qwen2_5_VLProcessor(text=[prompt], images=None, videos=..., padding=True,
return_tensors="pt")`` on the prompt rendered by ``apply_chat_template(...,
add_generation_prompt=True, add_vision_id=True)``. The processor is built offline:
``Qwen2VLImageProcessor()`` with default settings, a tiny byte-level BPE tokenizer that
carries Qwen's special tokens, and the official Qwen2.5-VL chat template. The video
readers are observed (not altered) to record what qwen-vl-utils really did. Each case
also records the M-RoPE positions transformers 4.49's ``get_rope_index`` gives its
prompt (``rope``), and ``rope_layouts`` adds synthetic layouts (long videos, left padding,
other seconds per grid, two videos) that the shared videos do not reach.

Evaluation (``reference_evaluation.json``): the reference's own ``fit_curve``, imported
at run time from ``--reference-src`` (a checkout of the MDS-VQA repository: its
``src/utils.py``), on fixed synthetic prediction/MOS sets, plus the NaN/constant
fallback and SRCC/PLCC on the fitted values.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))

import clips  # noqa: E402  (our own generator, next to this file)

SHARED_VIDEOS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4", "carphone_pristine.mp4")
ENV_OVERRIDES = ("VIDEO_MAX_PIXELS", "FORCE_QWENVL_VIDEO_READER")
"""qwen-vl-utils reads these at import time; the goldens need its defaults."""

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
VIDEO_PAD = "<|video_pad|>"

# Prompt text (SPEC section 2).
_PREFIX = "You are doing the video quality assessment task. Here is the question: "
QUESTIONS = {
    "difficulty": _PREFIX
    + "Assess how difficult it is to evaluate this video's quality for video quality assessment. "
    "The difficulty rating should be a float between 1 and 5, rounded to two decimal places, "
    "with 1 representing very easy to evaluate and 5 representing very difficult to evaluate."
    " Please only output the final answer with only one score in <answer> </answer> tags.",
    "quality": _PREFIX
    + "What is your overall rating on the quality of this video? The rating should be a float "
    "between 1 and 5, rounded to two decimal places, with 1 representing very poor quality and 5 "
    "representing excellent quality."
    " First output the thinking process in <think> </think> tags and then output the final answer "
    "with only one score in <answer> </answer> tags.",
}
CASE_PROMPT = "difficulty"
"""Prompt used for the per-case processor call (the token count does not depend on it)."""

SAMPLE_SIZE = 4096
NPZ_RAW_LIMIT = 1_500_000
"""Arrays up to this many raw bytes are stored whole in the npz."""


# --------------------------------------------------------------------------- helpers


def sha256_file(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_array(array: np.ndarray) -> str:
    """SHA-256 hex digest of an array's C-contiguous bytes."""
    return hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()


def float32_list(values: np.ndarray) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32."""
    out = [float(str(v)) for v in values.astype(np.float32)]
    back = np.asarray(out, dtype=np.float64).astype(np.float32)
    bad = np.flatnonzero(back != values.astype(np.float32))
    for i in bad:  # double rounding never bit us so far; keep the exact double then
        out[i] = float(values[i])
    return out


def dump_json(value: Any, indent: int = 0) -> str:
    """JSON with one key per line for objects and every list on a single line."""
    if isinstance(value, dict) and value:
        pad = " " * (indent + 1)
        items = [f"{pad}{json.dumps(key)}: {dump_json(item, indent + 1)}" for key, item in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    return json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)


def versions() -> dict[str, str]:
    """Versions of everything that shapes the goldens."""
    import av
    import decord
    import scipy
    import tokenizers
    import torch
    import torchvision
    import transformers

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "qwen_vl_utils": importlib.metadata.version("qwen-vl-utils"),
        "decord": decord.__version__,
        "av": av.__version__,
        "ffmpeg_libavcodec_pyav": ".".join(map(str, av.library_versions["libavcodec"])),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }


_CLOCK = re.compile(r"\[\d\d:\d\d:\d\d\] ")


def stable_text(text: str, path: Path | None = None) -> str:
    """Message text without decord's wall-clock stamps or the clip's directory."""
    text = _CLOCK.sub("", text).strip()
    return text.replace(str(path), path.name) if path is not None else text


def captured_warnings(caught: list[warnings.WarningMessage], path: Path | None = None) -> list[str]:
    """Unique warning texts as ``Category: message``, made stable with ``stable_text``."""
    texts: list[str] = []
    for item in caught:
        text = stable_text(f"{item.category.__name__}: {item.message}", path)
        if text not in texts:
            texts.append(text)
    return texts


# ------------------------------------------------------------------------ processor


def build_processor(chat_template: str) -> Any:
    """Qwen2.5-VL processor built offline: default image processor, tiny BPE tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2_5_VLProcessor, Qwen2TokenizerFast, Qwen2VLImageProcessor

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator([*QUESTIONS.values(), "You are a helpful assistant.", "system user assistant"], trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|endoftext|>", "<|im_end|>")],
    )
    tokenizer.padding_side = "left"  # as the reference inference sets it
    return Qwen2_5_VLProcessor(
        image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer, chat_template=chat_template
    )


def messages_for(video: str, prompt: str) -> list[dict[str, Any]]:
    """The reference's single user message: the video first, then the question."""
    return [{"role": "user", "content": [{"type": "video", "video": video}, {"type": "text", "text": prompt}]}]


def render(processor: Any, messages: list[dict[str, Any]]) -> str:
    """Prompt text exactly as the reference renders it."""
    return processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, add_vision_id=True)


def render_prompts(processor: Any, golden_path: Path) -> dict[str, Any]:
    """Rendered difficulty/quality prompts; fails unless they equal the shared golden."""
    golden = json.loads(golden_path.read_text())
    rendered = {name: render(processor, messages_for("video.mp4", text)) for name, text in QUESTIONS.items()}
    for name, text in rendered.items():
        if text != golden[name]:
            raise SystemExit(f"rendered {name} prompt differs from {golden_path}:\n{text!r}\n!=\n{golden[name]!r}")
    return {**rendered, "equal_to_shared_golden": True}


# ---------------------------------------------------------------- reader observation


@dataclass
class ReaderLog:
    """What qwen-vl-utils' video readers did for one video."""

    decord_len: int | None = None
    decord_fps: float | None = None
    decord_indices: list[int] | None = None
    decord_error: str | None = None
    nframes_calls: list[tuple[str, int, float, int]] = field(default_factory=list)
    torchvision_used: bool = False
    messages: list[str] = field(default_factory=list)


class _LogCollector(logging.Handler):
    """Collects qwen-vl-utils log records of level WARNING and above."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.levelname}: {record.getMessage()}")


@contextmanager
def observe_readers() -> Iterator[ReaderLog]:
    """Record decord's frame count, fps and batch indices, each ``smart_nframes`` call and
    whether the torchvision fallback ran, without changing any result."""
    import decord
    from qwen_vl_utils import vision_process as vp

    log = ReaderLog()
    real_reader = decord.VideoReader
    real_nframes = vp.smart_nframes
    real_torchvision = vp.VIDEO_READER_BACKENDS["torchvision"]
    real_decord = vp.VIDEO_READER_BACKENDS["decord"]
    backend: list[str] = ["?"]

    class RecordingVideoReader(real_reader):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            log.decord_len = len(self)
            log.decord_fps = float(self.get_avg_fps())

        def get_batch(self, indices: Any) -> Any:
            log.decord_indices = [int(i) for i in indices]
            return super().get_batch(indices)

    def nframes(ele: dict, total_frames: int, video_fps: float) -> int:
        result = real_nframes(ele, total_frames=total_frames, video_fps=video_fps)
        log.nframes_calls.append((backend[0], int(total_frames), float(video_fps), int(result)))
        return result

    def via_decord(ele: dict) -> Any:
        backend[0] = "decord"
        try:
            return real_decord(ele)
        except Exception as exc:
            log.decord_error = f"{type(exc).__name__}: {exc}"
            raise

    def via_torchvision(ele: dict) -> Any:
        backend[0] = "torchvision"
        log.torchvision_used = True
        return real_torchvision(ele)

    collector = _LogCollector()
    vp_logger = logging.getLogger(vp.__name__)
    vp_logger.addHandler(collector)
    decord.VideoReader = RecordingVideoReader
    vp.smart_nframes = nframes
    vp.VIDEO_READER_BACKENDS["decord"] = via_decord
    vp.VIDEO_READER_BACKENDS["torchvision"] = via_torchvision
    try:
        yield log
    finally:
        decord.VideoReader = real_reader
        vp.smart_nframes = real_nframes
        vp.VIDEO_READER_BACKENDS["decord"] = real_decord
        vp.VIDEO_READER_BACKENDS["torchvision"] = real_torchvision
        vp_logger.removeHandler(collector)
        log.messages = collector.records


# ---------------------------------------------------------------------------- cases


def sampled(values: np.ndarray) -> dict[str, Any]:
    """Values at fixed flat indices: ``np.sort(default_rng(0).choice(size, 4096,
    replace=False))``, or every index when the array has at most 4096 values."""
    flat = values.reshape(-1)
    if flat.size <= SAMPLE_SIZE:
        indices = np.arange(flat.size)
    else:
        indices = np.sort(np.random.default_rng(0).choice(flat.size, SAMPLE_SIZE, replace=False))
    return {"indices": indices.tolist(), "values": float32_list(flat[indices])}


# Qwen2.5-VL-7B's vision settings that get_rope_index reads (its config.json)
SPATIAL_MERGE_SIZE = 2
TOKENS_PER_SECOND = 2


def rope_owner(processor: Any) -> Any:
    """What 4.49's ``get_rope_index`` reads from ``self``: the token ids and two vision settings."""
    from types import SimpleNamespace

    ids = processor.tokenizer.convert_tokens_to_ids
    vision = SimpleNamespace(spatial_merge_size=SPATIAL_MERGE_SIZE, tokens_per_second=TOKENS_PER_SECOND)
    return SimpleNamespace(config=SimpleNamespace(
        vision_config=vision, image_token_id=ids("<|image_pad|>"), video_token_id=ids(VIDEO_PAD),
        vision_start_token_id=ids("<|vision_start|>")))


def token_runs(input_ids: Any, mask: Any, video_pad_id: int) -> list[list[int]]:
    """One row's real tokens as runs of [modality, count] (0 text, 2 video), as transformers 5 types them."""
    kinds = [2 if int(i) == video_pad_id else 0 for i, m in zip(input_ids.tolist(), mask.tolist()) if m]
    runs: list[list[int]] = []
    for kind in kinds:
        if runs and runs[-1][0] == kind:
            runs[-1][1] += 1
        else:
            runs.append([kind, 1])
    return runs


def rope_record(processor: Any, input_ids: Any, attention_mask: Any, grids: Any, seconds: Any) -> dict[str, Any]:
    """transformers 4.49's M-RoPE positions of one batch: hash of the whole (3, B, L) int64 tensor and its ends."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    video_pad_id = processor.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    positions, deltas = Qwen2_5_VLForConditionalGeneration.get_rope_index(
        rope_owner(processor), input_ids, image_grid_thw=None, video_grid_thw=grids,
        second_per_grid_ts=seconds, attention_mask=attention_mask)
    as_int64 = positions.numpy().astype(np.int64)
    return {
        "token_types": [token_runs(r, m, video_pad_id) for r, m in zip(input_ids, attention_mask)],
        "video_grid_thw": grids.tolist(),
        "second_per_grid_ts": [float(x) for x in seconds],
        "spatial_merge_size": SPATIAL_MERGE_SIZE,
        "tokens_per_second": TOKENS_PER_SECOND,
        "positions_sha256": sha256_array(as_int64),
        "last": as_int64[:, :, -1].tolist(),
        "rope_deltas": [int(d) for d in deltas[:, 0]],
    }


# Synthetic prompts: [text before, (grid, seconds per grid) per video with text after it] per row.
ROPE_LAYOUTS: dict[str, list[list[Any]]] = {
    "long_video": [[3, ([30, 8, 10], 1.0), 2]],
    "wide_video": [[4, ([3, 12, 40], 1.0), 6]],
    "left_padding": [[5, ([4, 8, 12], 1.0), 3], [2, ([12, 8, 10], 1.0), 4]],
    "half_second_grids": [[2, ([9, 4, 6], 0.5), 3]],
    "fps_3": [[2, ([7, 4, 4], 2 / 3), 3]],
    "two_videos": [[2, ([3, 4, 4], 1.0), 3, ([6, 6, 8], 1.0), 2]],
}


def rope_layouts(processor: Any) -> dict[str, Any]:
    """4.49's positions for ROPE_LAYOUTS: a plain text token, a <|vision_start|> before each video, its pads."""
    import torch

    tokens = processor.tokenizer.convert_tokens_to_ids
    start, pad = tokens("<|vision_start|>"), tokens(VIDEO_PAD)
    (text,) = processor.tokenizer("video", add_special_tokens=False)["input_ids"][:1]
    out = {}
    for name, rows in ROPE_LAYOUTS.items():
        id_rows, grids, seconds = [], [], []
        for row in rows:
            ids = [text] * row[0]
            for (grid, spg), after in zip(row[1::2], row[2::2]):
                count = grid[0] * grid[1] * grid[2] // SPATIAL_MERGE_SIZE**2
                ids += [start] + [pad] * count + [text] * after
                grids.append(grid)
                seconds.append(spg)
            id_rows.append(ids)
        width = max(len(r) for r in id_rows)
        input_ids = torch.tensor([[0] * (width - len(r)) + r for r in id_rows])
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in id_rows])
        # float32, as the processor's BatchFeature hands second_per_grid_ts to the model
        out[name] = rope_record(processor, input_ids, mask, torch.tensor(grids),
                                torch.tensor(seconds, dtype=torch.float32))
    return out


def run_case(processor: Any, path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """One video through the reference preprocessing; returns its record and npz arrays."""
    import torch
    from qwen_vl_utils import process_vision_info

    messages = messages_for(str(path), QUESTIONS[CASE_PROMPT])
    text = render(processor, messages)
    with warnings.catch_warnings(record=True) as caught, observe_readers() as log:
        warnings.simplefilter("always")
        image_inputs, video_inputs = process_vision_info([messages])
        inputs = processor(text=[text], images=image_inputs, videos=video_inputs, padding=True, return_tensors="pt")
    (video,) = video_inputs
    if log.decord_len is None or not log.nframes_calls:
        raise RuntimeError(f"{path.name}: qwen-vl-utils did not go through decord")

    reader = "torchvision" if log.torchvision_used else "decord"
    _, reader_total, reader_fps, nframes = log.nframes_calls[-1]
    if reader == "decord":
        indices = log.decord_indices or []
    else:  # the torchvision reader's own index computation (not observable from outside)
        indices = torch.linspace(0, reader_total - 1, nframes).round().long().tolist()

    if not torch.equal(video, video.round()) or video.min() < 0 or video.max() > 255:
        raise RuntimeError(f"{path.name}: processor input is not whole numbers 0..255")
    frames = video.permute(0, 2, 3, 1).to(torch.uint8).contiguous().numpy()
    pixel_values = inputs["pixel_values_videos"].numpy()
    grid = inputs["video_grid_thw"].tolist()
    video_pad_id = processor.tokenizer.convert_tokens_to_ids(VIDEO_PAD)
    num_video_tokens = int((inputs["input_ids"] == video_pad_id).sum())
    if num_video_tokens != int(np.prod(grid[0])) // processor.image_processor.merge_size**2:
        raise RuntimeError(f"{path.name}: {num_video_tokens} video tokens for grid {grid}")

    record: dict[str, Any] = {
        "file": path.name,
        "file_sha256": sha256_file(path),
        "total_frames": log.decord_len,
        "video_fps": log.decord_fps,
        "reader": reader,
        "reader_error": None if log.decord_error is None else stable_text(log.decord_error, path),
        "reader_total_frames": reader_total,
        "reader_video_fps": reader_fps,
        "nframes": nframes,
        "frame_indices": [int(i) for i in indices],
        "resized_height": int(frames.shape[1]),
        "resized_width": int(frames.shape[2]),
        "frames": {
            "shape": list(frames.shape),
            "dtype": "uint8",
            "sha256": sha256_array(frames),
            "sum": int(frames.sum(dtype=np.int64)),
            "per_frame_sha256": [sha256_array(f) for f in frames],
            "per_frame_sum": [int(f.sum(dtype=np.int64)) for f in frames],
        },
        "pixel_values_videos": {
            "shape": list(pixel_values.shape),
            "dtype": str(pixel_values.dtype),
            "sha256": sha256_array(pixel_values),
            "sum": float(pixel_values.sum(dtype=np.float64)),
            "sampled": sampled(pixel_values),
        },
        "video_grid_thw": grid,
        "second_per_grid_ts": [float(s) for s in inputs["second_per_grid_ts"]],
        "num_video_tokens": num_video_tokens,
        "input_ids_length": int(inputs["input_ids"].shape[1]),
        "rope": rope_record(processor, inputs["input_ids"], inputs["attention_mask"], inputs["video_grid_thw"],
                            inputs["second_per_grid_ts"]),
        "log": [stable_text(m, path) for m in log.messages],
        "warnings": captured_warnings(caught, path),
    }
    arrays: dict[str, np.ndarray] = {}
    if frames.nbytes <= NPZ_RAW_LIMIT:
        arrays["frames"] = frames
    if pixel_values.nbytes <= NPZ_RAW_LIMIT:
        arrays["pixel_values_videos"] = pixel_values
    return record, arrays


def video_cases(shared_videos: Path, clips_dir: Path, only: set[str] | None) -> Iterator[tuple[str, dict, Path]]:
    """(case name, fixed record fields, path) for every shared video and generated clip."""
    for name in SHARED_VIDEOS:
        case = Path(name).stem
        if only is None or case in only:
            yield case, {"source": "shared"}, shared_videos / name
    for case, make in clips.CASES.items():
        if only is None or case in only:
            yield case, {"source": "generated", "generator": make.__name__}, make(clips_dir)


def qwen_settings() -> dict[str, Any]:
    """qwen-vl-utils' module settings in force (defaults: no env overrides)."""
    from qwen_vl_utils import vision_process as vp

    names = ("IMAGE_FACTOR", "VIDEO_MIN_PIXELS", "VIDEO_MAX_PIXELS", "VIDEO_TOTAL_PIXELS", "FRAME_FACTOR",
             "FPS", "FPS_MIN_FRAMES", "FPS_MAX_FRAMES")
    return {"video_reader_backend": vp.get_video_reader_backend(), **{n: getattr(vp, n) for n in names}}


def image_processor_settings(processor: Any) -> dict[str, Any]:
    """The image processor's defaults that shape ``pixel_values_videos``."""
    ip = processor.image_processor
    names = ("min_pixels", "max_pixels", "patch_size", "temporal_patch_size", "merge_size",
             "image_mean", "image_std", "rescale_factor", "do_resize", "resample")
    return {"class": type(ip).__name__, **{n: _plain(getattr(ip, n)) for n in names}}


def _plain(value: Any) -> Any:
    """JSON-friendly form of a processor attribute."""
    if isinstance(value, (list, tuple)):
        return [float(v) for v in value]
    if hasattr(value, "name") and hasattr(value, "value"):  # enums such as PIL resampling
        return int(value.value)
    return value


def write_inputs(args: argparse.Namespace, clips_dir: Path) -> None:
    """Run every video case and write reference_inputs.json / .npz."""
    start = time.perf_counter()
    template = json.loads((args.shared / "golden" / "qwen2_5_vl_chat_template.json").read_text())["chat_template"]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        processor = build_processor(template)
    prompts = render_prompts(processor, args.shared / "golden" / "reference_prompts.json")
    settings = qwen_settings()
    if settings["video_reader_backend"] != "decord":
        raise SystemExit(f"qwen-vl-utils would read videos with {settings['video_reader_backend']}, not decord")

    only = set(args.cases) if args.cases else None
    cases: dict[str, Any] = {}
    arrays: dict[str, np.ndarray] = {}
    for case, fixed, path in video_cases(args.shared / "videos", clips_dir, only):
        case_start = time.perf_counter()
        record, case_arrays = run_case(processor, path)
        cases[case] = {**fixed, **record}
        arrays.update({f"{case}__{key}": value for key, value in case_arrays.items()})
        print(
            f"  {case:22s} {record['reader']:11s} total={record['total_frames']:5d} "
            f"nframes={record['nframes']:3d} {record['resized_height']}x{record['resized_width']} "
            f"grid={record['video_grid_thw'][0]} tokens={record['num_video_tokens']} "
            f"({time.perf_counter() - case_start:.1f} s)",
            flush=True,
        )

    out = {
        "description": "MDS-VQA reference video preprocessing (qwen-vl-utils process_vision_info + "
        "transformers Qwen2_5_VLProcessor) on the shared videos and clips.py clips; written by "
        "scripts/reference_parity/make_goldens.py",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runtime_s": None,
        "versions": versions(),
        "qwen_vl_utils": settings,
        "image_processor": image_processor_settings(processor),
        "tokenizer": {
            "kind": "tiny in-memory byte-level BPE (Qwen2TokenizerFast) with Qwen's special tokens",
            "video_pad_id": processor.tokenizer.convert_tokens_to_ids(VIDEO_PAD),
        },
        "processor_warnings": captured_warnings(caught),
        "prompts": prompts,
        "case_prompt": CASE_PROMPT,
        "sampling": f"np.sort(np.random.default_rng(0).choice(size, {SAMPLE_SIZE}, replace=False)) over the "
        f"flat array, a fresh generator per case; every index when size <= {SAMPLE_SIZE}",
        "npz": {"file": "reference_inputs.npz", "raw_limit_bytes": NPZ_RAW_LIMIT, "keys": sorted(arrays)},
        "cases": cases,
        "rope_layouts": rope_layouts(processor),
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out_dir / "reference_inputs.npz", **arrays)
    out["runtime_s"] = round(time.perf_counter() - start, 1)
    (args.out_dir / "reference_inputs.json").write_text(dump_json(out) + "\n")


# ----------------------------------------------------------------------- evaluation


def load_fit_curve(reference_src: Path) -> tuple[Callable[..., Any], Path]:
    """The reference's own ``fit_curve`` from ``<reference_src>/src/utils.py``."""
    path = reference_src / "src" / "utils.py"
    if not path.is_file():
        raise SystemExit(f"{path} not found: --reference-src must be an MDS-VQA checkout")
    spec = importlib.util.spec_from_file_location("mds_vqa_reference_utils", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fit_curve, path


def evaluation_sets() -> dict[str, tuple[list[float], list[float], str]]:
    """name -> (pred, mos, note): fixed-seed synthetic sets, predictions on two decimals."""
    sets: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}

    rng = np.random.default_rng(101)
    latent = rng.uniform(0, 1, 40)
    sets["monotone"] = (1.5 + 3 * latent + rng.normal(0, 0.35, 40), 1 + 4 * latent, "noisy increasing")

    rng = np.random.default_rng(102)
    latent = rng.uniform(0, 1, 36)
    sets["decreasing"] = (4.8 - 3.5 * latent + rng.normal(0, 0.3, 36), 1 + 4 * latent, "anti-correlated")

    rng = np.random.default_rng(103)
    latent = rng.uniform(0, 1, 50)
    levels = np.where(latent > 0.75, 3.0, np.where(latent > 0.45, 2.5, 2.0))
    flip = rng.uniform(0, 1, 50) < 0.2
    pred = np.where(flip, 2.0, levels)
    sets["ties"] = (pred, 1 + 4 * latent + rng.normal(0, 0.2, 50), "three distinct predictions, mostly 2.0")

    rng = np.random.default_rng(104)
    latent = rng.uniform(0, 1, 45)
    sets["scale100"] = (1 + 4 * latent**1.3 + rng.normal(0, 0.3, 45), 100 * latent + rng.normal(0, 4, 45),
                        "MOS on 0-100")

    rng = np.random.default_rng(105)
    mos = rng.uniform(1, 5, 30)
    sets["weak"] = (3 + 0.15 * (mos - 3) + rng.normal(0, 0.8, 30), mos, "near-random")

    rng = np.random.default_rng(106)
    pred = rng.uniform(1, 5, 35)
    sets["nonlinear"] = (pred, 1 + 4 / (1 + np.exp(-2.5 * (pred - 3))) + rng.normal(0, 0.1, 35),
                         "saturating (logistic) relation")

    rng = np.random.default_rng(107)
    latent = rng.uniform(0, 1, 5)
    sets["few"] = (1 + 4 * latent + rng.normal(0, 0.3, 5), 1 + 4 * latent + rng.normal(0, 0.3, 5), "five points")

    rng = np.random.default_rng(108)
    sets["constant"] = (np.full(20, 2.0), rng.uniform(1, 5, 20), "every prediction 2.0 (std 0)")

    out: dict[str, tuple[list[float], list[float], str]] = {}
    for name, (pred, mos, note) in sets.items():
        lo, hi = (0.0, 100.0) if name == "scale100" else (1.0, 5.0)
        out[name] = (
            [round(float(v), 2) for v in np.clip(pred, 1, 5)],
            [round(float(v), 3) for v in np.clip(mos, lo, hi)],
            note,
        )
    return out


def _finite(value: float) -> float | None:
    """A float, or None for NaN/inf (JSON has no NaN)."""
    return float(value) if np.isfinite(value) else None


def evaluate(fit_curve: Callable[..., Any], pred: list[float], mos: list[float]) -> dict[str, Any]:
    """fit_curve, then the NaN/constant fallback to raw predictions, then SRCC and PLCC
    on the fitted values (both against MOS)."""
    from scipy.stats import pearsonr, spearmanr

    result: dict[str, Any] = {"fitted": None, "fell_back": None, "srcc": None, "plcc": None, "error": None}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            fitted = np.asarray(fit_curve(pred, mos), dtype=np.float64)  # lists, as the reference passes
        except Exception as exc:  # noqa: BLE001 - the reference does not catch curve_fit failures
            result["error"] = f"{type(exc).__name__}: {exc}"
        else:
            fell_back = bool(np.isnan(fitted).any() or np.all(fitted == fitted[0]))
            used = np.asarray(pred, dtype=np.float64) if fell_back else fitted
            result.update(
                fitted=[_finite(v) for v in fitted],
                fell_back=fell_back,
                srcc=_finite(spearmanr(used, mos)[0]),
                plcc=_finite(pearsonr(used, mos)[0]),
            )
    result["warnings"] = captured_warnings(caught)
    return result


def write_evaluation(args: argparse.Namespace) -> None:
    """Run the evaluation cases and write reference_evaluation.json."""
    start = time.perf_counter()
    fit_curve, utils_path = load_fit_curve(args.reference_src)
    cases: dict[str, Any] = {}
    for name, (pred, mos, note) in evaluation_sets().items():
        cases[name] = {"note": note, "n": len(pred), "pred": pred, "mos": mos, **evaluate(fit_curve, pred, mos)}
        shown = cases[name]["error"] or f"srcc={cases[name]['srcc']} plcc={cases[name]['plcc']}"
        print(f"  {name:10s} n={len(pred):2d} fell_back={cases[name]['fell_back']} {shown}", flush=True)
    out = {
        "description": "MDS-VQA reference evaluation: its own fit_curve (4-parameter logistic, scipy "
        "curve_fit, p0=[max(mos), min(mos), mean(pred), std(pred)/4], maxfev=10000) from pred to MOS; "
        "fitted values with NaN or all equal fall back to the raw predictions; SRCC and PLCC on the "
        "fitted values against MOS. NaN correlations are written as null; 'error' holds a fit_curve "
        "exception (the reference would crash).",
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "runtime_s": None,
        "versions": {k: v for k, v in versions().items() if k in ("python", "numpy", "scipy")},
        "reference_utils": {"source": args.reference_label or str(utils_path), "sha256": sha256_file(utils_path)},
        "cases": cases,
    }
    out["runtime_s"] = round(time.perf_counter() - start, 2)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "reference_evaluation.json").write_text(dump_json(out) + "\n")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "tests" / "data")
    parser.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="the shared/ folder")
    parser.add_argument("--clips-dir", type=Path, help="keep the generated clips here (default: a temp dir)")
    parser.add_argument("--reference-src", type=Path, help="MDS-VQA checkout (src/utils.py) for the evaluation")
    parser.add_argument("--reference-label", help="how to name the reference source in the output")
    parser.add_argument("--cases", nargs="+", help="only these video cases (for development)")
    parser.add_argument("--skip-inputs", action="store_true", help="only write the evaluation goldens")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Write the goldens."""
    args = parse_args(argv)
    overrides = [name for name in ENV_OVERRIDES if name in os.environ]
    if overrides:
        raise SystemExit(f"unset {', '.join(overrides)}: the goldens need qwen-vl-utils' defaults")
    if "ml_backend" in sys.modules:
        raise SystemExit("the project package must not be imported here")
    if args.reference_src is not None:
        load_fit_curve(args.reference_src)  # fail before the long part
    if not args.skip_inputs:
        print("reference inputs:", flush=True)
        if args.clips_dir is not None:
            write_inputs(args, args.clips_dir)
        else:
            with tempfile.TemporaryDirectory(prefix="reference-clips-") as tmp:
                write_inputs(args, Path(tmp))
    if args.reference_src is not None:
        print("reference evaluation:", flush=True)
        write_evaluation(args)
    else:
        print("no --reference-src: reference_evaluation.json left as it is", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
