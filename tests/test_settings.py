"""Hub settings: the variables, shell code a real shell evaluates, persisted blocks, AutoDL."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from provision import settings
from provision.hardware import disks
from tests.cli_helpers import invoke, invoke_json


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for key in (
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_ENDPOINT",
        "MODELSCOPE_CACHE",
        "MODELSCOPE_ENDPOINT",
        # An active virtualenv would receive `--persist`'s block in its real activate script.
        "VIRTUAL_ENV",
    ):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PROVISION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    monkeypatch.setattr(disks, "AUTODL_DATA", tmp_path / "no-autodl")
    return tmp_path


def test_variables_for_each_source(clean_env):
    data = clean_env / "disk"
    env = settings.hub_environment(data, "hf-mirror")
    assert env == {
        "HF_ENDPOINT": "https://hf-mirror.com",
        "HF_HOME": str(data / "huggingface"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "MODELSCOPE_CACHE": str(data / "modelscope"),
    }
    ms = settings.hub_environment(data, "modelscope")
    assert "HF_ENDPOINT" not in ms and "MODELSCOPE_ENDPOINT" not in ms  # the default endpoint
    custom = settings.hub_environment(data, "modelscope:http://10.0.0.2:8000")
    assert custom["MODELSCOPE_ENDPOINT"] == "http://10.0.0.2:8000"
    assert settings.hub_environment(data, "http://10.0.0.3")["HF_ENDPOINT"] == "http://10.0.0.3"
    # Without a data dir argument: the data disk chooser (PROVISION_DATA_DIR here).
    assert settings.hub_environment(None, "hf")["HF_HOME"] == str(
        clean_env / "data" / "huggingface"
    )


def test_cache_locations_follow_the_environment(clean_env, monkeypatch):
    assert settings.hf_hub_cache() == clean_env / "data" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", "/x/hf")
    assert settings.hf_hub_cache() == Path("/x/hf/hub")
    monkeypatch.setenv("HF_HUB_CACHE", "/y/hub")
    assert settings.hf_hub_cache() == Path("/y/hub")
    monkeypatch.setenv("MODELSCOPE_CACHE", "/z/ms")
    assert settings.modelscope_cache() == Path("/z/ms")


@pytest.mark.parametrize("shell", ["bash", "sh"])
def test_a_subshell_evaluates_the_exports(clean_env, shell):
    tricky = clean_env / "data dir with 'quotes' and $dollar"
    env = settings.hub_environment(tricky, "hf-mirror")
    code = settings.render_exports(env, "bash")
    script = code + 'printf "%s\\n" "$HF_HOME" "$HF_ENDPOINT" "$MODELSCOPE_CACHE"'
    out = subprocess.run([shell, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [env["HF_HOME"], env["HF_ENDPOINT"], env["MODELSCOPE_CACHE"]]


def test_fish_syntax():
    code = settings.render_exports({"HF_HOME": "/a b/it's"}, "fish")
    assert code == "set -gx HF_HOME '/a b/it\\'s'\n"
    if shutil.which("fish"):
        out = subprocess.run(
            ["fish", "-c", code + "echo $HF_HOME"], capture_output=True, text=True, check=True
        )
        assert out.stdout.strip() == "/a b/it's"


def test_cli_env_output_is_evaluated_by_bash(clean_env, tmp_path):
    proc = invoke("env", "--source", "hf-mirror", "--shell", "bash")
    assert proc.returncode == 0, proc.stderr
    script = f"eval \"$(cat <<'EOF'\n{proc.stdout}EOF\n)\"; env"
    shown = subprocess.run(
        ["bash", "-c", script],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    ).stdout
    values = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert values["HF_HOME"] == str(clean_env / "data" / "huggingface")
    assert values["HF_ENDPOINT"] == "https://hf-mirror.com"
    assert values["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert values["MODELSCOPE_CACHE"] == str(clean_env / "data" / "modelscope")


def test_env_with_a_profile_probes_its_repository(clean_env, tmp_path, monkeypatch):
    from tests.hub.helpers import make_repo, write_profile
    from tests.servers.hub import HubServer

    with HubServer(tmp_path / "hub") as hub:
        hub.add_repo("org/m", make_repo(tmp_path / "m", {"w.safetensors": 10}))
        write_profile(tmp_path / "profiles", "m", "org/m")
        env = {
            "PROVISION_PROFILES_DIR": str(tmp_path / "profiles"),
            "PROVISION_SOURCES": f"http://127.0.0.1:1,{hub.url}",
        }
        rc, out = invoke_json("env", "m", env=env)
        assert rc == 0, out
        assert out["env"]["HF_ENDPOINT"] == hub.url
        assert "first reachable" in out["reason"]


def test_persist_twice_leaves_one_block_and_keeps_the_rest(clean_env, tmp_path):
    home = tmp_path / "home"
    (home / ".bashrc").write_text("alias ll='ls -l'\n")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "activate").write_text("# activate\nexport VIRTUAL_ENV=/v\n")
    (venv / "bin" / "activate.fish").write_text("# fish activate\n")
    for source in ("hf", "hf-mirror"):
        proc = invoke(
            "env", "--source", source, "--shell", "bash", "--persist", "--venv", str(venv)
        )
        assert proc.returncode == 0, proc.stderr
    rc = (home / ".bashrc").read_text()
    assert rc.startswith("alias ll='ls -l'\n")
    assert rc.count(settings.BLOCK_BEGIN) == 1 and rc.count(settings.BLOCK_END) == 1
    assert "export HF_ENDPOINT=https://hf-mirror.com" in rc and "huggingface.co" not in rc
    activate = (venv / "bin" / "activate").read_text()
    assert activate.count(settings.BLOCK_BEGIN) == 1 and "export VIRTUAL_ENV=/v" in activate
    fish = (venv / "bin" / "activate.fish").read_text()
    assert "set -gx HF_ENDPOINT 'https://hf-mirror.com'" in fish
    # The persisted file works: a login shell reading it sees the variables.
    out = subprocess.run(
        ["bash", "-c", f"source {home / '.bashrc'}; echo $HF_HOME"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert out == str(clean_env / "data" / "huggingface")


def test_tokens_are_never_printed_or_written(clean_env, tmp_path):
    token = "hf_do_not_write_me_123"
    proc = invoke(
        "env", "--source", "hf", "--persist", "--shell", "zsh",
        env={"HF_TOKEN": token, "MODELSCOPE_API_TOKEN": token},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout and token not in proc.stderr
    assert token not in (tmp_path / "home" / ".zshrc").read_text()
    assert settings.render_exports({"HF_TOKEN": token, "HF_HOME": "/x"}) == "export HF_HOME=/x\n"


def test_autodl_data_disk_and_network_turbo_note(clean_env, tmp_path, monkeypatch):
    autodl = tmp_path / "autodl-tmp"
    autodl.mkdir()
    turbo = tmp_path / "network_turbo"
    monkeypatch.setattr(disks, "AUTODL_DATA", autodl)
    monkeypatch.delenv("PROVISION_DATA_DIR")
    monkeypatch.setattr(settings, "network_turbo", lambda: turbo)
    assert settings.hub_environment(None, "hf")["HF_HOME"] == str(autodl / "huggingface")
    notes = settings.autodl_notes()
    assert len(notes) == 1 and str(autodl) in notes[0]
    turbo.write_text("export http_proxy=...\n")
    notes = settings.autodl_notes()
    assert any(f"source {turbo}" in n for n in notes)


def test_apply_environment_warns_when_the_hub_library_came_first(tmp_path):
    code = (
        "import json\nfrom huggingface_hub import snapshot_download  # reads HF_HOME now\n"
        "from provision.settings import apply_environment\n"
        f"print(json.dumps(apply_environment({{'HF_HOME': {str(tmp_path / 'late')!r}}})))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HOME"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    (warning,) = json.loads(proc.stdout)
    assert "imported before HF_HOME was set" in warning
    early = (
        "from provision.settings import apply_environment; "
        "print(apply_environment({'HF_HOME': '/x'}))"
    )
    assert (
        subprocess.run([sys.executable, "-c", early], capture_output=True, text=True).stdout
        == "[]\n"
    )


def test_unknown_shell_is_a_usage_error(clean_env):
    proc = invoke("env", "--source", "hf", "--shell", "tcsh")
    assert proc.returncode == 2 and "Unknown shell 'tcsh'" in proc.stderr


def test_secret_names_are_whole_words():
    from provision.settings import SECRET_NAMES

    secrets = ["HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", "PIP_PASSWORD"]
    secrets += ["AWS_SECRET_ACCESS_KEY", "GIT_CREDENTIALS", "auth_token", "MODELSCOPE_API_KEY"]
    for name in secrets:
        assert SECRET_NAMES.search(name), name
    for name in ("TOKENIZERS_PARALLELISM", "AUTHOR", "OAUTHLIB_INSECURE", "HF_HOME", "SECRETARY"):
        assert not SECRET_NAMES.search(name), name


def test_persist_writes_through_a_symlinked_rc_and_keeps_non_utf8_bytes(clean_env, tmp_path):
    """Issue 11, item 9: a dotfiles ~/.bashrc link became a regular file; Latin-1 bytes crashed."""
    home = tmp_path / "home"
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    original = b"# caf\xe9 (latin-1)\nalias ll='ls -l'\n"
    (dotfiles / "bashrc").write_bytes(original)
    (home / ".bashrc").symlink_to(dotfiles / "bashrc")
    proc = invoke("env", "--source", "hf-mirror", "--shell", "bash", "--persist")
    assert proc.returncode == 0, proc.stderr
    assert (home / ".bashrc").is_symlink()
    written = (dotfiles / "bashrc").read_bytes()
    assert written.startswith(original)
    assert b"export HF_ENDPOINT=https://hf-mirror.com" in written
    again = invoke("env", "--source", "hf", "--shell", "bash", "--persist")
    assert again.returncode == 0, again.stderr
    assert (dotfiles / "bashrc").read_bytes().startswith(original)
    assert (dotfiles / "bashrc").read_bytes().count(settings.BLOCK_BEGIN.encode()) == 1
