"""Qwen2.5-VL's 3-D rotary positions (time, row, column) exactly as the reference places them.

The checkpoints were trained and evaluated with transformers 4.49, whose ``get_rope_index``
starts the text after a video at one past the video's largest position on any axis:
``max((t - 1) * interval, rows - 1, columns - 1) + 1`` after the video's first position.
transformers 5 starts it at ``max(rows, columns)`` instead, ignoring the temporal axis. The
two agree while a video's temporal span is no longer than its sides, and differ for most
real clips: 20 s of 1080p (t = 20, interval 2, 20 x 36 merged patches) puts the prompt's
question 3 positions earlier under transformers 5 (36 instead of 39). vLLM places it as the
reference does. ``use_reference_positions`` puts this function in the model's place, for
scoring and training alike.

Only the convention of the returned deltas is transformers 5's: ``max + 1 - real tokens``
(4.49 subtracted the padded length because its decode step counted from the padded cache
position; transformers 5 counts from the attention mask), so generated tokens continue at
``max + 1``, as in the reference.
"""

from __future__ import annotations

import itertools
from typing import Any

# transformers' token modality: 0 text, 1 image, 2 video (``mm_token_type_ids``)
TEXT, IMAGE, VIDEO = 0, 1, 2


def reference_rope_index(
    input_ids,
    mm_token_type_ids,
    *,
    spatial_merge_size: int,
    tokens_per_second: float,
    image_grid_thw=None,
    video_grid_thw=None,
    second_per_grid_ts=None,
    attention_mask=None,
):
    """(positions (3, batch, length), deltas (batch, 1)) as transformers 4.49 computes them.

    Text tokens advance all three axes together by one. A vision segment starts at the next
    position; its temporal index is ``floor(frame_group * seconds_per_grid * tokens_per_second)``
    (images: 0), rows and columns count merged patches; the next segment starts one past the
    largest position the vision segment used on any axis. Padding (attention mask 0) gets
    position 1, as in the reference; it is never attended to.
    """
    import torch

    batch, length = input_ids.shape
    device = input_ids.device
    positions = torch.ones(3, batch, length, dtype=input_ids.dtype, device=device)
    grids = {IMAGE: iter(image_grid_thw if image_grid_thw is not None else ()),
             VIDEO: iter(video_grid_thw if video_grid_thw is not None else ())}
    seconds = iter(second_per_grid_ts if second_per_grid_ts is not None else ())
    deltas = []
    for row in range(batch):
        kept = (attention_mask[row].bool() if attention_mask is not None
                else torch.ones(length, dtype=torch.bool, device=device))
        types_in_row = mm_token_type_ids[row][kept].tolist()
        segments = [(modality, sum(1 for _ in group)) for modality, group in itertools.groupby(types_in_row)]
        parts, next_position = [], 0
        for modality, size in segments:
            if modality == TEXT:
                part = torch.arange(size, device=device).view(1, -1).expand(3, -1) + next_position
            else:
                t, h, w = (int(x) for x in next(grids[modality]))
                h, w = h // spatial_merge_size, w // spatial_merge_size
                if t * h * w != size:
                    raise ValueError(f"a vision segment of {size} tokens does not match its grid "
                                     f"{t} x {h} x {w} (merged)")
                # the reference's arithmetic: float32, frame group x seconds per grid x tokens per second
                interval = torch.tensor(float(next(seconds, 1.0)) if modality == VIDEO else 0.0,
                                        dtype=torch.float32, device=device)
                temporal = (torch.arange(t, device=device).view(-1, 1).expand(-1, h * w) * interval
                            * tokens_per_second).long().flatten()
                rows = torch.arange(h, device=device).view(1, -1, 1).expand(t, -1, w).flatten()
                columns = torch.arange(w, device=device).view(1, 1, -1).expand(t, h, -1).flatten()
                part = torch.stack([temporal, rows, columns]) + next_position
            parts.append(part)
            next_position = int(part.max()) + 1
        if parts:
            placed = torch.cat(parts, dim=1).to(positions.dtype)
            positions[:, row, kept] = placed
            deltas.append(int(placed.max()) + 1 - placed.shape[1])
        else:
            deltas.append(0)
    return positions, torch.tensor(deltas, device=device).unsqueeze(1)


def use_reference_positions(model: Any) -> None:
    """Make a (PEFT-wrapped) Qwen2.5-VL compute M-RoPE positions as the reference (this instance only)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    language = getattr(inner, "model", inner)  # ForConditionalGeneration holds the Qwen2_5_VLModel
    if not hasattr(language, "get_rope_index"):
        raise TypeError(f"{type(language).__name__} has no get_rope_index: not a Qwen2.5-VL model")
    vision = language.config.vision_config

    def get_rope_index(input_ids, mm_token_type_ids=None, image_grid_thw=None, video_grid_thw=None,
                       second_per_grid_ts=None, attention_mask=None, **_ignored):
        if mm_token_type_ids is None:
            raise ValueError("M-RoPE positions need mm_token_type_ids (2 at the video placeholders)")
        return reference_rope_index(
            input_ids, mm_token_type_ids, spatial_merge_size=vision.spatial_merge_size,
            tokens_per_second=vision.tokens_per_second, image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw, second_per_grid_ts=second_per_grid_ts, attention_mask=attention_mask)

    language.get_rope_index = get_rope_index  # an instance attribute: called without self
