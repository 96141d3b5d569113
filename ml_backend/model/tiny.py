"""A tiny, randomly initialised Qwen2.5-VL with processor and LoRA adapter, written to disk.

It exercises exactly the code path of the real checkpoints (same classes, same files,
same loader) so tests and offline demos need no download. Its answers mean nothing,
and everything it scores says so.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..prompts import PROMPTS
from .lora import lora_config
from .sources import TINY_MARKER

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]

# The chat template the real checkpoints inherit (official Qwen2.5-VL template, kept verbatim
# as data; tests check it against shared/golden), so the tiny model renders prompts as they do.
CHAT_TEMPLATE_FILE = Path(__file__).with_name("qwen2_5_vl_chat_template.jinja")


def chat_template() -> str:
    return CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")


def _corpus() -> list[str]:
    answers = [f"<think>the video looks fine</think><answer>{i / 100:.2f}</answer>" for i in range(100, 501, 7)]
    return [*PROMPTS.values(), "You are a helpful assistant.", "system user assistant Video Picture: 0123456789.",
            *answers]


def build_tokenizer():
    """A small byte-level BPE tokenizer with Qwen's special tokens (digits split one by one, as in Qwen2)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer  # in transformers 5 Qwen2TokenizerFast is this class

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_corpus(), trainer=trainer)
    tokenizer = Qwen2Tokenizer(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               unk_token=None,  # type: ignore[arg-type]  # annotated str; None (no unk) works
                               bos_token=None)
    tokenizer.add_special_tokens({"additional_special_tokens": SPECIAL_TOKENS[1:]})
    tokenizer.chat_template = chat_template()
    return tokenizer


def write_tiny_model(directory: str | Path, *, seed: int = 0) -> tuple[Path, Path]:
    """Write ``directory/base`` (model + processor) and ``directory/adapter``; return both paths."""
    import torch
    from peft import get_peft_model
    from transformers import (
        GenerationConfig,
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2_5_VLProcessor,
        Qwen2VLImageProcessor,
        Qwen2VLVideoProcessor,
    )

    directory = Path(directory)
    base_dir, adapter_dir = directory / "base", directory / "adapter"
    tokenizer = build_tokenizer()
    ids = {tok: tokenizer.convert_tokens_to_ids(tok) for tok in SPECIAL_TOKENS}
    vocab = ((len(tokenizer) + 63) // 64) * 64

    config = Qwen2_5_VLConfig(
        text_config={
            # Attention heads of 32 (2 x 32 = 64, grouped-query with 1 key/value head): vLLM refuses a
            # text head size of 16; M-RoPE sections sum to half the head size, split as in the 7B (1:1.5:1.5).
            "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32768,
            "rope_theta": 1_000_000.0, "rope_scaling": {"type": "mrope", "mrope_section": [4, 6, 6]},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        tie_word_embeddings=False,
        vision_config={
            "depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
            "fullatt_block_indexes": [1], "tokens_per_second": 2, "in_chans": 3,
        },
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"], dtype="float32",
    )
    config.vision_token_id = ids["<|vision_pad|>"]  # not an argument in transformers 5; the real config.json has it
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        bos_token_id=ids["<|endoftext|>"], eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]],
        pad_token_id=ids["<|endoftext|>"], do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
    )
    model.save_pretrained(base_dir)
    processor = Qwen2_5_VLProcessor(image_processor=Qwen2VLImageProcessor(), tokenizer=tokenizer,
                                    video_processor=Qwen2VLVideoProcessor(), chat_template=chat_template())
    processor.save_pretrained(base_dir)

    # init_lora_weights=False: random A and B, so the adapter really changes the answers.
    peft_model = get_peft_model(model, lora_config(init_lora_weights=False))
    peft_model.save_pretrained(adapter_dir, save_embedding_layers=False)

    marker = {"warning": "random weights: scores from this model are meaningless", "seed": seed}
    for folder in (base_dir, adapter_dir):
        (folder / TINY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    return base_dir, adapter_dir
