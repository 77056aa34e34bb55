"""Serving engines as they start (issue 12): vLLM's profile run and KV check, LMDeploy's cache
share, tensor-parallel sizes the engine accepts, vision attention scope per family, resolution
flags, context overflow, rounded suggestions and the --emit launch line."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from provision.errors import ProvisionError
from provision.fit import check_fit, round_down, tp_problem, valid_tp
from provision.hardware.catalogue import target_machine
from provision.memory import (
    FitRequest,
    estimate,
    image_tokens_for,
    kv_bytes,
    resolve_request,
    stacks,
    vision_bytes,
)
from provision.profiles import load_profile
from provision.units import GIB
from tests.cli_helpers import invoke, invoke_json

MLLAMA = load_profile("llama-3.2-11b-vision")
QWEN7 = load_profile("qwen2.5-vl-7b")
INTERNVL1 = load_profile("internvl2-1b")
LLAVA = load_profile("llava-v1.5-7b")


def _check(profile, req, gpu):
    return check_fit(profile, req, target_machine(gpu=gpu))


def test_vllm_profile_run_with_default_max_num_seqs_does_not_fit_the_issue_case():
    """vllm serve Llama-3.2-11B-Vision --max-model-len 1024 on an A100-80GB runs out of memory:
    256 dummy sequences each carry a 4-tile image through the encoder (V0 encoder-decoder)."""
    result = _check(MLLAMA, FitRequest(stack="vllm", context=1024), "A100-80GB")
    assert result.verdict == "does not fit"
    assert result.estimate.engine["runner"] == "V0 encoder-decoder"
    assert result.estimate.engine["profile_images"] == 256
    assert "OutOfMemoryError" in result.reason
    kinds = {s.kind for s in result.suggestions}
    assert "max-num-seqs" in kinds
    eased = _check(
        MLLAMA,
        FitRequest(stack="vllm", context=1024, max_num_seqs=32, enforce_eager=True),
        "A100-80GB",
    )
    assert eased.verdict == "fits"
    assert eased.estimate.part("cuda graphs") == 0


def test_enforce_eager_drops_the_cuda_graph_memory():
    base = estimate(QWEN7, FitRequest(stack="vllm", context=8192))
    eager = estimate(QWEN7, FitRequest(stack="vllm", context=8192, enforce_eager=True))
    graphs = stacks()["vllm"]["engine"]["cuda_graph_gib"] * GIB
    assert base.part("cuda graphs") == pytest.approx(graphs)
    assert base.per_gpu - eager.per_gpu == pytest.approx(graphs)


def test_v1_encoder_budget_caps_the_profile_images():
    """V1 profiles min(cdiv(budget, tokens per item), max_num_seqs x limit) items of the largest
    image; a bigger --max-batched-tokens pushes more images, --limit-mm image=0 none."""
    # video off: at 8192 tokens a 10-frame video (6400 tokens) would be the largest item
    req = FitRequest(stack="vllm", context=8192, max_pixels=1280 * 28 * 28, limit_videos=0)
    one = estimate(QWEN7, req).engine
    assert one["runner"] == "V1" and one["image_tokens_each"] == 1280
    assert one["profile_images"] == -(-8192 // 1280)  # 7
    more = estimate(QWEN7, replace(req, max_batched_tokens=32768)).engine
    assert more["profile_images"] == -(-32768 // 1280)
    few = estimate(QWEN7, replace(req, max_num_seqs=2)).engine
    assert few["profile_images"] == 2
    none = estimate(QWEN7, replace(req, limit_images=0, images=0)).engine
    assert none["profile_images"] == 0


def test_vllm_kv_check_quotes_vllms_error_and_suggests_a_round_context():
    result = _check(QWEN7, FitRequest(stack="vllm", limit_videos=0), "RTX 4090")
    assert result.verdict == "does not fit"
    assert "To serve at least one request with the models's max seq len (128000)" in result.reason
    assert "Try increasing `gpu_memory_utilization` or decreasing `max_model_len`" in result.reason
    gemma = _check(load_profile("gemma-3-12b-it"), FitRequest(stack="vllm"), "A100-40GB")
    context = [s for s in gemma.suggestions if s.kind == "context"]
    n = context[0].change["context"] if context else 0
    assert n >= 1024 and (n & (n - 1) == 0 or (n // 3) & (n // 3 - 1) == 0 and n % 3 == 0)


def test_v0_error_names_the_tokens_that_fit():
    result = _check(MLLAMA, FitRequest(stack="vllm", max_num_seqs=4, enforce_eager=True), "L40S")
    assert result.verdict == "does not fit"
    assert "The model's max seq len (131072) is larger than the maximum number of tokens" in (
        result.reason
    )


def test_lmdeploy_cache_share_of_the_free_memory():
    """LMDeploy gives cache_max_entry_count of what is free after the weights to the KV cache: a
    larger share holds a longer session on the same card."""
    req = FitRequest(stack="lmdeploy", context=8192)
    est = estimate(INTERNVL1, req)
    assert est.engine["cache_max_entry_count"] == 0.8
    assert est.memory_fraction == 1.0
    small = _check(load_profile("internvl2-8b"), req, "RTX 4090")
    tiny_share = _check(
        load_profile("internvl2-8b"), replace(req, cache_max_entry_count=0.01), "RTX 4090"
    )
    assert small.verdict != "does not fit"
    assert tiny_share.verdict == "does not fit" and "session-len 8192" in tiny_share.reason
    with pytest.raises(ProvisionError, match="cache-max-entry-count"):
        estimate(INTERNVL1, replace(req, cache_max_entry_count=1.5))


def test_tensor_parallel_sizes_divide_the_heads():
    """Llama-3.2-11B has 32 heads: vLLM refuses 3 GPUs as a TP size, and its encoder-decoder
    runner refuses pipeline parallelism, so 3 GPUs do not fit and are never suggested."""
    assert not valid_tp(MLLAMA, "vllm", 3) and valid_tp(MLLAMA, "vllm", 4)
    assert valid_tp(MLLAMA, "transformers", 3)  # device_map="auto" splits by layers
    note = tp_problem(MLLAMA, "vllm", 3)
    assert note and "32 heads" in note and "Use 4 GPUs." in note
    assert "pipeline" not in note
    req = FitRequest(stack="vllm", context=8192, max_num_seqs=16, enforce_eager=True)
    result = _check(MLLAMA, req, "RTX 4080")
    three = check_fit(MLLAMA, req, target_machine(gpu="RTX 4080", gpus=3))
    assert three.verdict == "does not fit"  # by memory alone 3 would do; the engine refuses
    assert "Pipeline parallelism is not currently supported with encoder/decoder" in three.reason
    assert [s.change["gpus"] for s in three.suggestions if s.kind == "gpus"] == [4]
    counts = [s.change["gpus"] for s in result.suggestions if s.kind == "gpus"]
    assert counts == [4]
    defaults = check_fit(MLLAMA, FitRequest(stack="vllm"), target_machine(gpu="RTX 3090", gpus=3))
    assert any("refuses tensor parallel size 3" in n for n in defaults.notes)


def test_a_model_the_v1_runner_serves_takes_pipeline_parallelism_instead():
    """Qwen2.5-VL-7B has 28 heads: 3 GPUs are no TP size, but vLLM's V1 runner takes
    --pipeline-parallel-size 3, which the note and the launch line say."""
    note = tp_problem(QWEN7, "vllm", 3)
    assert note and "--pipeline-parallel-size 3" in note
    at_card = FitRequest(stack="vllm", context=32768)
    three = check_fit(QWEN7, at_card, target_machine(gpu="RTX 3090", gpus=3))
    assert three.verdict == "fits"
    code, result = invoke_json(
        *("check", "qwen2.5-vl-7b", "--stack", "vllm", "--gpu", "RTX 3090", "--gpus", "3"),
        *("--context", "32768", "--emit"),
    )
    assert code == 0
    assert "--pipeline-parallel-size 3" in json.dumps(result["launch"])


def test_internvl_attends_per_tile_not_across_tiles():
    """InternViT attends within each 448 px tile: eager attention over 7 tiles costs 7 tiles of
    1025^2 scores, not (7 x 1025)^2."""
    req = resolve_request(INTERNVL1, FitRequest(attention="eager", stack="transformers"))
    eager = vision_bytes(INTERNVL1, req, 1, False)
    sdpa = vision_bytes(INTERNVL1, replace(req, attention="sdpa"), 1, False)
    heads = INTERNVL1.image["encoder_heads"]
    tiles = -(-req.image_tokens * 4 // 1025)
    assert eager - sdpa == pytest.approx(heads * 1025**2 * 10 * tiles)
    assert eager < 2 * GIB


def test_mllama_builds_a_dense_mask_per_image():
    req = resolve_request(MLLAMA, FitRequest(stack="transformers", attention="sdpa"))
    one = vision_bytes(MLLAMA, req, 1, False, n_images=1)
    two = vision_bytes(MLLAMA, req, 1, False, n_images=2)
    assert two - one >= 6404**2 * 2  # the per-image bf16 mask


def test_resolution_flags_become_tokens_by_the_family_rule():
    assert resolve_request(QWEN7, FitRequest(max_pixels=1003520)).image_tokens == 1280
    assert resolve_request(INTERNVL1, FitRequest(max_tiles=12)).image_tokens == 256 * 13
    assert resolve_request(INTERNVL1, FitRequest(max_tiles=1)).image_tokens == 256
    video = resolve_request(QWEN7, FitRequest(max_pixels=100352, frames=12, task="lora"))
    assert video.image_tokens == 128 * 6  # two frames per temporal patch
    with pytest.raises(ProvisionError, match="--max-pixels does not apply"):
        resolve_request(INTERNVL1, FitRequest(max_pixels=1003520))
    with pytest.raises(ProvisionError, match="--max-tiles does not apply"):
        resolve_request(QWEN7, FitRequest(max_tiles=4))
    with pytest.raises(ProvisionError, match="at most 4"):
        resolve_request(MLLAMA, FitRequest(max_tiles=6))


@pytest.mark.parametrize(
    "args",
    [
        ["llama-3.2-11b-vision", "--max-tiles", "2"],
        ["internvl2-1b", "--max-tiles", "6"],
        ["qwen2-vl-2b", "--max-pixels", "1003520"],
        ["qwen2.5-vl-7b", "--frames", "16"],
        ["qwen2.5-vl-7b", "--max-pixels", "100352", "--frames", "12", "--task", "lora"],
    ],
)
def test_check_takes_a_resolution_setting(args):
    """A resolved request keeps the setting that gave its tokens, and the estimate resolves it
    again: before, every --max-tiles, --max-pixels or --frames check stopped with "Give
    --image-tokens or a resolution setting, not both"."""
    code, result = invoke_json("check", *args, "--gpu", "H100-80GB")
    assert code in (0, 1), result
    expect = resolve_request(load_profile(args[0]), _request_of(args[1:]))
    assert result["fit"]["request"]["image_tokens"] == expect.image_tokens
    assert result["fit"]["verdict"] in {"fits", "tight", "does not fit"}


def _request_of(flags: list[str]) -> FitRequest:
    pairs = dict(zip(flags[::2], flags[1::2], strict=True))
    return FitRequest(
        task=pairs.get("--task", "infer"),
        max_tiles=int(pairs["--max-tiles"]) if "--max-tiles" in pairs else None,
        max_pixels=int(pairs["--max-pixels"]) if "--max-pixels" in pairs else None,
        frames=int(pairs["--frames"]) if "--frames" in pairs else None,
    )


def test_image_tokens_and_a_setting_that_disagree_are_refused():
    with pytest.raises(ProvisionError, match="not both"):
        resolve_request(QWEN7, FitRequest(max_pixels=1003520, image_tokens=300))
    resolved = resolve_request(QWEN7, FitRequest(max_pixels=1003520))
    assert resolve_request(QWEN7, resolved) == resolved


def test_a_sample_longer_than_the_context_is_an_error():
    with pytest.raises(ProvisionError, match="longer than llava-v1.5-7b's 4096-token context"):
        resolve_request(LLAVA, FitRequest(images=15))
    with pytest.raises(ProvisionError, match="4096-token context"):
        resolve_request(LLAVA, FitRequest(task="lora", seq=10000))
    with pytest.raises(ProvisionError, match="128000-token context.*max_model_len above"):
        resolve_request(QWEN7, FitRequest(stack="vllm", context=131072))
    # SGLang has no engine table: it refuses a context_length above config.json's all the same
    with pytest.raises(ProvisionError, match="128000-token context.*sglang refuses"):
        resolve_request(QWEN7, FitRequest(stack="sglang", context=131072))


@pytest.mark.parametrize("stack", ["vllm", "lmdeploy"])
def test_a_serving_engine_started_without_a_length_reserves_config_json_s(stack):
    """`vllm serve Qwen/Qwen2.5-VL-7B-Instruct` reserves max_position_embeddings, 128000 tokens,
    not the model card's 32768 (public reports: "The model's max seq len (128000) is larger than
    the maximum number of tokens that can be stored in KV cache")."""
    assert resolve_request(QWEN7, FitRequest(stack=stack)).context == 128000
    assert resolve_request(QWEN7, FitRequest(stack=stack, context=65536)).context == 65536
    # a model whose config says what its card says keeps it
    assert resolve_request(LLAVA, FitRequest(stack=stack)).context == 4096
    # transformers holds what the sample needs, not a reservation
    assert resolve_request(QWEN7, FitRequest(stack="transformers")).context < 32768


def test_the_rope_factor_scales_vllm_s_default_length_and_not_lmdeploy_s():
    """InternVL2-2B's llm_config: max_position_embeddings 32768, rope_scaling dynamic x2. vLLM
    0.8.5 multiplies (65536), LMDeploy 0.7.3 does not (32768); Llama 3.2's llama3 rope and
    Gemma 3's linear one are not multiplied by vLLM."""
    internvl2 = load_profile("internvl2-2b")
    assert resolve_request(internvl2, FitRequest(stack="vllm")).context == 65536
    assert resolve_request(internvl2, FitRequest(stack="lmdeploy")).context == 32768
    assert resolve_request(MLLAMA, FitRequest(stack="vllm")).context == 131072
    gemma = load_profile("gemma-3-12b-it")
    assert resolve_request(gemma, FitRequest(stack="vllm")).context == 131072
    # the same, with the rope_scaling their config.json files carry (the curated profiles keep
    # none; a derived one does): Llama 3.2's llama3 x8 and Gemma 3's linear x8 stay unscaled
    for profile, kind in ((MLLAMA, "llama3"), (gemma, "linear")):
        text = {**profile.text, "rope_type": kind, "rope_factor": 8.0}
        scaled = replace(profile, data={**profile.data, "text": text})
        assert resolve_request(scaled, FitRequest(stack="vllm")).context == 131072, kind
    dynamic = {**internvl2.text, "rope_type": "dynamic", "rope_factor": 8.0}
    assert (
        resolve_request(
            replace(internvl2, data={**internvl2.data, "text": dynamic}), FitRequest(stack="vllm")
        ).context
        == 32768 * 8
    )
    # LMDeploy takes a longer session with a warning; vLLM refuses it
    assert resolve_request(internvl2, FitRequest(stack="lmdeploy", context=65536)).context == 65536
    with pytest.raises(ProvisionError, match="vllm refuses a max_model_len above"):
        resolve_request(internvl2, FitRequest(stack="vllm", context=131072))


def test_qwen7_on_a_4090_with_vllm_s_default_length_is_refused_as_vllm_refuses():
    rc, data = invoke_json(
        *("check", "qwen2.5-vl-7b", "--gpu", "RTX 4090", "--stack", "vllm"),
        *("--limit-mm", "image=1,video=0"),
    )
    assert rc == 1, data
    fit = data["fit"]
    assert fit["verdict"] == "does not fit"
    assert "max seq len (128000)" in json.dumps(fit)
    kv = next(c for c in fit["estimate"]["components"] if c["name"] == "kv cache")
    assert kv["gib"] > 6.8 and "128000 (above the model card's 32768)" in kv["detail"]


@pytest.mark.parametrize(
    ("n", "low", "want"),
    [(90401, 1024, 65536), (2013, 512, 1536), (98304, 1, 98304), (700, 1024, 700), (5, 1, 4)],
)
def test_round_down_gives_values_people_type(n, low, want):
    assert round_down(n, low) == want


# The issue's case: vllm serve Llama-3.2-11B-Vision --max-model-len 1024 on an A100-80GB.
MLLAMA_VLLM_CHECK = (
    *("check", "llama-3.2-11b-vision", "--gpu", "A100-80GB"),
    *("--stack", "vllm", "--context", "1024"),
)


def test_check_cli_new_flags_and_emit_json():
    rc, data = invoke_json(
        *MLLAMA_VLLM_CHECK,
        *("--max-num-seqs", "32", "--enforce-eager", "--limit-mm", "image=1", "--emit"),
    )
    assert rc == 0, data
    assert data["fit"]["verdict"] == "fits"
    launch = data["launch"]
    assert launch["version"] == "0.8.5" and launch["stack"] == "vllm"
    argv = launch["argv"]
    assert argv[:3] == ["vllm", "serve", "meta-llama/Llama-3.2-11B-Vision-Instruct"]
    for flag, value in (
        ("--max-model-len", "1024"),
        ("--max-num-seqs", "32"),
        ("--gpu-memory-utilization", "0.9"),
        ("--limit-mm-per-prompt", '{"image": 1}'),
    ):
        assert argv[argv.index(flag) + 1] == value
    assert "--enforce-eager" in argv


def test_emit_applies_the_suggestion_that_makes_it_fit():
    rc, data = invoke_json(*MLLAMA_VLLM_CHECK, "--emit")
    assert rc == 1
    argv = data["launch"]["argv"]
    first = data["fit"]["suggestions"][0]
    assert first["kind"] == "max-num-seqs" and data["launch"]["applies"] == first["text"]
    assert argv[argv.index("--max-num-seqs") + 1] == str(first["change"]["max_num_seqs"])


def test_lmdeploy_and_ms_swift_launch_lines():
    _, out = invoke_json("check", "internvl2-1b", "--gpu", "RTX 4090", "--emit")
    argv = out["launch"]["argv"]
    assert argv[:4] == ["lmdeploy", "serve", "api_server", "OpenGVLab/InternVL2-1B"]
    assert (
        argv[argv.index("--session-len") + 1] == "32768"
    )  # LMDeploy reads llm_config max_position_embeddings
    lora = ("check", "qwen2.5-vl-7b", "--task", "lora", "--gpu", "A100-80GB", "--emit")
    _, swift = invoke_json(*lora)
    argv = swift["launch"]["argv"]
    assert argv[0] == "MAX_PIXELS=1003520" and argv[1:3] == ["swift", "sft"]
    assert argv[argv.index("--train_type") + 1] == "lora"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--limit-mm", "images=2"], "--limit-mm 'images=2' is not image=N"),
        (["--max-num-seqs", "0"], "--max-num-seqs 0 is out of range"),
        (["--images", "15"], "4096-token context"),
    ],
)
def test_bad_engine_flags_exit_2_with_one_message(args, message):
    result = invoke("check", "llava-v1.5-7b", "--gpu", "RTX 3090", *args)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert message in " ".join(out.split()) and "Traceback" not in out


def test_xtuner_uses_the_models_max_dynamic_patch_by_default():
    """XTuner's InternVL configs take max_dynamic_patch 12 (+ thumbnail): 3328 image tokens."""
    internvl2 = load_profile("internvl2-2b")
    xtuner = resolve_request(internvl2, FitRequest(task="lora", stack="xtuner"))
    assert xtuner.image_tokens == 3328
    swift = resolve_request(internvl2, FitRequest(task="lora", stack="ms-swift"))
    assert swift.image_tokens == internvl2.image["tokens"]
    # a family that takes fewer tiles gets its own largest, not an error about a --max-tiles 12
    # nobody typed (Llama 3.2 Vision: 4 tiles)
    mllama = resolve_request(MLLAMA, FitRequest(task="lora", stack="xtuner"))
    assert mllama.image_tokens == resolve_request(MLLAMA, FitRequest(max_tiles=4)).image_tokens


def test_llava_quick_start_loads_the_model_twice():
    """LLaVA's README quick-start loads the weights twice: on an RTX 3090 it does not fit (seed
    004); run_llava.py alone (--stack llava-run) loads once and fits."""
    twice = _check(LLAVA, FitRequest(), "RTX 3090")
    once = _check(LLAVA, FitRequest(stack="llava-run"), "RTX 3090")
    assert twice.verdict == "does not fit"
    assert once.verdict == "fits"
    assert twice.estimate.part("weights") == pytest.approx(2 * once.estimate.part("weights"))
    assert "loads the model 2 times" in twice.estimate.components[0].detail


def test_lora_rank_and_direction_check_take_the_run_shape():
    rc, data = invoke_json(
        "check", "internvl2-2b", "--task", "lora", "--lora-rank", "128", "--gpu", "A100-80GB"
    )
    assert data["fit"]["request"]["lora_rank"] == 128
    rc, small = invoke_json(
        "direction", "check", "internvl2-lmdeploy-xtuner", "--task", "lora", "--gpu", "A100-80GB"
    )
    rc, big = invoke_json(
        "direction",
        "check",
        "internvl2-lmdeploy-xtuner",
        "--task",
        "lora",
        "--batch",
        "4",
        "--seq",
        "4096",
        "--gpu",
        "A100-80GB",
    )
    text = json.dumps(big)
    assert '"batch": 4' in text and '"seq": 4096' in text
    assert '"task": "infer"' not in text  # only the task asked for
    assert json.dumps(small) != text


def test_an_fp32_load_doubles_the_16_bit_weights():
    bf16 = estimate(LLAVA, FitRequest(stack="llava-run"))
    fp32 = estimate(LLAVA, FitRequest(stack="llava-run", dtype="fp32"))
    assert fp32.part("weights") == pytest.approx(2 * bf16.part("weights"))
    int4 = estimate(LLAVA, FitRequest(stack="llava-run", quant="int4"))
    int4_fp32 = estimate(LLAVA, FitRequest(stack="llava-run", quant="int4", dtype="fp32"))
    assert int4.part("weights") < int4_fp32.part("weights") < fp32.part("weights")
    with pytest.raises(ProvisionError, match="Unknown --dtype 'fp64'"):
        estimate(LLAVA, FitRequest(dtype="fp64"))


def test_lmdeploy_says_what_its_cache_share_holds():
    """The table lists what one session needs; LMDeploy takes its share of the free memory on top,
    and the verdict's larger figure is explained, with the flag that sets it."""
    machine = target_machine(gpu="A100-80GB")
    half = check_fit(QWEN7, FitRequest(stack="lmdeploy", cache_max_entry_count=0.5), machine)
    note = next(n for n in half.notes if n.startswith("LMDeploy takes 0.5"))
    assert "--cache-max-entry-count" in note
    held = half.gpus[0].need
    assert held > half.estimate.per_gpu
    assert f"holds {held / GIB:.1f} GiB" in note
    default = check_fit(QWEN7, FitRequest(stack="lmdeploy"), machine)
    assert default.gpus[0].need > held  # the default share (0.8) holds more
    vllm = check_fit(QWEN7, FitRequest(stack="vllm"), machine)
    assert not [n for n in vllm.notes if n.startswith("LMDeploy")]


def test_the_weights_line_names_the_width_they_are_held_at():
    machine = target_machine(gpu="A100-80GB")
    fp32 = check_fit(QWEN7, FitRequest(task="lora", dtype="fp32"), machine).estimate
    bf16 = check_fit(QWEN7, FitRequest(task="lora"), machine).estimate
    line = {c.name: c for c in fp32.components}["weights"]
    assert line.detail.startswith("fp32 base model")
    assert line.bytes == pytest.approx(2 * {c.name: c for c in bf16.components}["weights"].bytes)
    infer = check_fit(QWEN7, FitRequest(dtype="fp32"), machine).estimate
    assert {c.name: c for c in infer.components}["weights"].detail.startswith("fp32, ")
    xtuner = check_fit(INTERNVL1, FitRequest(task="lora", stack="xtuner"), machine).estimate
    assert {c.name: c for c in xtuner.components}["weights"].detail.startswith("4-byte base model")


def test_a_qwen_video_takes_the_processors_video_budget():
    """qwen-vl-utils sizes a video's frames by its own budget, not the image default: at most 768
    tokens per frame pair, and 115200 for the whole video. 64 frames are 32 pairs x 768 = 24576
    tokens, inside the 32768-token context (before: 32 x 1280 = 40960, an error)."""
    assert resolve_request(QWEN7, FitRequest(frames=64)).image_tokens == 32 * 768
    assert resolve_request(QWEN7, FitRequest(frames=16)).image_tokens == 8 * 768
    with pytest.raises(ProvisionError, match=r"1 video\(s\) of 256 frames x 98304 tokens") as err:
        resolve_request(QWEN7, FitRequest(frames=256))
    assert "fewer --frames" in err.value.hint
    # 2000 frames: the total budget shrinks each pair below the cap, to the floor of 134.
    assert image_tokens_for(QWEN7, FitRequest(frames=2000)) == 1000 * 134
    # --max-pixels still sets the frame size the user asked for.
    asked = resolve_request(QWEN7, FitRequest(frames=64, max_pixels=200704))
    assert asked.image_tokens == 32 * 256
    result = invoke("check", "qwen2.5-vl-7b", "--frames", "64", "--gpu", "H100-80GB")
    assert result.returncode == 0, result.stderr
    assert "1 video(s) of 64 frames x 24576 tokens" in result.stdout


def test_vllm_counts_a_sliding_layer_at_its_window_plus_the_batched_tokens():
    """vLLM 0.8.5's start-up check (SlidingWindowSpec.max_memory_usage_bytes) holds a sliding
    layer at min(window - 1 + max_num_batched_tokens, max_model_len) tokens + one block: for
    Gemma 3 at 8192 batched tokens that is 9231 tokens, not the 1024 of the window."""
    gemma = load_profile("gemma-3-12b-it")
    t = gemma.text
    est = estimate(gemma, resolve_request(gemma, FitRequest(stack="vllm", context=131072)))
    kv = next(c for c in est.components if c.name == "kv cache")
    per_token = 2 * t["kv_heads"] * t["head_dim"] * 2
    sliding = t["layers"] - t["global_layers"]
    want = per_token * (t["global_layers"] * 131072 + sliding * (1024 - 1 + 8192 + 16))
    assert kv.bytes == pytest.approx(want)
    # transformers' cache keeps the window only
    plain = kv_bytes(gemma, 131072, 1)
    assert plain == per_token * (t["global_layers"] * 131072 + sliding * 1024) < kv.bytes
    # a context inside the window plus the batch holds every token in every layer
    short = estimate(gemma, resolve_request(gemma, FitRequest(stack="vllm", context=4096)))
    kv_short = next(c for c in short.components if c.name == "kv cache")
    assert kv_short.bytes == pytest.approx(per_token * (t["layers"] * 4096 + sliding * 16))


def test_vllm_on_a_gpu_below_compute_capability_8_profiles_as_its_v0_engine():
    """vLLM 0.8.5 falls back to V0 below compute capability 8.0 (T4, V100). V0's profile run
    takes max(max_model_len, 5120) tokens in min(256, tokens // one prompt's image tokens)
    sequences, each with its largest image: for Qwen2-VL-2B at 32768 with video off that is 2
    images of 16384 tokens, where V1 on an Ampere card runs 8192 tokens and 1 image."""
    qwen2 = load_profile("qwen2-vl-2b")
    images_only = FitRequest(stack="vllm", limit_videos=0)
    t4 = _check(qwen2, images_only, "T4")
    ampere = _check(qwen2, images_only, "RTX 4090")
    assert t4.estimate.engine["runner"] == "V0" and ampere.estimate.engine["runner"] == "V1"
    assert t4.request.vllm_v0 and not ampere.request.vllm_v0
    assert t4.estimate.engine["max_num_batched_tokens"] == 32768
    assert t4.estimate.engine["profile_images"] == 2
    assert ampere.estimate.engine["profile_images"] == 1
    # V0 samples over its 2 sequences, V1 over its 256 dummy requests
    assert t4.estimate.engine["sampler_rows"] == 2 and ampere.estimate.engine["sampler_rows"] == 256
    # a shorter context shrinks V0's profile run (5120 at least), not V1's
    short = _check(qwen2, replace(images_only, context=4096), "T4")
    assert short.estimate.engine["max_num_batched_tokens"] == 5120
    assert short.estimate.engine["profile_images"] == 1
    # V0's refusal is V0's message
    tight = _check(qwen2, FitRequest(stack="vllm", memory_fraction=0.5), "T4")
    assert tight.verdict == "does not fit"
    assert "is larger than the maximum number of tokens that can be stored" in tight.reason


def test_vllm_v1_profiles_the_largest_video_when_it_is_larger_than_an_image():
    """vLLM 0.8.5 (V1 profile_run) encodes one item of the modality whose largest item is
    largest. Qwen2.5-VL takes video (limit 1 by default): at its default 128000-token context the
    largest dummy video is 12 frames of the largest image, 6 x 16384 = 98304 tokens
    (qwen2_vl.py get_num_frames_with_most_features); at 32768 it is no larger than an image."""
    long = _check(QWEN7, FitRequest(stack="vllm"), "A100-80GB").estimate.engine
    assert (long["profile_modality"], long["image_tokens_each"]) == ("video", 98304)
    assert long["profile_images"] == 1
    short = _check(QWEN7, FitRequest(stack="vllm", context=32768), "A100-80GB").estimate.engine
    assert (short["profile_modality"], short["image_tokens_each"]) == ("image", 16384)
    off = _check(QWEN7, FitRequest(stack="vllm", limit_videos=0), "A100-80GB").estimate.engine
    assert off["profile_modality"] == "image"
    # a family without video never profiles one
    gemma = _check(load_profile("gemma-3-12b-it"), FitRequest(stack="vllm"), "A100-80GB")
    assert gemma.estimate.engine["profile_modality"] == "image"
    # on a 40 GB card at 0.85 the video decides it, and turning video off is offered
    result = _check(QWEN7, FitRequest(stack="vllm", memory_fraction=0.85), "A100-40GB")
    assert result.verdict == "does not fit"
    offered = [s for s in result.suggestions if s.kind == "limit-mm"]
    assert offered and offered[0].change == {"limit_videos": 0}
    assert "--limit-mm image=1,video=0" in offered[0].text


def test_vllm_v0_profiles_each_sequence_s_images_and_video():
    """V0 (_dummy_run) fits as many prompts as the batch holds, each with its images and its
    video: Qwen2-VL-2B at 32768 on a T4 is one prompt of an image and a 2-frame video."""
    qwen2 = load_profile("qwen2-vl-2b")
    engine = _check(qwen2, FitRequest(stack="vllm"), "T4").estimate.engine
    assert engine["profile_images"] == 1 and engine["profile_videos"] == 1
    no_video = _check(qwen2, FitRequest(stack="vllm", limit_videos=0), "T4").estimate.engine
    assert no_video["profile_images"] == 2 and no_video["profile_videos"] == 0


def test_vllm_v1_defaults_follow_the_card():
    """`vllm serve` on V1 (arg_utils.py _set_default_args_v1, 0.8.5): 2048 batched tokens and 256
    sequences under 70 GiB, 8192 and 1024 above."""
    small = _check(QWEN7, FitRequest(stack="vllm", context=8192), "RTX 4090").estimate.engine
    large = _check(QWEN7, FitRequest(stack="vllm", context=8192), "H100-80GB").estimate.engine
    assert (small["max_num_batched_tokens"], small["max_num_seqs"]) == (2048, 256)
    assert (large["max_num_batched_tokens"], large["max_num_seqs"]) == (8192, 1024)
    assert large["sampler_rows"] == 1024
    given = FitRequest(stack="vllm", context=8192, max_batched_tokens=4096, max_num_seqs=8)
    mine = _check(QWEN7, given, "H100-80GB").estimate.engine
    assert (mine["max_num_batched_tokens"], mine["max_num_seqs"], mine["sampler_rows"]) == (
        4096,
        8,
        8,
    )


def test_vllm_v1_peak_is_the_largest_phase_not_the_sum():
    """profile_run frees the encoder's activations before the forward, keeping its outputs:
    the peak is max(encoder, outputs + forward, outputs + sampler)."""
    req = FitRequest(stack="vllm", context=8192, limit_videos=0)
    result = _check(QWEN7, req, "H100-80GB")
    engine, t = result.estimate.engine, QWEN7.text
    probe = replace(result.request, image_tokens=16384)
    encoder = vision_bytes(QWEN7, probe, 1, False, n_images=1, memory_efficient=True)
    kept = 16384 * t["hidden"] * 2
    phases = engine["profile_phases_bytes"]
    assert phases["the encoder"] >= encoder and min(phases.values()) >= kept
    peak = result.estimate.part("activations")
    assert peak == max(phases.values()) < sum(phases.values())  # the largest, not the sum
    assert not [c for c in result.estimate.components if c.name == "sampler"]  # inside the peak
    # Mllama's V0 encoder-decoder runner runs them inside one forward: the sum stays
    mllama = _check(MLLAMA, FitRequest(stack="vllm", context=1024), "H100-80GB")
    assert "at once" in next(
        c.detail for c in mllama.estimate.components if c.name == "activations"
    )


def test_cuda_graphs_come_out_of_what_the_share_leaves():
    """Graphs are captured after the KV cache took the share: they are not in the verdict's
    figure, and a share that leaves no room for them is refused as vLLM fails at capture."""
    req = FitRequest(stack="vllm", context=8192)
    result = _check(QWEN7, req, "RTX 4090")
    graphs = result.estimate.part("cuda graphs")
    assert graphs > 0 and result.gpus[0].need == pytest.approx(result.estimate.per_gpu - graphs)
    eager = _check(QWEN7, replace(req, enforce_eager=True), "RTX 4090")
    assert eager.gpus[0].need == pytest.approx(result.gpus[0].need)
    squeezed = _check(load_profile("qwen2-vl-2b"), replace(req, memory_fraction=0.99), "RTX 4090")
    assert squeezed.verdict == "does not fit"
    assert "capturing CUDA graphs" in squeezed.reason
    assert _check(
        load_profile("qwen2-vl-2b"),
        replace(req, memory_fraction=0.99, enforce_eager=True),
        "RTX 4090",
    ).verdict in ("fits", "tight")


def test_lmdeploy_s_pytorch_engine_keeps_the_prefill_logits_free_before_its_share():
    """LMDeploy 0.7.3 runs Qwen2.5-VL on its PyTorch engine, which keeps
    max_prefill_token_num x vocab x 7 bytes free before taking cache_max_entry_count of the rest
    (executor/base.py update_configs); TurboMind (InternVL2) has no such term. lmdeploy#3280:
    Qwen2.5-VL-7B at --cache-max-entry-count 0.99 with two images starts on an H100."""
    req = FitRequest(
        stack="lmdeploy", context=32768, cache_max_entry_count=0.99, images=2,
        image_tokens=2691, seq=5500,
    )  # fmt: skip
    result = _check(QWEN7, req, "H100-80GB")
    engine = result.estimate.engine
    assert engine["backend"] == "pytorch"
    assert engine["runtime_bytes"] == 8192 * QWEN7.text["vocab"] * 7
    assert result.verdict in ("fits", "tight")
    assert any("keeps free for the prefill's logits" in n for n in result.notes)
    internvl = _check(load_profile("internvl2-2b"), FitRequest(stack="lmdeploy"), "A100-80GB")
    assert internvl.estimate.engine["backend"] == "turbomind"
    assert internvl.estimate.engine["runtime_bytes"] == 0


def test_memory_other_processes_hold_counts_against_the_engines():
    """vLLM 0.8.5 counts every byte in use on the device that is not its own as non-torch
    memory inside its share; LMDeploy sizes its cache from what is free. On this machine (NVML's
    free memory known) 14 GiB held by another process turn a fit into a refusal
    (vllm#18124: Qwen2.5-VL-3B at 0.3 of an 80 GB card, "No available memory for the cache
    blocks")."""
    machine = target_machine(gpu="A100-80GB")
    busy = replace(
        machine,
        gpus=[replace(machine.gpus[0], memory_free=machine.gpus[0].memory_total - 14 * GIB)],
    )
    req = FitRequest(stack="vllm", memory_fraction=0.3, context=32768)
    qwen3b = load_profile("qwen2.5-vl-3b")
    assert check_fit(qwen3b, req, machine).verdict == "fits"
    shared = check_fit(qwen3b, req, busy)
    assert shared.verdict == "does not fit"
    assert shared.gpus[0].need > check_fit(qwen3b, req, machine).gpus[0].need + 13 * GIB
    lmdeploy = FitRequest(stack="lmdeploy", context=32768)
    alone = check_fit(QWEN7, lmdeploy, machine).gpus[0]
    crowded = check_fit(QWEN7, lmdeploy, busy).gpus[0]
    assert crowded.usable == pytest.approx(machine.gpus[0].memory_total - 14 * GIB)
    # its cache share (0.8) is of 14 GiB less
    assert alone.need - crowded.need == pytest.approx(0.8 * 14 * GIB)
    # the held memory is in the engine's need already: no note that it is short of free memory
    roomy = replace(req, memory_fraction=0.9, context=8192)
    half = replace(machine.gpus[0], memory_free=machine.gpus[0].memory_total - 40 * GIB)
    held = check_fit(qwen3b, roomy, replace(machine, gpus=[half]))
    assert held.verdict == "fits" and held.gpus[0].free < held.gpus[0].need
    assert not [n for n in held.notes if "free now" in n]
    # transformers sizes nothing from the card: there the note says why a fit may fail now
    starved = replace(machine, gpus=[replace(machine.gpus[0], memory_free=2 * GIB)])
    plain = check_fit(qwen3b, FitRequest(stack="transformers"), starved)
    assert plain.verdict == "fits" and any("2.0 GiB free now" in n for n in plain.notes)


def test_when_no_single_change_fits_the_levers_are_combined():
    """Llama 3.2 Vision on one 4090 with vLLM: no single lever is enough, so the check offers
    them together, and the launch line carries every flag of it."""
    result = _check(MLLAMA, FitRequest(stack="vllm"), "RTX 4090")
    assert result.verdict == "does not fit"
    combined = [s for s in result.suggestions if s.kind == "combined"]
    assert len(combined) == 1
    change = combined[0].change
    assert change["context"] == 8192 and change["quant"] in ("int8", "int4")
    again = _check(MLLAMA, replace(FitRequest(stack="vllm"), **change), "RTX 4090")
    assert again.verdict == "fits"
    # a model one lever makes fit gets no combined suggestion
    assert not [
        s
        for s in _check(QWEN7, FitRequest(stack="vllm"), "RTX 4090").suggestions
        if s.kind == "combined"
    ]


def test_a_quantised_launch_line_names_the_build_it_needs_not_the_16_bit_repo():
    rc, data = invoke_json(
        *("check", "qwen2.5-vl-7b", "--gpu", "RTX 4080", "--stack", "vllm"),
        *("--quant", "int4", "--context", "8192", "--emit"),
    )
    launch = data["launch"]
    assert "Qwen/Qwen2.5-VL-7B-Instruct" not in launch["argv"]
    assert launch["argv"][2] == "YOUR_INT4_BUILD_OF_Qwen2.5-VL-7B-Instruct"
    assert launch["runs_as_printed"] is False
    assert any("AWQ or GPTQ build of Qwen/Qwen2.5-VL-7B-Instruct" in n for n in launch["notes"])
