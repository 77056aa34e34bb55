"""The tiny test models load with the real transformers and generate from an image."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tinymodels import TinyModelError, build_summary, build_tiny_vlm, child_env

GENERATE = """
import json, sys
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
folder = sys.argv[1]
processor = AutoProcessor.from_pretrained(folder)
model = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto")
messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What?"}]}]
prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(text=[prompt], images=[Image.new("RGB", (64, 48), "red")], return_tensors="pt")
out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
new = out[:, inputs["input_ids"].shape[1] :]
print(json.dumps(processor.batch_decode(new, skip_special_tokens=True)[0]))
"""


def _generate(folder: Path) -> str:
    """Load offline in a fresh interpreter (as a user would) and answer about an image."""
    return _child(GENERATE, folder)


def _child(code: str, folder: Path):
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder)],
        capture_output=True,
        text=True,
        env=child_env(),
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


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


TOKENIZER = """
import json, sys
from transformers import AutoModelForImageTextToText, AutoTokenizer
folder = sys.argv[1]
tokenizer = AutoTokenizer.from_pretrained(folder)
model = AutoModelForImageTextToText.from_pretrained(folder, dtype="auto")
print(json.dumps({
    "image_pad": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
    "ids": tokenizer("a <|image_pad|> b")["input_ids"],
    "round_trip": tokenizer.decode(tokenizer("Grüße, 世界")["input_ids"]),
    "prompt": tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    ),
    "class": type(model).__name__,
    "dtype": str(model.dtype),
}))
"""


@pytest.mark.parametrize(
    ("kind", "model_class"),
    [
        ("qwen2_vl", "Qwen2VLForConditionalGeneration"),
        ("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration"),
    ],
)
def test_qwen_tokenizers_have_the_real_special_tokens(
    tiny_vlm_factory, kind: str, model_class: str
) -> None:
    folder = tiny_vlm_factory(kind)
    config = json.loads((folder / "config.json").read_text())
    seen = _child(TOKENIZER, folder)
    assert seen["image_pad"] == config["image_token_id"]
    assert config["image_token_id"] in seen["ids"]
    assert seen["round_trip"] == "Grüße, 世界"  # byte-level: every text survives
    assert seen["prompt"].endswith("<|im_start|>assistant\n")
    assert seen["class"] == model_class
    assert seen["dtype"] == "torch.bfloat16"


def test_qwen2_vl_processor_needs_torchvision_under_transformers_5(tiny_qwen2_vl: Path) -> None:
    # transformers 5 gives the Qwen processors a video processor that needs torchvision; the
    # folder still has every file, so where torchvision is installed the processor loads.
    if importlib.util.find_spec("torchvision") is None:
        with pytest.raises(AssertionError, match="requires the Torchvision library"):
            _generate(tiny_qwen2_vl)
    else:
        assert _generate(tiny_qwen2_vl)


def test_same_seed_same_weights_other_seed_other_weights(tmp_path: Path, tiny_llava: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        again = pool.submit(build_tiny_vlm, tmp_path / "again", "llava", sys.executable, seed=0)
        other = pool.submit(build_tiny_vlm, tmp_path / "other", "llava", sys.executable, seed=1)
    weights = (tiny_llava / "model.safetensors").read_bytes()
    assert (again.result() / "model.safetensors").read_bytes() == weights
    assert (other.result() / "model.safetensors").read_bytes() != weights


def test_a_failing_build_says_why(tmp_path: Path) -> None:
    with pytest.raises(TinyModelError, match="invalid choice"):
        build_tiny_vlm(tmp_path / "x", "llava", sys.executable, dtype="int3")
