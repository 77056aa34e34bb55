"""The vLLM and LMDeploy command lines `provision serve --print` renders use only flags the
pinned engine version's own argument parser has (provision/data/engine_flags.toml, read from the
wheels' parser source by scripts/engine_flags.py)."""

from __future__ import annotations

import json

import pytest

from provision.errors import CheckFailed, ProvisionError
from provision.hardware.catalogue import target_machine
from provision.memory import stacks
from provision.profiles import list_profiles
from provision.resources import load_table
from provision.serve.plan import plan_serve, servers
from tests.cli_helpers import invoke, invoke_json, result_of

FLAGS = load_table("engine_flags.toml")["engine"]
ENGINES = ("vllm", "lmdeploy")


def flags_of(argv: list[str]) -> list[str]:
    return [a for a in argv if a.startswith("--")]


def assert_known(stack: str, argv: list[str]) -> None:
    table = FLAGS[stack]
    assert table["version"] == stacks()[stack]["launch"]["version"]
    unknown = [f for f in flags_of(argv) if f not in table["flags"]]
    assert not unknown, f"{stack} {table['version']} has no {unknown} (argv {argv})"


def test_the_table_is_for_the_pinned_versions_and_names_its_source():
    for stack in ENGINES:
        table = FLAGS[stack]
        assert table["version"] == stacks()[stack]["engine"]["version"]
        assert "sha256" in table["source"] and f"{stack}-{table['version']}" in table["source"]
        assert len(table["flags"]) > 30 and all(f.startswith("-") for f in table["flags"])


def test_every_flag_the_launch_and_serve_tables_name_is_in_the_engine_table():
    for stack in ENGINES:
        launch = stacks()[stack]["launch"]
        named = [v for v in launch.values() if isinstance(v, str) and v.startswith("--")]
        named += [servers()[stack][k] for k in ("host", "port", "served_name")]
        assert_known(stack, named)


def test_a_flag_the_engine_lacks_is_caught():
    """The check can fail: vLLM 0.8.5 has no LMDeploy flag, LMDeploy 0.7.3 no vLLM one."""
    with pytest.raises(AssertionError, match="--session-len"):
        assert_known("vllm", ["--session-len", "8192"])
    with pytest.raises(AssertionError, match="--max-model-len"):
        assert_known("lmdeploy", ["--max-model-len", "8192"])


@pytest.mark.parametrize("gpus", [1, 2])
def test_every_builtin_profile_s_serve_line_uses_known_flags(gpus):
    machine = target_machine(gpu="A100-80GB", gpus=gpus)
    seen = set()
    for profile in list_profiles():
        for stack in ENGINES:
            overrides = {"max_num_seqs": 16, "limit_images": 2, "enforce_eager": True}
            if stack == "lmdeploy":
                overrides = {"cache_max_entry_count": 0.5, "max_num_seqs": 16}
            try:
                plan = plan_serve(
                    profile.name,
                    stack=stack,
                    machine=machine,
                    overrides=overrides,
                    print_only=True,
                )
            except ProvisionError:
                continue  # e.g. a tensor-parallel size the model's heads do not divide into
            assert_known(stack, plan.argv)
            seen.update(flags_of(plan.argv))
    # The limits the fit chose are there (each at least once over the profiles).
    for flag in (
        "--max-model-len",
        "--max-num-seqs",
        "--limit-mm-per-prompt",
        "--gpu-memory-utilization",
        "--enforce-eager",
        "--session-len",
        "--cache-max-entry-count",
        "--max-batch-size",
    ):
        assert flag in seen
    if gpus == 2:
        assert "--tensor-parallel-size" in seen and "--tp" in seen


def test_print_shows_the_vllm_command_with_the_fit_s_limits_and_starts_nothing():
    rc, plan = invoke_json(
        "serve",
        "qwen2-vl-2b",
        "--stack",
        "vllm",
        "--print",
        "--gpu",
        "RTX 4090",
        "--gpus",
        "2",
        "--context",
        "8192",
        "--max-num-seqs",
        "8",
        "--limit-mm",
        "image=2",
        "--port",
        "8123",
    )
    assert rc == 0, plan
    argv = plan["argv"]
    assert argv[0].endswith("/bin/vllm") and argv[1] == "serve"
    assert argv[argv.index("--max-model-len") + 1] == "8192"
    assert argv[argv.index("--max-num-seqs") + 1] == "8"
    assert json.loads(argv[argv.index("--limit-mm-per-prompt") + 1]) == {"image": 2}
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert argv[argv.index("--port") + 1] == "8123"
    assert argv[argv.index("--host") + 1] == "127.0.0.1"
    assert plan["base_url"] == "http://127.0.0.1:8123/v1"
    assert "chat/completions" in plan["curl"] and "image_url" in plan["curl"]
    assert_known("vllm", argv)
    # Nothing set up here: the plan says so rather than pretending.
    assert plan["verified"] is False and any("provision setup" in n for n in plan["notes"])


def test_print_shows_the_lmdeploy_command():
    proc = invoke(
        "serve",
        "internvl2-2b",
        "--print",
        "--gpu",
        "RTX 4090",
        "--cache-max-entry-count",
        "0.5",
    )
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in proc.stdout.splitlines() if "lmdeploy serve api_server" in x)
    assert "--session-len" in line and "--cache-max-entry-count 0.5" in line
    assert "--server-port 8000" in line and "--model-name OpenGVLab/InternVL2-2B" in line
    assert_known("lmdeploy", line.split())


def test_bad_stack_and_gpu_engine_without_a_gpu_are_one_message_each():
    proc = invoke("serve", "qwen2-vl-2b", "--stack", "tgi", "--print")
    assert proc.returncode == 2 and "Unknown stack 'tgi'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = invoke("serve", "qwen2-vl-2b", "--stack", "sglang", "--print")
    assert proc.returncode == 2 and "sglang" in proc.stderr and "Traceback" not in proc.stderr
    # This machine has no GPU (NVML absent): vLLM cannot start here, --print still shows it.
    with pytest.raises(CheckFailed, match="no GPU"):
        plan_serve("qwen2-vl-2b", stack="vllm")
    proc = invoke("serve", "qwen2-vl-2b", "--stack", "vllm", "--port", "70000", "--print")
    assert proc.returncode == 2 and "--port 70000" in proc.stderr


def test_no_secret_in_the_shown_command_or_variables():
    """A token stays in the environment the server inherits; a mirror's URL password is masked."""
    secret_env = {
        "HF_TOKEN": "hf_SeRvEsEcReT123",
        "HF_ENDPOINT": "https://alice:pAsSw0rd@mirror.example.com",
    }
    proc = invoke("--json", "serve", "qwen2-vl-2b", "--stack", "vllm", "--print", env=secret_env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert "hf_SeRvEsEcReT123" not in out and "pAsSw0rd" not in out
    plan = result_of(proc)
    assert plan["env"]["HF_ENDPOINT"] == "https://***@mirror.example.com"
    assert not any("SeRvEsEcReT" in a or "pAsSw0rd" in a for a in plan["argv"])
    proc = invoke("serve", "qwen2-vl-2b", "--stack", "vllm", "--print", env=secret_env)
    assert "pAsSw0rd" not in proc.stdout + proc.stderr and "mirror.example.com" in proc.stdout


def test_the_default_stack_is_the_profile_s_and_original_llava_is_pointed_elsewhere():
    assert plan_serve("internvl2-2b", print_only=True).stack == "lmdeploy"
    assert plan_serve("qwen2.5-vl-7b", print_only=True).stack == "vllm"
    assert plan_serve("smolvlm-256m", print_only=True).stack == "transformers"
    proc = invoke("serve", "llava-v1.5-7b", "--print")
    assert proc.returncode == 2 and "provision serve llava-1.5-7b-hf" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_serve_refuses_limits_that_need_a_quantised_build_instead_of_serving_16_bit_weights():
    """On a 4090 Llama 3.2 Vision fits vLLM only with 8-bit weights (and shorter limits): the
    snapshot holds 16-bit ones, so serve says so rather than start a server that cannot fit."""
    with pytest.raises(ProvisionError, match="does not fit here as served from its own weights"):
        plan_serve(
            "llama-3.2-11b-vision",
            stack="vllm",
            machine=target_machine(gpu="RTX 4090"),
            print_only=True,
        )


def test_serve_keeps_the_machine_it_runs_on():
    """Gemma 3 12B does not fit one 4090; check's first way out is a second GPU. serve runs here,
    on one GPU, so it must not print --tensor-parallel-size 2: the ways left change the weights,
    and it says so."""
    one = target_machine(gpu="RTX 4090")
    with pytest.raises(ProvisionError, match="does not fit here") as refused:
        plan_serve("gemma-3-12b-it", stack="vllm", machine=one, print_only=True)
    assert "tensor-parallel" not in str(refused.value.message)
    # with two GPUs here, the same model is served split over them
    two = plan_serve(
        "gemma-3-12b-it", stack="vllm", machine=target_machine(gpu="RTX 4090", gpus=2),
        print_only=True,
    )  # fmt: skip
    assert two.argv[two.argv.index("--tensor-parallel-size") + 1] == "2"
