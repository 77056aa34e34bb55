"""Profiles: the built-ins are complete and self-consistent; bad files get one clear message."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.profiles import ProfileError, list_profiles, load_profile, load_profile_file
from tests.cli_helpers import invoke, invoke_json

BUILTINS = {p.name: p for p in list_profiles()}
REQUIRED = {
    "qwen2.5-vl-7b",
    "gemma-3-12b-it",
    "llama-3.2-11b-vision",
    "internvl2-2b",
    "llava-v1.5-7b",
    "llava-1.5-7b-hf",
    "qwen2-vl-2b",
    "smolvlm-256m",
}
GOOD = Path(__file__).resolve().parents[1] / "profiles" / "qwen2-vl-2b.toml"


def test_the_issue_s_profiles_ship():
    assert set(BUILTINS) >= REQUIRED


def _language_params_from_shape(text: dict) -> int:
    """Parameters implied by the text model's shape: embeddings, attention, MLP, norms."""
    h, i, layers = text["hidden"], text["intermediate"], text["layers"]
    q, kv = text["heads"] * text["head_dim"], text["kv_heads"] * text["head_dim"]
    per_layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h
    embed = text["vocab"] * h * (1 if text["tie_word_embeddings"] else 2)
    return embed + layers * per_layer


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_numbers_agree_with_each_other(name):
    p = BUILTINS[name]
    params, weights = p.params, p.weights
    # The language model's shape implies its parameter count (within 6%: biases, cross-attention
    # gates and the like are not in the shape).
    implied = _language_params_from_shape(p.text)
    assert abs(implied - params["language"]) / params["language"] < 0.06, (implied, params)
    # Weights in bytes are the parameters at the stored dtype's width.
    width = {"bfloat16": 2, "float16": 2, "float32": 4}[weights["dtype"]]
    assert abs(weights["bytes"] - params["total"] * width) / weights["bytes"] < 0.01
    assert params["vision"] + params["language"] <= params["total"] * 1.01
    for table in ("params", "weights", "text", "image"):
        assert p.data[table]["source"], f"{name}: [{table}] names no source"
    for task in p.tasks:
        pins = {re.split(r"[=<>\[]", s)[0]: s for s in p.task(task).packages}
        assert "==" in pins["torch"] and "==" in pins["transformers"]


def test_user_profiles_dir_takes_precedence(tmp_path, monkeypatch):
    text = GOOD.read_text().replace('title = "Qwen2-VL-2B-Instruct"', 'title = "mine"')
    (tmp_path / "qwen2-vl-2b.toml").write_text(text)
    monkeypatch.setenv("PROVISION_PROFILES_DIR", str(tmp_path))
    assert load_profile("qwen2-vl-2b").title == "mine"
    assert load_profile("qwen2-vl-2b").builtin is False
    assert load_profile("gemma-3-12b-it").builtin is True


def _bad(tmp_path: Path, old: str, new: str) -> Path:
    text = GOOD.read_text()
    assert old in text
    path = tmp_path / "qwen2-vl-2b.toml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize(
    ("old", "new", "key", "reason"),
    [
        ("layers = 28", "layers = 28\nlayer_count = 28", "text.layer_count", "unknown key"),
        ("layers = 28", 'layers = "28"', "text.layers", "must be int"),
        ("gated = false", "gated = 0", "source.gated", "must be bool"),
        ("hidden = 1536\n", "", "text.hidden", "missing"),
        ('name = "qwen2-vl-2b"', 'name = "other"', "name", "must match the file name"),
        ('dtype = "bfloat16"', 'dtype = "bf16"', "weights.dtype", "is not one of"),
        ('"torch==2.6.0",', '"torch>=2.6",', "tasks.infer.packages", "exact pin for torch"),
        ('stack = "transformers"', 'stack = "ollama"', "tasks.infer.stack", "is not one of"),
        # issue 11: zero bytes of weights "fit" anything
        ("bytes = 4417971200", "bytes = 0", "weights.bytes", "must be positive"),
        ("total = 2208985600", "total = 0", "params.total", "must be positive"),
        # what a serving engine reads when given no length (issue 12)
        (
            "max_context = 32768",
            "max_context = 32768\nconfig_max_len = 4096",
            "text.config_max_len",
            "must not be below",
        ),
        (
            "max_context = 32768",
            'max_context = 32768\nrope_type = "linear"',
            "text.rope_factor",
            "go together",
        ),
        (
            "max_context = 32768",
            'max_context = 32768\nrope_type = "linear"\nrope_factor = 0',
            "text.rope_factor",
            "must be positive",
        ),
    ],
)
def test_bad_profile_names_file_key_and_reason(tmp_path, old, new, key, reason):
    path = _bad(tmp_path, old, new)
    with pytest.raises(ProfileError) as info:
        load_profile_file(path)
    err = info.value
    assert err.key == key and reason in err.reason
    assert str(path) in err.message and key in err.message


def test_invalid_toml(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("name = \n")
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile_file(path)


def test_bad_profile_on_the_cli_is_one_message_and_exit_2(tmp_path):
    _bad(tmp_path, "layers = 28", 'layers = "28"')
    proc = invoke(
        "check", "qwen2-vl-2b", "--gpu", "L4", env={"PROVISION_PROFILES_DIR": str(tmp_path)}
    )
    assert proc.returncode == 2
    assert "text.layers" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 4


def test_unknown_profile_suggests_close_names():
    with pytest.raises(ProvisionError) as info:
        load_profile("qwen2.5-vl-7")
    assert "qwen2.5-vl-7b" in str(info.value)
    proc = invoke("profiles", "show", "qwen25")
    assert proc.returncode == 2 and "Unknown profile 'qwen25'" in proc.stderr


def test_profiles_list_and_show_json():
    rc, rows = invoke_json("profiles")
    assert rc == 0 and {r["name"] for r in rows} >= REQUIRED
    rc, shown = invoke_json("profiles", "show", "gemma-3-12b-it")
    assert rc == 0 and shown["source"]["gated"] is True
    assert shown["text"]["sliding_window"] == 1024


def test_a_broken_user_profile_does_not_break_other_checks(tmp_path):
    (tmp_path / "broken.toml").write_text("name = [\n")
    env = {"PROVISION_PROFILES_DIR": str(tmp_path)}
    rc, report = invoke_json("check", "qwen2.5-vl-7b", "--gpu", "RTX 3080", env=env)
    assert rc == 1 and any(s["kind"] == "model" for s in report["fit"]["suggestions"])
    proc = invoke("check", "broken", env=env)
    assert proc.returncode == 2 and "broken.toml" in proc.stderr
