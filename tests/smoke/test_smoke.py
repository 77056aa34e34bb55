"""The smoke inference for real: tiny models from an HF cache, run by the target env's Python.

Two environments: this session's (transformers 5.x, where group beam search left the core
library) and a uv venv with transformers 4.51.3 (where it crashes in bf16 until the fix).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from provision.lock.lockfile import (
    read_lock,
    record_file,
    recorded_table,
    set_tool_section,
    tool_table,
)
from provision.profiles import load_profile
from provision.smoke.run import run_smoke
from tests.cli_helpers import result_of, run_cli
from tests.smoke.conftest import PROFILE_NAMES, SmokeModels
from tests.smoke.helpers import PROMPT, write_smoke_profile

pytestmark = pytest.mark.slow


def _profile(models: SmokeModels, repo_id: str):
    return load_profile(PROFILE_NAMES[repo_id], models.profiles)


def _assert_measured(result, param_floor: int = 100_000) -> None:
    assert result.device == "cpu" and result.device_name.startswith("cpu")
    assert result.dtype == "bfloat16"
    assert result.param_bytes > param_floor
    assert result.load_seconds > 0 and result.latency_s > 0 and result.tokens_per_s > 0
    assert result.peak_memory_kind == "peak_rss"
    # the whole interpreter with torch loaded: far more than the tiny weights
    assert result.peak_memory_bytes > 50 * 2**20


def test_transformers_4_51_greedy_answers_group_beam_crashes_until_fixed(
    smoke_models: SmokeModels, tf4_python: Path, tmp_path: Path
) -> None:
    from provision.patches import apply_fixes, revert_fixes

    repo = "tiny-org/qwen2-vl-tf4"
    profile = _profile(smoke_models, repo)
    lock = tmp_path / "pylock.tiny.toml"
    # The lock pins the weights to the commit `download` recorded: the smoke loads that one.
    set_tool_section(
        lock,
        "model",
        {"source": "hf", "repo_id": repo, "revision": "main", "commit": smoke_models.commits[repo]},
    )
    target = f"--python {tf4_python}"
    result = run_smoke(
        profile, tf4_python, smoke_models.hf_home, lock_file=lock, target=target, timeout=600
    )

    assert result.error is None, result.log_tail
    assert result.revision == smoke_models.commits[repo]
    assert result.model_class == "Qwen2VLForConditionalGeneration"
    assert result.versions["transformers"] == "4.51.3"
    _assert_measured(result)
    greedy, beam = result.modes["greedy"], result.modes["group_beam"]
    assert greedy.status == "ok" and greedy.new_tokens == 8
    assert result.answer == greedy.answer and result.answer
    assert beam.status == "failed"
    assert beam.settings["num_beam_groups"] == 2 and beam.settings["output_scores"] is True
    assert "Index put requires the source and destination dtypes match" in beam.error["message"]
    assert beam.fix == "group-beam-search-dtype"
    assert f"provision patch apply group-beam-search-dtype {target}" in beam.next_step
    assert result.needs_fixes == ["group-beam-search-dtype"]
    assert not result.ok
    assert result.summary == "greedy ok; group_beam failed (RuntimeError): needs fix " + (
        "group-beam-search-dtype"
    )

    # The lock exists and was not named with into_lock: the result goes to this machine's
    # record, seen with the lock through recorded_table; the lock itself is not rewritten.
    assert "smoke" not in tool_table(read_lock(lock)) or not tool_table(read_lock(lock))["smoke"]
    recorded = recorded_table(lock)
    assert recorded["model"]["commit"] == smoke_models.commits[repo]  # left alone
    smoke = recorded["smoke"]
    assert smoke["ok"] is False and smoke["answer"] == result.answer
    assert smoke["needs_fixes"] == ["group-beam-search-dtype"]
    assert smoke["modes"]["group_beam"]["status"] == "failed"
    assert smoke["modes"]["group_beam"]["error"].startswith("RuntimeError: Index put requires")
    assert smoke["peak_memory_bytes"] == result.peak_memory_bytes
    assert str(tf4_python) not in record_file(lock).read_text()  # the record is portable

    applied = apply_fixes(tf4_python, ["group-beam-search-dtype"])
    try:
        assert applied[0].state == "patched"
        fixed = run_smoke(profile, tf4_python, smoke_models.hf_home, lock_file=lock, timeout=600)
    finally:
        revert_fixes(tf4_python, ["group-beam-search-dtype"])
    assert fixed.ok, fixed.to_json()
    assert fixed.modes["group_beam"].status == "ok"
    # the fix casts the float32 scores into the model-dtype buffer: bf16 scores, no crash
    assert fixed.modes["group_beam"].scores_dtype == "bfloat16"
    assert fixed.modes["group_beam"].answer
    assert fixed.modes["greedy"].token_ids == greedy.token_ids  # same weights, same answer
    assert fixed.needs_fixes == []
    assert recorded_table(lock)["smoke"]["ok"] is True


def test_transformers_4_51_llava(smoke_models: SmokeModels, tf4_python: Path) -> None:
    result = run_smoke(
        _profile(smoke_models, "tiny-org/llava-tf4"), tf4_python, smoke_models.hf_home
    )
    assert result.error is None, result.log_tail
    assert result.model_class == "LlavaForConditionalGeneration"
    _assert_measured(result)
    assert result.answer and result.modes["greedy"].status == "ok"
    assert result.modes["group_beam"].status == "failed"
    assert result.needs_fixes == ["group-beam-search-dtype"]
    assert result.lock_file is None


def test_transformers_5_llava_through_the_cli(smoke_models: SmokeModels, tmp_path: Path) -> None:
    lock = tmp_path / "pylock.tiny-llava-tf5.toml"
    proc = run_cli(
        "smoke",
        PROFILE_NAMES["tiny-org/llava-tf5"],
        "--python",
        sys.executable,
        "--lock",
        str(lock),
        "--hf-home",
        str(smoke_models.hf_home),
        "--json",
        env={"PROVISION_PROFILES_DIR": str(smoke_models.profiles)},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    payload = result_of(proc)
    assert payload["ok"] is True
    assert payload["answer"] and payload["prompt"] == PROMPT
    # The profile names vLLM, but there is no GPU: transformers runs it, and says why.
    assert payload["backend"] == "transformers"
    assert "vllm needs a GPU" in payload["backend_reason"]
    assert payload["versions"]["transformers"].startswith("5.")
    beam = payload["modes"]["group_beam"]
    assert beam["status"] == "not_applicable"
    assert "4.57" in beam["reason"]
    assert payload["modes"]["greedy"]["tokens_per_s"] > 0
    assert tool_table(read_lock(lock))["smoke"]["modes"]["group_beam"]["status"] == (
        "not_applicable"
    )


def test_transformers_5_qwen2_vl_without_torchvision_says_so(smoke_models: SmokeModels) -> None:
    # transformers 5's Qwen2-VL processor needs torchvision; this machine has none. The smoke
    # must show that error, from transformers itself, and the step that cures it.
    result = run_smoke(
        _profile(smoke_models, "tiny-org/qwen2-vl-tf5"), Path(sys.executable), smoke_models.hf_home
    )
    assert not result.ok
    assert result.error["stage"] == "load"
    assert "Torchvision" in result.error["message"]
    assert "torchvision" in result.next_step and "provision lock" in result.next_step
    assert result.modes == {}


def test_missing_model_gives_the_model_s_error_and_download_step(
    smoke_models: SmokeModels, tmp_path: Path
) -> None:
    profiles = tmp_path / "profiles"
    write_smoke_profile(profiles, "tiny-absent", "tiny-org/never-downloaded")
    lock = tmp_path / "pylock.tiny-absent.toml"
    proc = run_cli(
        "smoke",
        "tiny-absent",
        "--python",
        sys.executable,
        "--lock",
        str(lock),
        "--hf-home",
        str(smoke_models.hf_home),
        env={"PROVISION_PROFILES_DIR": str(profiles)},
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "error at load" in proc.stdout
    assert "tiny-org/never-downloaded" in proc.stdout  # transformers' own message names it
    assert "provision download tiny-absent" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    smoke = tool_table(read_lock(lock))["smoke"]
    assert smoke["ok"] is False and smoke["error"]["stage"] == "load"


def test_broken_config_gives_the_model_s_error(
    smoke_models: SmokeModels, tf4_python: Path, tmp_path: Path
) -> None:
    from huggingface_hub import snapshot_download

    built = snapshot_dir(smoke_models, "tiny-org/llava-tf4")
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in built.iterdir():
        if path.is_file():
            (broken / path.name).write_bytes(path.read_bytes())
    config = json.loads((broken / "config.json").read_text())
    config["model_type"] = "llava_from_the_future"
    (broken / "config.json").write_text(json.dumps(config))
    smoke_models.hub.add_repo("tiny-org/broken", broken)
    snapshot_download(
        "tiny-org/broken",
        endpoint=smoke_models.hub.url,
        cache_dir=smoke_models.hf_home / "hub",
        token=False,
    )
    profile_path = write_smoke_profile(tmp_path / "profiles", "tiny-broken", "tiny-org/broken")
    result = run_smoke(load_profile(str(profile_path)), tf4_python, smoke_models.hf_home)
    assert not result.ok and result.error["stage"] == "load"
    assert "llava_from_the_future" in result.error["message"]
    assert "transformers 4.51.3 does not know this model type" in result.next_step


def snapshot_dir(models: SmokeModels, repo_id: str) -> Path:
    """The snapshot folder of `repo_id` in the session's HF cache."""
    commit = models.commits[repo_id]
    folder = "models--" + repo_id.replace("/", "--")
    return models.hf_home / "hub" / folder / "snapshots" / commit
