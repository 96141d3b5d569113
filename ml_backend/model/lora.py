"""LoRA settings of the published adapters (SPEC section 1), shared by the tiny model and training."""

from __future__ import annotations

from typing import Any

LORA_RANK = 64
LORA_ALPHA = 128
LORA_DROPOUT = 0.05
# Every linear layer of the language model, lm_head included; nothing in the vision tower.
LORA_TARGET_MODULES = r"^(?!.*visual).*(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj|lm_head)$"


def lora_config(**overrides: Any):
    from peft import LoraConfig

    params: dict[str, Any] = dict(r=LORA_RANK, lora_alpha=LORA_ALPHA, lora_dropout=LORA_DROPOUT,
                                  target_modules=LORA_TARGET_MODULES, bias="none", task_type="CAUSAL_LM")
    params.update(overrides)
    return LoraConfig(**params)
