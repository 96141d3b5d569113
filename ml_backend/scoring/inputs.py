"""Model inputs for a batch of decoded videos and one prompt: token ids, patches, grids.

The chat template is rendered once per task; only the number of video placeholder
tokens differs between videos, so each prompt is assembled from the two token halves
around the placeholder instead of re-tokenizing a 14k-token string per video.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..prompts import Task, video_messages
from ..settings import VideoSettings
from ..video.decoding import DecodedVideo, decode_video
from ..video.patches import PatchLayout, video_patches, video_token_count


@dataclass(frozen=True)
class PreparedVideo:
    """One video ready for the model: patches and grid, computed off the model thread."""

    patches: np.ndarray
    grid_thw: np.ndarray
    seconds_per_grid: float

    @classmethod
    def from_decoded(cls, video: DecodedVideo, layout: PatchLayout) -> PreparedVideo:
        patches, grid = video_patches(video.frames, layout)
        return cls(patches, grid, video.plan.seconds_per_grid)


def model_input(path, video: VideoSettings, layout: PatchLayout) -> dict[str, np.ndarray]:
    """Every array the model gets for one video, as ``mdsvqa inputs`` writes them (raises VideoError)."""
    decoded = decode_video(path, video)
    prepared = PreparedVideo.from_decoded(decoded, layout)
    return {
        "frames": decoded.frames,
        "frame_indices": np.asarray(decoded.plan.indices, dtype=np.int64),
        "pixel_values_videos": prepared.patches,
        "video_grid_thw": prepared.grid_thw[None],
        "second_per_grid_ts": np.asarray([prepared.seconds_per_grid], dtype=np.float64),
        "num_video_tokens": np.asarray(video_token_count(prepared.grid_thw, layout.merge_size), dtype=np.int64),
    }


# transformers' modality of each token (0 text, 1 image, 2 video): Qwen2.5-VL's forward builds the
# 3-D M-RoPE positions (time, row, column) of the video tokens only when it is given; without it
# (transformers 5) every token, video ones included, gets a plain text position.
VIDEO_TOKEN_TYPE = 2


def mm_token_type_ids(input_ids, video_token_id: int):
    """``mm_token_type_ids`` for ``generate`` / ``forward``: 2 at the video placeholders, 0 elsewhere."""
    return (input_ids == int(video_token_id)).long() * VIDEO_TOKEN_TYPE


class PromptEncoder:
    """Renders the checkpoint's chat template for a task and expands the video placeholder."""

    def __init__(self, processor, video_token_id: int, merge_size: int = 2) -> None:
        self.tokenizer = processor.tokenizer
        self.chat_template = getattr(processor, "chat_template", None) or self.tokenizer.chat_template
        self.video_token_id = int(video_token_id)
        self.video_token = self.tokenizer.convert_ids_to_tokens(self.video_token_id)
        self.merge_size = merge_size
        self._halves: dict[str, tuple[list[int], list[int]]] = {}

    def render(self, task: Task) -> str:
        """The prompt text exactly as the reference renders it (one video placeholder, no "Video 1: ").

        The reference asks for ``add_vision_id=True``, but its processor (transformers 4.49)
        drops that argument, so the checkpoints never saw a vision id (SPEC 2).
        """
        return self.tokenizer.apply_chat_template(
            video_messages(task), chat_template=self.chat_template, tokenize=False,
            add_generation_prompt=True, add_vision_id=False,
        )

    def prompt_ids(self, task: Task, grid_thw: np.ndarray) -> list[int]:
        """Token ids of one video's prompt with its placeholder expanded."""
        before, after = self.halves(task)
        return before + [self.video_token_id] * video_token_count(grid_thw, self.merge_size) + after

    def placeholder_ids(self) -> list[int]:
        """Vision placeholder tokens: generated text must never contain them."""
        names = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
        ids = {self.tokenizer.convert_tokens_to_ids(name) for name in names} | {self.video_token_id}
        return sorted(i for i in ids if isinstance(i, int) and i != self.tokenizer.unk_token_id)

    def halves(self, task: Task) -> tuple[list[int], list[int]]:
        if task not in self._halves:
            text = self.render(task)
            if text.count(self.video_token) != 1:
                raise ValueError(f"chat template must hold one {self.video_token} for one video; got: {text!r}")
            before, after = text.split(self.video_token)
            encode = lambda part: self.tokenizer(part, add_special_tokens=False)["input_ids"]  # noqa: E731
            self._halves[task] = (encode(before), encode(after))
        return self._halves[task]

    def encode(self, task: Task, videos: Sequence[PreparedVideo]) -> dict:
        """Left-padded batch as torch tensors, in the keyword layout ``generate`` takes."""
        import torch

        rows = [self.prompt_ids(task, v.grid_thw) for v in videos]
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
            attention_mask[i, width - len(row):] = 1
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": mm_token_type_ids(input_ids, self.video_token_id),  # video tokens' M-RoPE positions
            # One video: its own array, not a copy (a 10 min video's patches are GBs).
            "pixel_values_videos": torch.from_numpy(videos[0].patches if len(videos) == 1
                                                    else np.concatenate([v.patches for v in videos])),
            "video_grid_thw": torch.from_numpy(np.stack([v.grid_thw for v in videos])),
            "second_per_grid_ts": [v.seconds_per_grid for v in videos],
        }
