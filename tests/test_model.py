"""Loading through the real Hugging Face/PEFT path, with the tiny model written to disk."""

import json

import pytest
import torch

from ml_backend.errors import ModelNotFoundError
from ml_backend.model.loading import DIFFICULTY_ADAPTER, choose_runtime, load_model, resolve_model
from ml_backend.scoring.constraint import AnswerTrie
from ml_backend.scoring.inputs import PreparedVideo, PromptEncoder
from ml_backend.video.decoding import decode_video
from tests.media import CHAT_TEMPLATE_GOLDEN, reference_prompts

REFERENCE_PROMPTS = reference_prompts()


@pytest.fixture(scope="module")
def loaded(tiny_model, tmp_path_factory):
    from ml_backend.settings import Settings

    base, adapter = tiny_model
    return load_model(Settings(base=str(base), adapter=str(adapter),
                               cache_dir=tmp_path_factory.mktemp("cache")))


def test_tiny_model_has_published_adapter_settings(tiny_model):
    config = json.loads((tiny_model[1] / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (64, 128, 0.05)
    assert "visual" in config["target_modules"] and "lm_head" in config["target_modules"]


def test_lora_targets_language_layers_and_lm_head_but_no_vision_layer(loaded):
    lora_modules = [name for name, module in loaded.model.named_modules() if hasattr(module, "lora_A")]
    assert any(name.endswith("lm_head") for name in lora_modules)
    assert any(name.endswith("self_attn.q_proj") for name in lora_modules)
    assert any(name.endswith("mlp.down_proj") for name in lora_modules)
    assert not [name for name in lora_modules if "visual" in name]


def test_cpu_runtime_is_float32_sdpa(loaded):
    assert loaded.runtime.device == "cpu"
    assert loaded.runtime.dtype == "float32" and loaded.runtime.attention == "sdpa"
    assert next(loaded.model.parameters()).dtype == torch.float32
    assert loaded.is_tiny and loaded.version().startswith("TINY-RANDOM-")


def test_runtime_overrides_are_validated(settings_factory):
    with pytest.raises(ModelNotFoundError, match="CUDA is not available"):
        choose_runtime(settings_factory(device="cuda"))
    with pytest.raises(ModelNotFoundError, match="FlashAttention-2 needs"):
        choose_runtime(settings_factory(attention="flash_attention_2", dtype="float32"))
    assert choose_runtime(settings_factory(dtype="bfloat16")).dtype == "bfloat16"


def test_missing_local_base_names_path_and_remedies(settings_factory, tmp_path):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(settings_factory(base=str(tmp_path / "nowhere")))
    message = str(info.value)
    assert "nowhere" in message and "--base" in message and "mdsvqa tiny-model" in message


def test_folder_without_adapter_config_is_refused(settings_factory, tiny_model):
    with pytest.raises(ModelNotFoundError, match=r"adapter_config\.json"):
        resolve_model(settings_factory(adapter=str(tiny_model[0])))


def test_hub_id_offline_without_cache_names_what_was_looked_for(settings_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(settings_factory(base="hollow404/VQR1-7B-YouTubeUGC", offline=True))
    message = str(info.value)
    assert "hollow404/VQR1-7B-YouTubeUGC" in message and "local Hugging Face cache" in message
    assert "MDSVQA_BASE" in message


def test_model_version_follows_adapter_files(settings_factory, tiny_model, tmp_path):
    import shutil

    first = resolve_model(settings_factory())
    copy = shutil.copytree(tiny_model[1], tmp_path / "adapter-copy")
    config = json.loads((copy / "adapter_config.json").read_text())
    config["lora_dropout"] = 0.1
    (copy / "adapter_config.json").write_text(json.dumps(config))
    second = resolve_model(settings_factory(adapter=str(copy)))
    assert first.version() != second.version()
    assert first.identity()["base"] == second.identity()["base"]


def test_second_named_adapter_on_the_same_base(loaded, tiny_model, settings_factory):
    source = loaded.load_adapter("quality-v1", str(tiny_model[1]), settings_factory())
    try:
        assert set(loaded.model.peft_config) >= {DIFFICULTY_ADAPTER, "quality-v1"}
        assert loaded.version("quality-v1") != loaded.version(None)
        assert source.fingerprint == loaded.spec.adapters[DIFFICULTY_ADAPTER].fingerprint
    finally:
        loaded.model.delete_adapter("quality-v1")
        del loaded.spec.adapters["quality-v1"]
        loaded.model.set_adapter(DIFFICULTY_ADAPTER)


def test_answer_trie_covers_every_canonical_answer(loaded):
    end = [loaded.tokenizer.convert_tokens_to_ids("<|im_end|>")]
    trie = AnswerTrie.for_tokenizer(loaded.tokenizer, end)
    encoded = loaded.tokenizer("<answer>3.07</answer>", add_special_tokens=False)["input_ids"]
    for i in range(len(encoded)):
        assert encoded[i] in trie.allowed(encoded[:i])
    assert trie.allowed(encoded) == end
    first = trie.allowed([])
    assert len(first) >= 1 and end[0] not in first
    assert trie.max_new_tokens >= len(encoded) + 1


def test_prompt_inputs_match_the_hugging_face_processor(loaded, shared_videos):
    """Our token assembly and patches equal what the transformers processor builds itself."""
    video = decode_video(shared_videos / "carphone_pristine.mp4")
    prepared = PreparedVideo.from_decoded(video, loaded.layout)
    config = loaded.model.get_base_model().config
    encoder = PromptEncoder(loaded.processor, config.video_token_id)
    ours = encoder.encode("difficulty", [prepared])

    text = encoder.render("difficulty")
    assert text == REFERENCE_PROMPTS["difficulty"]
    theirs = loaded.processor(text=[text], videos=[video.frames], return_tensors="pt")
    assert torch.equal(ours["input_ids"], theirs["input_ids"])
    assert torch.equal(ours["video_grid_thw"], theirs["video_grid_thw"])
    assert torch.allclose(ours["pixel_values_videos"], theirs["pixel_values_videos"], atol=1e-6)


def test_tiny_model_ships_the_official_chat_template(tiny_model):
    from ml_backend.model.tiny import chat_template

    official = json.loads(CHAT_TEMPLATE_GOLDEN.read_text())["chat_template"]
    assert chat_template() == official
    assert (tiny_model[0] / "chat_template.jinja").read_text() == official


@pytest.mark.parametrize("task", ["difficulty", "quality"])
def test_rendered_prompts_equal_the_reference(loaded, task):
    config = loaded.model.get_base_model().config
    assert PromptEncoder(loaded.processor, config.video_token_id).render(task) == REFERENCE_PROMPTS[task]
