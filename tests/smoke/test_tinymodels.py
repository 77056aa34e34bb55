"""The tiny test models load with the real transformers and generate from an image."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from tests.tinymodels import TinyModelError, build_summary, build_tiny_vlm


def _generate(folder: Path, max_new_tokens: int = 6) -> str:
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}
    ]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(
        text=[prompt], images=[Image.new("RGB", (64, 48), "red")], return_tensors="pt"
    )
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new, skip_special_tokens=True)[0]


def test_llava_is_tiny_loads_offline_and_answers(tiny_llava: Path) -> None:
    summary = build_summary(tiny_llava)
    assert summary["class"] == "LlavaForConditionalGeneration"
    config = json.loads((tiny_llava / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"]
    assert config.get("dtype", config.get("torch_dtype")) == "bfloat16"
    assert (tiny_llava / "model.safetensors").stat().st_size < 2_000_000
    assert {"tokenizer.json", "preprocessor_config.json", "generation_config.json"} <= set(
        summary["files"]
    )
    answer = _generate(tiny_llava)
    # The builder keeps only letters and digits reachable, so a random model still answers.
    assert answer and answer.isalnum(), answer


def test_qwen2_vl_tokenizer_has_the_real_special_tokens(tiny_qwen2_vl: Path) -> None:
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_qwen2_vl)
    config = json.loads((tiny_qwen2_vl / "config.json").read_text())
    assert tokenizer.convert_tokens_to_ids("<|image_pad|>") == config["image_token_id"]
    ids = tokenizer("a <|image_pad|> b")["input_ids"]
    assert config["image_token_id"] in ids
    assert tokenizer.decode(tokenizer("Grüße, 世界")["input_ids"]) == "Grüße, 世界"  # byte-level
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_start|>assistant\n")
    model = AutoModelForImageTextToText.from_pretrained(tiny_qwen2_vl, dtype="auto")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"


def test_qwen2_vl_processor_needs_torchvision_under_transformers_5(tiny_qwen2_vl: Path) -> None:
    # transformers 5 gives the Qwen processors a video processor that needs torchvision; the
    # folder still has every file, so where torchvision is installed the processor loads.
    if importlib.util.find_spec("torchvision") is None:
        from transformers import AutoProcessor

        with pytest.raises(ImportError, match="Torchvision"):
            AutoProcessor.from_pretrained(tiny_qwen2_vl)
    else:
        assert _generate(tiny_qwen2_vl)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, tiny_llava: Path) -> None:
    again = build_tiny_vlm(tmp_path / "again", "llava", sys.executable, seed=0)
    other = build_tiny_vlm(tmp_path / "other", "llava", sys.executable, seed=1)
    weights = (tiny_llava / "model.safetensors").read_bytes()
    assert (again / "model.safetensors").read_bytes() == weights
    assert (other / "model.safetensors").read_bytes() != weights


def test_a_failing_build_says_why(tmp_path: Path) -> None:
    with pytest.raises(TinyModelError, match="invalid choice"):
        build_tiny_vlm(tmp_path / "x", "llava", sys.executable, dtype="int3")
