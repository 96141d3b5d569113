"""The engine choice and what the vLLM engine is given, without vLLM: answer regex, merged checkpoints, options.

The vLLM engine itself runs in its own virtualenv (``tests/test_vllm_engine.py``, ``make test``).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from ml_backend.answers import allowed_answers, answer_regex
from ml_backend.cli import build_parser, main
from ml_backend.settings import Settings


def test_answer_regex_admits_exactly_the_trie_answers():
    """Every string of digits and points up to 5 long between the tags: in the regex iff in the trie's answers."""
    allowed = set(allowed_answers())
    pattern = re.compile(answer_regex())
    for length in range(6):
        for chars in itertools.product("0123456789.", repeat=length):
            text = "<answer>" + "".join(chars) + "</answer>"
            assert (pattern.fullmatch(text) is not None) == (text in allowed), text
    for other in ["<answer>5.01</answer>", "<answer>0.5</answer>", "<answer>3.</answer>", "<answer> 3</answer>",
                  "<answer>3</answer> ", "answer>3</answer>", "<answer>3.333</answer>", "<answer>+3</answer>"]:
        assert pattern.fullmatch(other) is None, other
    assert all(pattern.fullmatch(answer) for answer in allowed)


@pytest.mark.parametrize("command", [["score", "x.mp4", "--out", "o.json"], ["serve"],
                                     ["score-project", "--project", "1"]])
def test_engine_option_on_score_serve_and_score_project(command):
    parser = build_parser()
    assert parser.parse_args(command).engine is None  # unset: MDSVQA_ENGINE, default hf
    assert parser.parse_args([*command, "--engine", "vllm"]).engine == "vllm"
    with pytest.raises(SystemExit):
        parser.parse_args([*command, "--engine", "onnx"])


def test_engine_setting_defaults_to_hf_and_refuses_ray(monkeypatch):
    assert Settings().engine == "hf"
    monkeypatch.setenv("MDSVQA_ENGINE", "vllm")
    monkeypatch.setenv("MDSVQA_VLLM_MAX_MODEL_LEN", "8192")
    settings = Settings()
    assert settings.engine == "vllm" and settings.vllm.max_model_len == 8192 and settings.vllm.constraint == "trie"
    with pytest.raises(ValueError, match="Ray"):
        Settings(engine="vllm", ray_address="local")


def test_score_with_vllm_missing_says_how_to_install(tiny_model, shared_videos, tmp_path, capsys, monkeypatch):
    pytest.importorskip("torch")
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed here")
    monkeypatch.setenv("MDSVQA_CACHE_DIR", str(tmp_path / "cache"))
    base, adapter = tiny_model
    code = main(["score", str(shared_videos / "bikes.mp4"), "--base", str(base), "--adapter", str(adapter),
                 "--out", str(tmp_path / "s.json"), "--engine", "vllm", "--no-progress"])
    assert code == 2
    assert "mdsvqa-labelstudio[vllm]" in capsys.readouterr().err


def test_tiny_model_text_heads_are_a_size_vllm_accepts(tiny_model):
    config = json.loads((tiny_model[0] / "config.json").read_text())
    text = config.get("text_config", config)
    head = text["hidden_size"] // text["num_attention_heads"]
    assert head in (32, 64, 80, 96, 112, 128, 256)
    rope = text.get("rope_parameters") or text["rope_scaling"]  # transformers 5 writes rope_parameters
    assert sum(rope["mrope_section"]) == head // 2


# -- merged checkpoints -------------------------------------------------------------------------

def _logits(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model(**batch).logits


def test_merged_checkpoint_is_built_once_per_adapter_and_equals_the_adapter(tiny_model, tmp_path, shared_videos):
    """One folder per (base, adapter, dtype) fingerprint, built once; its logits are PEFT's."""
    import shutil

    from transformers import Qwen2_5_VLForConditionalGeneration

    from ml_backend.engines.merged import INFO_FILE, merged_checkpoint
    from ml_backend.model.loading import load_model
    from ml_backend.model.sources import resolve_source
    from ml_backend.scoring.generation import AnswerGenerator
    from ml_backend.scoring.scorer import prepare_video

    base_dir, adapter_dir = tiny_model
    base = resolve_source(str(base_dir), kind="base model", offline=True, required_file="config.json")
    adapter = resolve_source(str(adapter_dir), kind="adapter", offline=True, required_file="adapter_config.json")
    cache = tmp_path / "cache"
    first = merged_checkpoint(cache, base, adapter, "float32")
    info = json.loads((first / INFO_FILE).read_text())
    assert info["adapter"]["fingerprint"] == adapter.fingerprint and info["base"]["fingerprint"] == base.fingerprint
    assert (first / "mdsvqa_tiny_model.json").is_file() and (first / "chat_template.jinja").is_file()
    stamp = (first / INFO_FILE).stat().st_mtime_ns
    assert merged_checkpoint(cache, base, adapter, "float32") == first
    assert (first / INFO_FILE).stat().st_mtime_ns == stamp, "built once, then reused"
    assert not [p for p in (cache / "merged").iterdir() if ".staging" in p.name]

    copy = shutil.copytree(adapter_dir, tmp_path / "version-adapter")  # another version: its own fingerprint
    other = resolve_source(str(copy), kind="adapter", offline=True, required_file="adapter_config.json")
    assert merged_checkpoint(cache, base, other, "float32") != first

    settings = Settings(base=str(base_dir), adapter=str(adapter_dir), cache_dir=cache, offline=True, device="cpu")
    loaded = load_model(settings)
    video = prepare_video(shared_videos / "carphone_pristine.mp4", settings, loaded)
    batch = AnswerGenerator(loaded, settings).encoder.encode("difficulty", [video])
    merged = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(first), dtype=torch.float32).eval()
    torch.testing.assert_close(_logits(merged, batch), _logits(loaded.model, batch), atol=1e-5, rtol=1e-5)


def test_export_command_writes_a_merged_checkpoint(tiny_model, tmp_path, capsys):
    base, adapter = tiny_model
    out = tmp_path / "export"
    assert main(["export", "--merged", str(out), "--base", str(base), "--adapter", str(adapter), "--offline"]) == 0
    assert "float32" in capsys.readouterr().out
    assert (out / "config.json").is_file() and list(out.glob("*.safetensors"))
    assert json.loads((out / "mdsvqa_merged.json").read_text())["dtype"] == "float32"
    config = json.loads((out / "config.json").read_text())
    assert "lora" not in json.dumps(config).lower()
    assert main(["export", "--merged", str(out), "--base", str(base), "--adapter", str(adapter)]) == 2  # not empty


def test_export_of_the_active_version(tiny_model, tmp_path, capsys):
    from ml_backend.training.versions import VersionStore

    base, adapter = tiny_model
    models = tmp_path / "models"
    args = ["--base", str(base), "--model-dir", str(models), "--offline"]
    assert main(["export", "--merged", str(tmp_path / "none"), "--version", "active", *args]) == 2
    assert "no active difficulty version" in capsys.readouterr().err
    store = VersionStore(models)
    version = store.publish_folder("difficulty", adapter)
    store.activate(version.id)
    assert main(["export", "--merged", str(tmp_path / "active"), "--version", "active", *args]) == 0
    assert version.id in capsys.readouterr().out
    info = json.loads((tmp_path / "active" / "mdsvqa_merged.json").read_text())
    assert Path(info["adapter"]["spec"]) == version.adapter_path


# -- what the vLLM engine sends ---------------------------------------------------------------

def test_video_metadata_gives_vllm_our_temporal_spacing():
    """vLLM (HF) derives second_per_grid_ts = temporal patch / sampled fps from the metadata we give."""
    from ml_backend.engines.vllm_engine import FramesVideo, video_item
    from ml_backend.video.patches import PatchLayout

    layout = PatchLayout()
    frames = np.zeros((7, 56, 84, 3), np.uint8)
    for spacing in (1.0, 0.8, 2.0 / 3.0):
        video = FramesVideo(np.empty((0, 0), np.float32), np.array([4, 4, 6]), spacing, frames)
        given, meta = video_item(video, layout)
        assert given is frames and meta["do_sample_frames"] is False and meta["video_backend"] == "numpy"
        sampled_fps = len(meta["frames_indices"]) / meta["total_num_frames"] * meta["fps"]
        assert layout.temporal_patch_size / sampled_fps == pytest.approx(spacing, rel=1e-15)
    assert layout.temporal_patch_size / (2.0 / 1.0) == 1.0  # the default spacing exactly


def test_trie_sequences_are_the_answers_as_the_tokenizer_writes_them(tiny_model):
    from ml_backend.engines.vllm_engine import trie_sequences
    from ml_backend.model.loading import load_processor
    from ml_backend.scoring.constraint import AnswerTrie

    tokenizer = load_processor(Settings(base=str(tiny_model[0]), offline=True)).tokenizer
    trie = AnswerTrie.for_tokenizer(tokenizer, [tokenizer.convert_tokens_to_ids("<|im_end|>")])
    sequences = trie_sequences(trie)
    assert sorted(tokenizer.batch_decode(sequences)) == sorted(allowed_answers())
    rebuilt = AnswerTrie(sequences, trie.end_ids)
    assert rebuilt.root == trie.root and rebuilt.max_new_tokens == trie.max_new_tokens


def test_video_tokens_get_m_rope_positions(tiny_model, shared_videos):
    """transformers 5 places video tokens in 3-D only given mm_token_type_ids, which PromptEncoder now sends."""
    from ml_backend.model.loading import load_model
    from ml_backend.scoring.generation import AnswerGenerator
    from ml_backend.scoring.scorer import prepare_video

    settings = Settings(base=str(tiny_model[0]), adapter=str(tiny_model[1]), offline=True, device="cpu")
    loaded = load_model(settings)
    encoder = AnswerGenerator(loaded, settings).encoder
    video = prepare_video(shared_videos / "bikes.mp4", settings, loaded)
    batch = encoder.encode("difficulty", [video])
    types = batch["mm_token_type_ids"][0]
    assert int((types == 2).sum()) == int((batch["input_ids"][0] == encoder.video_token_id).sum()) > 0
    model = loaded.model.get_base_model().model
    positions, _ = model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                        video_grid_thw=batch["video_grid_thw"],
                                        second_per_grid_ts=torch.tensor(batch["second_per_grid_ts"]),
                                        attention_mask=batch["attention_mask"])
    start = int(torch.nonzero(types == 2)[0, 0])
    t, h, w = (int(x) for x in video.grid_thw)
    grid = positions[:, 0, start:start + t * h * w // 4].reshape(3, t, h // 2, w // 2)
    assert torch.equal(grid[0, :, 0, 0] - start, torch.arange(t) * 2)  # 1 s a temporal patch, 2 tokens a second
    assert torch.equal(grid[1, 0, :, 0] - start, torch.arange(h // 2))
    assert torch.equal(grid[2, 0, 0, :] - start, torch.arange(w // 2))
