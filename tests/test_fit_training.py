"""The training set-ups people run (issue 12 item 3): what training does to the vision tower,
its own checkpointing, ZeRO-3 sharding of the frozen base under LoRA, ZeRO offload, and a
training reserve that also holds for small models."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from provision.errors import ProvisionError
from provision.fit import check_fit
from provision.hardware.catalogue import target_machine
from provision.memory import (
    FitRequest,
    coefficients,
    estimate,
    lora_params,
    resolve_request,
    vision_lora_params,
)
from provision.profiles import load_profile
from provision.units import GIB
from tests.cli_helpers import invoke, invoke_json, result_of

QWEN7 = load_profile("qwen2.5-vl-7b")
INTERNVL2 = load_profile("internvl2-2b")
SMOL = load_profile("smolvlm-256m")

LORA = FitRequest(task="lora", stack="ms-swift", seq=2048, images=1, image_tokens=1280)


def test_train_vision_frozen_lora_full_cost_more_in_that_order():
    frozen = estimate(QWEN7, LORA)
    lora = estimate(QWEN7, replace(LORA, train_vision="lora"))
    full = estimate(QWEN7, replace(LORA, train_vision="full"))
    # LoRA on the tower adds its adapters (qkv, proj, fc1, fc2 of every block) to the LoRA state.
    added = lora.part("lora state") - frozen.part("lora state")
    per = coefficients()["optimizer"]["lora_bytes_per_param"]
    assert added == pytest.approx(vision_lora_params(QWEN7, 8) * per)
    assert lora.part("lora state") == pytest.approx(
        (lora_params(QWEN7, 8) + vision_lora_params(QWEN7, 8)) * per
    )
    # A trained tower keeps what backward needs: more activations than a frozen one.
    assert lora.part("activations") > frozen.part("activations")
    # Full training of the tower: its weights get AdamW states and gradients.
    vision = QWEN7.params["vision"]
    assert full.part("optimizer+grads") == pytest.approx(
        vision * coefficients()["optimizer"]["full_bytes_per_param"]
    )
    assert frozen.per_gpu < lora.per_gpu < full.per_gpu


def test_a_bool_train_vision_reads_as_full_or_frozen():
    assert FitRequest(train_vision=True).train_vision == "full"
    assert FitRequest(train_vision=False).train_vision == "frozen"
    with pytest.raises(ProvisionError, match="Unknown --train-vision 'half'"):
        estimate(QWEN7, FitRequest(task="lora", train_vision="half"))
    with pytest.raises(ProvisionError, match="needs a training task"):
        estimate(QWEN7, FitRequest(train_vision="lora"))


def test_vision_checkpointing_is_separate_from_the_language_models():
    full = replace(LORA, train_vision="full")
    on = estimate(QWEN7, replace(full, vision_gradient_checkpointing=True))
    off = estimate(QWEN7, replace(full, vision_gradient_checkpointing=False))
    assert off.part("activations") > on.part("activations") + 1 * GIB
    # The language model's checkpointing is untouched: logits, state and weights are the same.
    for name in ("weights", "logits", "optimizer+grads", "lora state"):
        assert off.part(name) == on.part(name)
    # A frozen tower keeps nothing for backward, so its checkpointing changes nothing.
    frozen_on = estimate(QWEN7, replace(LORA, vision_gradient_checkpointing=True))
    frozen_off = estimate(QWEN7, replace(LORA, vision_gradient_checkpointing=False))
    assert frozen_on.per_gpu == frozen_off.per_gpu


def test_zero3_shards_the_frozen_base_under_lora():
    z2 = estimate(QWEN7, replace(LORA, zero=2), gpus=4)
    z3 = estimate(QWEN7, replace(LORA, zero=3), gpus=4)
    assert z3.part("weights") == pytest.approx(z2.part("weights") / 4)
    gathered = z3.part("zero-3 gathered")
    assert 0 < gathered < z2.part("weights") / 4  # a few layers, never the whole model
    assert z2.part("zero-3 gathered") == 0
    one = estimate(QWEN7, replace(LORA, zero=3), gpus=1)
    assert one.part("weights") == z2.part("weights")  # nothing to shard over on one GPU


def test_cpu_offload_moves_the_optimizer_to_ram():
    full = FitRequest(task="full", stack="ms-swift", seq=2048, zero=2)
    base = estimate(QWEN7, full, gpus=2)
    off = estimate(QWEN7, replace(full, cpu_offload=True), gpus=2)
    language = QWEN7.params["language"]
    # ZeRO-2 offload keeps only the 16-bit gradient partition on the GPU.
    assert off.part("optimizer+grads") == pytest.approx(2.0 * language / 2)
    assert base.part("optimizer+grads") > 3 * off.part("optimizer+grads")
    note = next(c for c in off.components if c.name == "cpu offload")
    host_gib = float(note.detail.split(" GiB")[0])
    assert host_gib == pytest.approx(language * 16 / GIB, rel=0.01)  # fp32 master, moments, grads
    z3 = estimate(QWEN7, replace(full, zero=3, cpu_offload=True), gpus=2)
    assert z3.part("weights") == 0 and z3.part("zero-3 gathered") > 0


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (FitRequest(task="lora", zero=0, cpu_offload=True), "needs a ZeRO stage"),
        (FitRequest(cpu_offload=True), "a training setting"),
    ],
)
def test_cpu_offload_needs_training_and_a_zero_stage(request_, message):
    with pytest.raises(ProvisionError, match=message):
        estimate(QWEN7, request_)


def test_training_reserve_scales_down_for_small_models():
    ovh = coefficients()["overhead"]
    small = estimate(SMOL, FitRequest(task="lora", seq=1024))
    big = estimate(QWEN7, LORA)
    assert big.part("training reserve") == pytest.approx(ovh["train_reserve_gib"] * GIB)
    live = sum(c.bytes for c in small.components if c.name not in ("overhead", "training reserve"))
    assert small.part("training reserve") == pytest.approx(ovh["train_reserve_share"] * live)
    assert small.part("training reserve") < 1 * GIB  # a flat 4 GiB was more than the whole run


def test_suggestions_name_zero3_and_offload_for_a_lora_that_does_not_fit():
    req = FitRequest(task="lora", stack="ms-swift", seq=4096, zero=2, batch=1)
    result = check_fit(QWEN7, req, target_machine(gpu="RTX 3090", gpus=4))
    assert result.verdict == "does not fit"
    kinds = {s.kind: s for s in result.suggestions}
    assert "zero" in kinds and kinds["zero"].change == {"zero": 3}
    for s in result.suggestions:
        if s.kind in ("zero", "cpu-offload"):
            fixed = replace(req, **s.change)
            again = check_fit(QWEN7, fixed, target_machine(gpu="RTX 3090", gpus=4))
            assert again.verdict in ("fits", "tight")


def test_check_cli_takes_the_training_flags():
    args = ("check", "internvl2-2b", "--task", "lora", "--gpu", "A100-40GB", "--gpus", "2")
    flags = ("--train-vision", "lora", "--no-vision-checkpointing", "--zero", "3", "--cpu-offload")
    result = invoke("--json", *args, *flags)
    assert result.returncode == 0, result.stdout + result.stderr
    data = result_of(result)  # the envelope's result, contract checked
    names = {c["name"] for c in data["fit"]["estimate"]["components"]}
    assert {"cpu offload", "zero-3 gathered", "lora state"} <= names
    req = data["fit"]["request"]
    assert req["train_vision"] == "lora" and req["vision_gradient_checkpointing"] is False
    assert req["cpu_offload"] is True
    bad = invoke(*args, "--train-vision", "half")
    assert bad.returncode == 2 and "half" in bad.stdout + bad.stderr
    no_zero = invoke(*args, "--zero", "0", "--cpu-offload")
    out = no_zero.stdout + no_zero.stderr
    assert no_zero.returncode == 2 and "--zero 2" in out and "Traceback" not in out


# --- launch lines for XTuner and LLaMA-Factory (issue 12 item 5) ---------------------------------


def _launch(profile, req, gpus=1):
    from provision.launch import launch_for
    from provision.memory import resolve_request

    return launch_for(profile, resolve_request(profile, req), gpus)


def _flag(argv, flag):
    return argv[argv.index(flag) + 1]


def test_xtuner_line_names_the_config_and_overrides_its_keys():
    req = FitRequest(task="lora", batch=4, lora_rank=128, zero=2, cpu_offload=True)
    launch = _launch(INTERNVL2, replace(req, train_vision="full"), gpus=2)
    argv = launch.argv
    assert argv[:4] == [
        "NPROC_PER_NODE=2",
        "xtuner",
        "train",
        "internvl_v2_internlm2_2b_lora_finetune",
    ]
    assert _flag(argv, "--deepspeed") == "deepspeed_zero2_offload"
    overrides = argv[argv.index("--cfg-options") + 1 :]
    assert "train_dataloader.batch_size=4" in overrides
    assert "model.llm_lora.r=128" in overrides
    assert "model.freeze_visual_encoder=False" in overrides  # mmengine reads Python booleans
    # XTuner's default resolution is the model's max_dynamic_patch 12: 13 tiles x 256 + text.
    assert "train_dataloader.dataset.max_length=3584" in overrides
    assert launch.version == "0.1.23" and not launch.notes
    full = _launch(INTERNVL2, FitRequest(task="full", zero=3))
    assert full.argv[2] == "internvl_v2_internlm2_2b_finetune"
    assert _flag(full.argv, "--deepspeed") == "deepspeed_zero3"


def test_xtuner_says_what_its_line_cannot_express():
    one_b = _launch(load_profile("internvl2-1b"), FitRequest(task="lora"))
    assert one_b.argv[2] == "YOUR_XTUNER_CONFIG.py"
    assert any("no config for internvl2-1b" in n for n in one_b.notes)
    vision_lora = _launch(INTERNVL2, FitRequest(task="lora", train_vision="lora"))
    assert not any("freeze_visual_encoder" in a for a in vision_lora.argv)
    assert any("--train-vision lora" in n for n in vision_lora.notes)


def test_llama_factory_line():
    req = FitRequest(
        task="qlora",
        stack="llama-factory",
        batch=2,
        seq=4096,
        zero=3,
        cpu_offload=True,
        gradient_checkpointing=False,
    )
    launch = _launch(QWEN7, req, gpus=4)
    argv = launch.argv
    # DeepSpeed only starts under torchrun in 0.9.2 (FORCE_TORCHRUN=1, tests/test_train_flags.py).
    assert argv[:2] == ["FORCE_TORCHRUN=1", "NPROC_PER_NODE=4"]
    assert argv[2:4] == ["llamafactory-cli", "train"]
    assert _flag(argv, "--model_name_or_path") == "Qwen/Qwen2.5-VL-7B-Instruct"
    assert _flag(argv, "--finetuning_type") == "lora" and _flag(argv, "--quantization_bit") == "4"
    assert _flag(argv, "--per_device_train_batch_size") == "2"
    assert _flag(argv, "--cutoff_len") == "4096"
    assert _flag(argv, "--disable_gradient_checkpointing") == "true"
    assert _flag(argv, "--deepspeed") == "examples/deepspeed/ds_z3_offload_config.json"
    assert _flag(argv, "--image_max_pixels") == "1003520"
    assert "--freeze_vision_tower" not in argv  # frozen is LLaMA-Factory's default
    lora_vit = _launch(QWEN7, FitRequest(task="lora", stack="llama-factory", train_vision="lora"))
    assert _flag(lora_vit.argv, "--freeze_vision_tower") == "false"
    # LLaMA-Factory ships no ZeRO-1 config: no flag, and a note instead of a wrong path.
    z1 = _launch(QWEN7, FitRequest(task="lora", stack="llama-factory", zero=1), gpus=2)
    assert "--deepspeed" not in z1.argv and any("ZeRO-1" in n for n in z1.notes)
    trusted = _launch(INTERNVL2, FitRequest(task="lora", stack="llama-factory"))
    assert "--trust_remote_code" in trusted.argv


def test_ms_swift_line_takes_offload_and_the_vision_tower():
    req = FitRequest(task="lora", zero=3, cpu_offload=True, train_vision="lora")
    argv = _launch(QWEN7, req, gpus=2).argv
    assert _flag(argv, "--deepspeed") == "zero3_offload"
    assert _flag(argv, "--freeze_vit") == "false"


def test_emit_prints_the_training_line_and_its_notes():
    args = ("check", "internvl2-1b", "--task", "lora", "--gpu", "A100-80GB", "--emit")
    result = invoke(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "xtuner train YOUR_XTUNER_CONFIG.py --cfg-options" in result.stdout
    assert "note: xtuner ships no config for internvl2-1b" in result.stdout
    launch = result_of(invoke("--json", *args))["launch"]
    assert launch["stack"] == "xtuner" and launch["notes"]


def test_more_gpus_with_zero3_is_suggested_for_lora_too():
    """Under LoRA, ZeRO-3 splits the frozen base: more GPUs help, where before only full
    fine-tuning got this suggestion."""
    req = FitRequest(task="lora", stack="ms-swift", seq=2048)
    result = check_fit(load_profile("gemma-3-12b-it"), req, target_machine(gpu="RTX 3090"))
    gpus = next(s for s in result.suggestions if s.kind == "gpus")
    assert gpus.change["zero"] == 3 and gpus.change["gpus"] > 1
    after = check_fit(
        load_profile("gemma-3-12b-it"),
        replace(req, zero=3),
        target_machine(gpu="RTX 3090", gpus=gpus.change["gpus"]),
    )
    assert after.verdict == "fits"


def test_a_stack_with_its_own_lora_rank_is_sized_and_launched_at_it():
    """XTuner's InternVL configs set r=128 (issue 12 item 8): that is the run a user gets, so it is
    what the check sizes and what the launch line passes, unless --lora-rank says otherwise."""
    internvl = load_profile("internvl2-2b")
    xtuner = resolve_request(internvl, FitRequest(task="lora", stack="xtuner"))
    assert xtuner.lora_rank == 128
    assert resolve_request(internvl, FitRequest(task="lora", stack="ms-swift")).lora_rank == 8
    asked = resolve_request(internvl, FitRequest(task="lora", stack="xtuner", lora_rank=16))
    assert asked.lora_rank == 16
    code, result = invoke_json(
        "check", "internvl2-2b", "--task", "lora", "--stack", "xtuner", "--gpu", "A100-80GB",
        "--emit",
    )  # fmt: skip
    assert code == 0 and "model.llm_lora.r=128" in json.dumps(result["launch"])
