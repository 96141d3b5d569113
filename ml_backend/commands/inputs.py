"""``mdsvqa inputs VIDEO... --out DIR``: the exact model input of each video, for debugging and parity checks."""

from __future__ import annotations

import argparse
import sys
from typing import Any

# The keys of every written file, in this order (docs: README "Inspecting model inputs").
INPUT_KEYS = ("prompt_text", "frames", "frame_indices", "pixel_values_videos", "video_grid_thw",
              "second_per_grid_ts", "num_video_tokens")


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "inputs",
        help="Write DIR/<file name>.npz with the exact prompt, frames and patches the model gets for each video.",
        description="Decode and prepare each video exactly as scoring does, without running the model, and "
        "write DIR/<file name>.npz with: " + ", ".join(INPUT_KEYS) + ". prompt_text holds one <|video_pad|> "
        "(the model gets num_video_tokens of them); frames are uint8 T x H x W x 3 as given to patching. "
        "Needs only the base model's processor files (tokenizer, chat template), not its weights.",
    )
    parser.add_argument("videos", nargs="+", metavar="VIDEO", help="Video files or folders.")
    parser.add_argument("--out", required=True, metavar="DIR", help="Folder for the .npz files.")
    parser.add_argument("--prompt", choices=["difficulty", "quality"], default="difficulty",
                        help="Which prompt to render: g's difficulty prompt (default) or f's quality prompt.")
    parser.add_argument("--base",
                        help="Base model (hub id or folder) whose processor renders the prompt (MDSVQA_BASE).")
    parser.add_argument("--adapter", help="Accepted for symmetry with score; adapters do not change the input.")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..errors import MdsVqaError
    from ..model.loading import load_processor, patch_layout
    from ..scoring.inputs import PromptEncoder, model_input
    from ..settings import load_settings
    from ..video.decoding import find_videos

    settings = load_settings(base=args.base, adapter=args.adapter)
    processor = load_processor(settings)
    layout = patch_layout(processor)
    video_token_id = processor.tokenizer.convert_tokens_to_ids("<|video_pad|>")
    prompt_text = PromptEncoder(processor, video_token_id, layout.merge_size).render(args.prompt)

    out = Path(args.out)
    videos, problems = find_videos(args.videos)
    failures = [f"{folder}: {reason}" for folder, reason in problems]
    seen: dict[str, Path] = {}
    written = 0
    for path in videos:
        if path.name in seen:
            failures.append(f"{path}: same file name as {seen[path.name]}; its inputs would overwrite those")
            continue
        seen[path.name] = path
        try:
            arrays = model_input(path, settings.video, layout)
        except MdsVqaError as exc:
            failures.append(str(exc))
            continue
        write_inputs(out / f"{path.name}.npz", {"prompt_text": prompt_text, **arrays})
        written += 1
    for failure in failures:
        print(f"failed: {failure}", file=sys.stderr)
    print(f"{written} input files written to {out}, {len(failures)} failed", file=sys.stderr)
    return 1 if failures else 0


def write_inputs(path, arrays: dict) -> None:
    """One .npz with exactly INPUT_KEYS, written atomically."""
    import numpy as np

    from ..fileio import atomic_writer

    missing = set(INPUT_KEYS) ^ set(arrays)
    if missing:
        raise ValueError(f"input keys differ from {INPUT_KEYS}: {sorted(missing)}")
    with atomic_writer(path) as handle:
        contents: dict[str, Any] = {key: np.asarray(arrays[key]) for key in INPUT_KEYS}  # Any: savez's **kwds
        np.savez(handle, **contents)
