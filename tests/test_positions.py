"""M-RoPE positions as the reference places them (``ml_backend.model.positions``).

Against transformers 4.49's own ``get_rope_index`` (goldens of scripts/reference_parity.sh:
the shared videos, the generated clips and synthetic layouts with padding and other
seconds per grid), against transformers 5's where the two agree, and through the loaded
model: what generate and the training forward actually use.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from ml_backend.model.positions import TEXT, VIDEO, reference_rope_index
from tests.media import REPO

GOLDENS = REPO / "tests" / "data" / "reference_inputs.json"


def _layout_batch(rows: list[list[list[int]]]):
    """(ids, types, attention mask) for rows of [modality, count] runs, left-padded to one width."""
    types_rows = [[m for m, count in row for _ in range(count)] for row in rows]
    width = max(len(r) for r in types_rows)
    types = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(types_rows):
        types[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
    ids = torch.where(types == VIDEO, 600, 7)
    return ids, types, mask


def _sha(tensor: torch.Tensor) -> str:
    return hashlib.sha256(np.ascontiguousarray(tensor.numpy().astype(np.int64)).tobytes()).hexdigest()


def _golden_layouts() -> list[tuple[str, dict]]:
    data = json.loads(GOLDENS.read_text())
    found = [(name, case["rope"]) for name, case in data["cases"].items()]
    found += [(f"layout:{name}", case) for name, case in data["rope_layouts"].items()]
    return found


@pytest.mark.parametrize(("name", "golden"), _golden_layouts(), ids=lambda v: v if isinstance(v, str) else "")
def test_positions_equal_the_reference_get_rope_index(name, golden):
    """Bit for bit the positions transformers 4.49 computed (hashes), and its next position after the prompt."""
    ids, types, mask = _layout_batch(golden["token_types"])
    positions, deltas = reference_rope_index(
        ids, types, spatial_merge_size=golden["spatial_merge_size"], tokens_per_second=golden["tokens_per_second"],
        video_grid_thw=torch.tensor(golden["video_grid_thw"]),
        second_per_grid_ts=torch.tensor(golden["second_per_grid_ts"]), attention_mask=mask)
    assert _sha(positions) == golden["positions_sha256"], name
    assert positions[:, :, -1].tolist() == golden["last"]
    # the first generated token: the reference continues at its delta + padded length; so do we,
    # counting real tokens (transformers 5's decode step)
    generated = (deltas[:, 0] + mask.sum(dim=1)).tolist()
    reference_next = [golden["rope_deltas"][i] + ids.shape[1] for i in range(ids.shape[0])]
    assert generated == reference_next


def test_where_transformers_5_agrees_the_positions_are_its_own():
    """A video no longer in time than its sides: transformers 5's get_rope_index gives the same tensor."""
    from transformers import Qwen2_5_VLModel

    model = _transformers_model()
    grid = torch.tensor([[3, 8, 12]])  # temporal 0..4 (interval 2), rows 0..3, columns 0..5: the columns reach furthest
    ids, types, mask = _layout_batch([[[TEXT, 5], [VIDEO, 3 * 4 * 6], [TEXT, 3]], [[TEXT, 2], [VIDEO, 72], [TEXT, 3]]])
    grids = torch.cat([grid, grid])
    ours, our_deltas = reference_rope_index(ids, types, spatial_merge_size=2, tokens_per_second=2,
                                            video_grid_thw=grids, second_per_grid_ts=torch.tensor([1.0, 1.0]),
                                            attention_mask=mask)
    theirs, their_deltas = Qwen2_5_VLModel.get_rope_index(model, ids, mm_token_type_ids=types, video_grid_thw=grids,
                                                          second_per_grid_ts=torch.tensor([1.0, 1.0]),
                                                          attention_mask=mask)
    real = mask.bool()
    assert torch.equal(ours[:, real], theirs[:, real])
    assert torch.equal(our_deltas, their_deltas)


def test_text_after_a_long_video_starts_after_its_last_temporal_position():
    """30 temporal groups at 2 positions each: the reference puts the text at 59 past the video, not 5."""
    t, h, w = 30, 8, 10  # merged: 4 rows, 5 columns
    ids, types, _ = _layout_batch([[[TEXT, 3], [VIDEO, t * h * w // 4], [TEXT, 2]]])
    positions, deltas = reference_rope_index(ids, types, spatial_merge_size=2, tokens_per_second=2,
                                             video_grid_thw=torch.tensor([[t, h, w]]),
                                             second_per_grid_ts=torch.tensor([1.0]))
    video = positions[:, 0, 3:-2]
    assert video[0].max() == 3 + 58 and video[1].max() == 3 + 3 and video[2].max() == 3 + 4
    assert positions[:, 0, -2].tolist() == [3 + 59] * 3 and positions[:, 0, -1].tolist() == [3 + 60] * 3
    assert int(deltas[0, 0]) + ids.shape[1] == 3 + 61  # the first generated token


def test_a_grid_that_does_not_match_its_tokens_is_refused():
    ids, types, _ = _layout_batch([[[TEXT, 1], [VIDEO, 10], [TEXT, 1]]])
    with pytest.raises(ValueError, match="does not match its grid"):
        reference_rope_index(ids, types, spatial_merge_size=2, tokens_per_second=2,
                             video_grid_thw=torch.tensor([[2, 4, 4]]), second_per_grid_ts=torch.tensor([1.0]))


def test_the_loaded_model_generates_with_the_reference_positions(tiny_model, monkeypatch):
    """load_model's model (scoring) and Policy.load's (training) both compute positions with our function."""
    from ml_backend.model import positions as positions_module
    from ml_backend.model.loading import load_model
    from ml_backend.settings import Settings
    from ml_backend.training.policy import Policy

    settings = Settings(base=str(tiny_model[0]), adapter=str(tiny_model[1]), offline=True, device="cpu")
    calls = []
    original = positions_module.reference_rope_index
    monkeypatch.setattr(positions_module, "reference_rope_index",
                        lambda *a, **k: calls.append(k["video_grid_thw"].tolist()) or original(*a, **k))
    loaded, policy = load_model(settings), Policy.load(settings, None)
    for model, processor in ((loaded.model, loaded.processor), (policy.model, policy.processor)):
        inner = model.get_base_model().model
        (text_id,) = processor.tokenizer("video", add_special_tokens=False)["input_ids"][:1]
        t, h, w = 30, 8, 10
        ids, types, mask = _layout_batch([[[TEXT, 3], [VIDEO, t * h * w // 4], [TEXT, 2]]])
        positions, _ = inner.get_rope_index(ids, mm_token_type_ids=types, video_grid_thw=torch.tensor([[t, h, w]]),
                                            second_per_grid_ts=torch.tensor([1.0]), attention_mask=mask)
        assert positions[:, 0, -2].tolist() == [3 + 59] * 3
        calls.clear()
        patches = torch.zeros(t * h * w, 3 * 2 * 14 * 14)
        ids = torch.where(types == VIDEO, inner.config.video_token_id, text_id)
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, mm_token_type_ids=types, pixel_values_videos=patches,
                           video_grid_thw=torch.tensor([[t, h, w]]), second_per_grid_ts=[1.0], max_new_tokens=2,
                           do_sample=False)
        assert calls == [[[t, h, w]]]  # the prompt's positions came from the reference function, once


def _transformers_model():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLModel

    config = Qwen2_5_VLConfig(
        text_config={"hidden_size": 64, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "vocab_size": 640,
                     "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]}},
        vision_config={"depth": 1, "hidden_size": 32, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 64,
                       "tokens_per_second": 2},
        video_token_id=600)
    return Qwen2_5_VLModel(config)
