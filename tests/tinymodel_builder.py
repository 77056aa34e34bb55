"""Build a tiny random vision-language model into a folder, with the interpreter that will load it.

Run as a script by the target environment's own Python (not imported by the test session):

    python tinymodel_builder.py --kind qwen2_vl --dest DIR [--dtype bfloat16] [--seed 0]

A checkpoint saved by one transformers major version may not load in another (4.x writes a flat
Qwen2-VL config and `torch_dtype`, 5.x nested `text_config` and `dtype`), so the files are written
by the same transformers that reads them. It uses only that environment's transformers, torch and
tokenizers, never the hub: the tokenizer is a byte-level BPE built here with `tokenizers`, with the
model's real special tokens and chat template. Works with transformers 4.51 up to 5.x.

On success it prints one JSON line: kind, class, dest, dtype, files, bytes, versions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

# Small enough to build in well under a second; big enough that every code path (multi-head and
# grouped-query attention, several layers, a vision tower with a projector) is exercised.
TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 2048,
}
VOCAB_SIZE = 320  # 256 byte tokens + the specials, rounded up
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]

# The real Qwen2-VL chat template (without the optional "Picture N:" labels).
QWEN_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# llava-hf/llava-1.5-7b-hf's template (without the training-only {% generation %} markers).
LLAVA_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}"
    "{{ message['role'].upper() + ': '}}{% endif %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' '}}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

QWEN_SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
LLAVA_SPECIALS = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]

# Qwen2's pre-tokenizer split (the same regex its tokenizer class rebuilds in transformers 5).
QWEN_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

KINDS = ("qwen2_vl", "qwen2_5_vl", "llava")


def _version(module: object) -> tuple[int, ...]:
    parts = []
    for piece in str(module.__version__).split("+")[0].split(".")[:3]:  # type: ignore[attr-defined]
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def byte_level_tokenizer(specials: list[str], bos: str | None):
    """A real byte-level BPE (Qwen2/GPT-2 style): every text encodes, every id decodes."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.processors import ByteLevel as ByteLevelProcessor
    from tokenizers.processors import TemplateProcessing

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: index for index, symbol in enumerate(alphabet)}
    tok = Tokenizer(BPE(vocab=vocab, merges=[], fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if bos is None:
        tok.post_processor = ByteLevelProcessor(trim_offsets=False)
    else:
        bos_id = tok.token_to_id(bos)
        tok.post_processor = TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
        )
    assert tok.get_vocab_size() <= VOCAB_SIZE, tok.get_vocab_size()
    return tok


def save_tokenizer(dest: Path, tok, tokenizer_class: str, **special) -> None:
    """Save through transformers' own fast tokenizer, then name the class the processor wants."""
    from transformers import PreTrainedTokenizerFast

    # No token_type_ids: the models' generate() rejects inputs it does not use.
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tok, model_input_names=["input_ids", "attention_mask"], **special
    )
    wrapped.save_pretrained(dest)
    config_path = dest / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config["tokenizer_class"] = tokenizer_class
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")


def qwen_image_processor(dest: Path, processor_class: str) -> None:
    # 28x28-pixel units (patch 14, merge 2); at most 112x112 pixels -> at most 16 image tokens.
    min_pixels, max_pixels = 56 * 56, 112 * 112
    config = {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": processor_class,
        "do_resize": True,
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
        "min_pixels": min_pixels,
        "max_pixels": max_pixels,
        "size": {"shortest_edge": min_pixels, "longest_edge": max_pixels},
        "patch_size": 14,
        "temporal_patch_size": 2,
        "merge_size": 2,
    }
    (dest / "preprocessor_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")


def build_qwen(dest: Path, kind: str, seed: int, dtype) -> tuple[object, object]:
    import transformers

    tok = byte_level_tokenizer(QWEN_SPECIALS, bos=None)
    ids = {t: tok.token_to_id(t) for t in QWEN_SPECIALS}
    save_tokenizer(
        dest,
        tok,
        "Qwen2Tokenizer",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        chat_template=QWEN_TEMPLATE,
    )
    text = dict(TEXT, vocab_size=VOCAB_SIZE, rope_theta=1000000.0, rms_norm_eps=1e-6)
    # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
    text["rope_scaling"] = {"type": "mrope", "mrope_section": [2, 3, 3]}
    common = dict(
        text,
        tie_word_embeddings=False,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
    )
    if kind == "qwen2_vl":
        vision = {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": TEXT["hidden_size"],
            "mlp_ratio": 2,
            "num_heads": 4,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
        }
        config = transformers.Qwen2VLConfig(vision_config=vision, **common)
        model_class = transformers.Qwen2VLForConditionalGeneration
        processor_class = transformers.Qwen2VLProcessor
    else:
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 4,
            "out_hidden_size": TEXT["hidden_size"],
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 56,
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        }
        config = transformers.Qwen2_5_VLConfig(vision_config=vision, **common)
        model_class = transformers.Qwen2_5_VLForConditionalGeneration
        processor_class = transformers.Qwen2_5_VLProcessor
    qwen_image_processor(dest, processor_class.__name__)
    model = _random_model(model_class, config, seed, dtype)
    _generation_config(
        model, eos=[ids["<|im_end|>"], ids["<|endoftext|>"]], pad=ids["<|endoftext|>"]
    )
    _silence_specials(model, tok)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(dest)
    image_processor = transformers.AutoImageProcessor.from_pretrained(dest)
    return model, _make_processor(dest, processor_class, image_processor, tokenizer, QWEN_TEMPLATE)


def build_llava(dest: Path, seed: int, dtype) -> tuple[object, object]:
    import transformers

    tok = byte_level_tokenizer(LLAVA_SPECIALS, bos="<s>")
    ids = {t: tok.token_to_id(t) for t in LLAVA_SPECIALS}
    save_tokenizer(
        dest,
        tok,
        "PreTrainedTokenizerFast",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        chat_template=LLAVA_TEMPLATE,
    )
    text_config = dict(
        TEXT,
        model_type="llama",
        vocab_size=VOCAB_SIZE,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
    )
    # 28x28 image, patch 14 -> 4 patches + CLS; the "default" strategy drops CLS -> 4 image tokens.
    vision_config = {
        "model_type": "clip_vision_model",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "image_size": 28,
        "patch_size": 14,
        "projection_dim": 32,
    }
    config = transformers.LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=ids["<image>"],
        image_seq_length=4,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        pad_token_id=ids["<pad>"],
        tie_word_embeddings=False,
    )
    image_config = {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_resize": True,
        "size": {"shortest_edge": 28},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": 28, "width": 28},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
        "do_convert_rgb": True,
    }
    (dest / "preprocessor_config.json").write_text(
        json.dumps(image_config, indent=2), encoding="utf-8"
    )
    model = _random_model(transformers.LlavaForConditionalGeneration, config, seed, dtype)
    _generation_config(model, eos=[ids["</s>"]], pad=ids["<pad>"], bos=ids["<s>"])
    _silence_specials(model, tok)
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer = transformers.AutoTokenizer.from_pretrained(dest)
    image_processor = transformers.AutoImageProcessor.from_pretrained(dest)
    processor = _make_processor(
        dest,
        transformers.LlavaProcessor,
        image_processor,
        tokenizer,
        LLAVA_TEMPLATE,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token="<image>",
    )
    return model, processor


def _make_processor(dest: Path, cls, image_processor, tokenizer, template: str, **kwargs):
    """The processor object, or None where this environment cannot build one.

    transformers 5 gives the Qwen processors a video processor, and that class needs torchvision
    (a CPU-only machine may have none). The files a processor reads are then written by hand in
    the format this version reads, so the folder loads wherever torchvision is installed.
    """
    import inspect

    if "video_processor" in inspect.signature(cls.__init__).parameters:
        from transformers.utils import is_torchvision_available

        if not is_torchvision_available():
            return None
        from transformers import AutoVideoProcessor

        # Reads preprocessor_config.json: the Qwen video settings are the image ones.
        kwargs["video_processor"] = AutoVideoProcessor.from_pretrained(dest)
    return cls(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=template, **kwargs
    )


def _random_model(model_class, config, seed: int, dtype):
    import torch

    torch.manual_seed(seed)
    model = model_class(config)
    return model.to(dtype).eval()


def _generation_config(model, eos: list[int], pad: int, bos: int | None = None) -> None:
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad, max_new_tokens=16
    )


def _silence_specials(model, tok) -> None:
    """Zero the output rows of every token but ASCII letters and digits.

    A random model otherwise may emit end-of-sequence first (an empty answer) or loop on a space
    byte (a blank one). With these rows at zero their logits are exactly 0 while the max over
    ~60 random logits is positive, so greedy and beam search answer with visible characters,
    deterministically for a seed.
    """
    import torch

    keep = [
        index for symbol, index in tok.get_vocab().items() if symbol.isascii() and symbol.isalnum()
    ]
    head = model.get_output_embeddings().weight
    mask = torch.ones(head.shape[0], dtype=torch.bool)
    mask[keep] = False
    with torch.no_grad():
        head[mask] = 0


def build(dest: Path, kind: str, dtype_name: str, seed: int) -> dict[str, object]:
    t0 = time.perf_counter()
    import tokenizers
    import torch
    import transformers

    if kind not in KINDS:
        raise SystemExit(f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
    dtype = getattr(torch, dtype_name)
    dest.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if kind == "llava":
        model, processor = build_llava(dest, seed, dtype)
    else:
        model, processor = build_qwen(dest, kind, seed, dtype)
    if processor is not None:
        processor.save_pretrained(dest)
        processor_note = "saved by the processor"
    else:
        # What this version's processor.save_pretrained writes for a Qwen processor: its template.
        (dest / "chat_template.jinja").write_text(QWEN_TEMPLATE, encoding="utf-8")
        processor_note = "needs torchvision to load here (transformers 5 video processor)"
    files = sorted(p.name for p in dest.iterdir() if p.is_file())
    return {
        "kind": kind,
        "class": type(model).__name__,
        "dest": str(dest),
        "dtype": dtype_name,
        "seed": seed,
        "files": files,
        "bytes": sum((dest / f).stat().st_size for f in files),
        "import_seconds": round(started - t0, 3),
        "build_seconds": round(time.perf_counter() - started, 3),
        "processor": processor_note,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "tokenizers": tokenizers.__version__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", default="qwen2_vl", choices=KINDS)
    parser.add_argument("--dest", required=True, type=Path)
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never the network, whatever the caller set
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    summary = build(args.dest.resolve(), args.kind, args.dtype, args.seed)
    sys.stdout.write(json.dumps(summary) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
