"""Block-diagonal attention for the Qwen2.5-VL vision tower without FlashAttention.

transformers 4.51's SDPA and eager vision attention build a dense (patches x patches)
mask for the whole video and attend over all of it, although the mask only joins
patches inside one window or one frame pair. For a 20 s 1080p clip that is a 3.3 GB
mask and ~400x the necessary work. Attending inside each segment separately is the
same computation; equal-length neighbouring segments go through one batched call.
FlashAttention-2 already works per segment and is left alone.
"""

from __future__ import annotations

import types


def _segment_runs(cu_seqlens) -> list[tuple[int, int, int]]:
    """(start, length, count) for each run of consecutive segments of equal length."""
    bounds = cu_seqlens.tolist()
    runs: list[tuple[int, int, int]] = []
    for start, end in zip(bounds[:-1], bounds[1:]):
        length = end - start
        if length <= 0:
            continue
        if runs and runs[-1][1] == length and runs[-1][0] + runs[-1][1] * runs[-1][2] == start:
            runs[-1] = (runs[-1][0], length, runs[-1][2] + 1)
        else:
            runs.append((start, length, 1))
    return runs


def _segmented_forward(self, hidden_states, cu_seqlens, rotary_pos_emb=None, position_embeddings=None):
    import torch
    import torch.nn.functional as F
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    seq_length = hidden_states.shape[0]
    q, k, v = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    if position_embeddings is None:
        emb = torch.cat((rotary_pos_emb, rotary_pos_emb), dim=-1)
        position_embeddings = (emb.cos(), emb.sin())
    q, k = apply_rotary_pos_emb_vision(q, k, *position_embeddings)

    output = torch.empty_like(q)
    for start, length, count in _segment_runs(cu_seqlens):
        stop = start + length * count

        def grouped(t):  # (count*length, heads, dim) -> (count, heads, length, dim)
            return t[start:stop].reshape(count, length, self.num_heads, -1).transpose(1, 2)

        attended = F.scaled_dot_product_attention(grouped(q), grouped(k), grouped(v), dropout_p=0.0)
        output[start:stop] = attended.transpose(1, 2).reshape(count * length, self.num_heads, -1)
    return self.proj(output.reshape(seq_length, -1))


def use_segmented_vision_attention(model) -> int:
    """Swap in per-segment attention on every vision block unless FlashAttention-2 is used.

    Returns how many blocks were changed (0 when the model has no such blocks).
    """
    visual = getattr(model, "visual", None) or getattr(getattr(model, "model", None), "visual", None)
    if visual is None or getattr(model.config, "_attn_implementation", "") == "flash_attention_2":
        return 0
    changed = 0
    for block in visual.blocks:
        attention = block.attn
        if hasattr(attention, "qkv") and hasattr(attention, "num_heads"):
            attention.forward = types.MethodType(_segmented_forward, attention)
            changed += 1
    return changed
