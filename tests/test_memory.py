"""provision/memory.py: the memory estimate's parts behave as the physics says."""

from __future__ import annotations

from dataclasses import replace

import pytest

from provision.memory import FitRequest, estimate, kv_bytes, weight_bytes
from provision.profiles import load_profile
from provision.units import GIB

QWEN7 = load_profile("qwen2.5-vl-7b")
GEMMA = load_profile("gemma-3-12b-it")
MLLAMA = load_profile("llama-3.2-11b-vision")


def test_quantisation_shrinks_only_the_language_linears():
    bf16, int8, int4 = (weight_bytes(QWEN7, q) for q in ("bf16", "int8", "int4"))
    assert bf16 > int8 > int4
    kept_16bit = (QWEN7.params["vision"] + 2 * 152064 * 3584) * 2  # ViT, embeddings, lm_head
    assert int4 > kept_16bit and int8 < bf16 * 0.65


def test_sliding_window_layers_keep_only_their_window():
    short, long = kv_bytes(GEMMA, 1024, 1), kv_bytes(GEMMA, 32768, 1)
    per_token_all_layers = 2 * 8 * 256 * 2 * 48
    assert short == per_token_all_layers * 1024
    # Only the 8 global layers grow past the window.
    assert long - short == 2 * 8 * 256 * 2 * 8 * (32768 - 1024)


def test_cross_attention_images_cost_no_text_kv():
    one = estimate(MLLAMA, FitRequest(images=1, stack="transformers"))
    none = estimate(MLLAMA, FitRequest(images=0, stack="transformers"))
    assert one.request.seq == none.request.seq  # image tokens are not in the text sequence
    assert one.part("kv cache") > none.part("kv cache")  # but the cross-attention layers keep K/V


def test_paged_engine_reserves_the_context():
    small = estimate(QWEN7, FitRequest(stack="vllm", context=4096))
    big = estimate(QWEN7, FitRequest(stack="vllm", context=32768))
    assert big.part("kv cache") - small.part("kv cache") == 57344 * (32768 - 4096)
    assert small.memory_fraction == 0.9


def test_gradient_checkpointing_and_zero3_cut_memory():
    base = FitRequest(task="full", batch=2, seq=4096, stack="ms-swift", zero=3)
    on = estimate(QWEN7, base, gpus=4)
    off = estimate(QWEN7, replace(base, gradient_checkpointing=False), gpus=4)
    assert off.part("activations") > 5 * on.part("activations")
    eight = estimate(QWEN7, base, gpus=8)
    assert eight.part("weights") == pytest.approx(on.part("weights") / 2)
    assert eight.part("optimizer+grads") == pytest.approx(on.part("optimizer+grads") / 2)


def test_eager_vision_attention_on_a_big_image_costs_gigabytes():
    req = FitRequest(image_tokens=2691, seq=2720, stack="transformers")
    sdpa = estimate(QWEN7, req).part("activations")
    eager = estimate(QWEN7, replace(req, attention="eager")).part("activations")
    assert eager - sdpa > 10 * GIB  # 16 heads x 10764^2 patches of scores, fp32 softmax included
