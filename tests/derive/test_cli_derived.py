"""The CLI on a repo id: check (cold, then warm and offline), profiles add / show."""

from __future__ import annotations

import subprocess
import sys

from tests.cli_helpers import invoke, invoke_json

REPO = "Qwen/Qwen2.5-VL-3B-Instruct"


def test_check_takes_a_repo_id_and_the_second_run_is_offline(derive_env, derive_hub) -> None:
    rc, cold = invoke_json("check", f"{REPO}@main", "--gpu", "A100-80GB")
    assert rc == 0, cold
    assert cold["profile"] == "qwen2.5-vl-3b-instruct"
    assert cold["profile_origin"].startswith(f"derived from {REPO} at ")
    derive_hub.reset_counters()
    rc, warm = invoke_json("check", f"{REPO}@main", "--gpu", "A100-80GB", "--offline")
    assert rc == 0 and derive_hub.requests == []
    assert warm["fit"] == cold["fit"]
    # the human view says where the profile came from
    text = invoke("check", f"{REPO}@main", "--gpu", "A100-80GB", "--offline").stdout
    assert f"Profile derived from {REPO} at" in text


def test_a_warm_check_imports_no_hub_client_torch_or_transformers(derive_env) -> None:
    assert invoke("check", f"{REPO}@main", "--gpu", "A100-80GB").returncode == 0
    code = (
        "import sys\n"
        "from provision.cli.main import main\n"
        "sys.argv = ['provision', 'check', {!r}, '--gpu', 'A100-80GB', '--offline']\n"
        "code = 0\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = [m for m in ('torch', 'transformers', 'huggingface_hub', 'modelscope', "
        "'urllib.request') if m in sys.modules]\n"
        "print('EXIT', code or 0, 'HEAVY', heavy)\n"
    ).format(f"{REPO}@main")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    # EXIT 0: the check really ran (a check that stopped early would import nothing either)
    assert "EXIT 0 HEAVY []" in out, out


def test_profiles_add_writes_an_editable_profile_and_show_says_derived(
    derive_env, tmp_path
) -> None:
    folder = tmp_path / "mine"
    rc, added = invoke_json(
        "profiles", "add", REPO, "--name", "my-qwen", "--profiles-dir", str(folder)
    )
    assert rc == 0, added
    written = folder / "my-qwen.toml"
    assert added["path"] == str(written) and written.is_file()
    assert 'name = "my-qwen"' in written.read_text()
    rc, shown = invoke_json("profiles", "show", "my-qwen", "--profiles-dir", str(folder))
    assert rc == 0 and shown["origin"].startswith(f"derived from {REPO} at ")
    assert shown["derived"]["commit"] in shown["origin"]
    rc, curated = invoke_json("profiles", "show", "qwen2.5-vl-3b")
    assert curated["origin"] == "curated"
    # a second add to the same name is refused, with the fix named
    again = invoke("profiles", "add", REPO, "--name", "my-qwen", "--profiles-dir", str(folder))
    assert again.returncode == 2 and "--force" in again.stderr + again.stdout


def test_profiles_add_without_a_folder_uses_the_config_folder(derive_env, tmp_path) -> None:
    rc, added = invoke_json("profiles", "add", REPO)
    assert rc == 0, added
    assert added["path"] == str(
        tmp_path / "config" / "provision" / "profiles" / "qwen2.5-vl-3b-instruct.toml"
    )
    # found by name afterwards, without flags
    rc, shown = invoke_json("profiles", "show", "qwen2.5-vl-3b-instruct")
    assert rc == 0 and shown["path"] == added["path"]


def test_unknown_name_still_suggests_and_mentions_repo_ids(derive_env) -> None:
    proc = invoke("check", "qwen2.5-vl-7", "--gpu", "A100-80GB")
    assert proc.returncode == 2
    out = proc.stdout + proc.stderr
    assert "Did you mean" in out and "org/name" in out and "Traceback" not in out


def test_a_missing_repo_on_the_cli_is_one_message(derive_env, derive_hub) -> None:
    proc = invoke("check", "nobody/missing-model", "--gpu", "A100-80GB")
    assert proc.returncode == 2
    assert "No repository nobody/missing-model" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_download_works_on_a_derived_profile(derive_env, derive_hub, tiny_qwen2_vl) -> None:
    """A real (tiny) model on the hub: derived from its metadata, then downloaded, pinned to
    the commit the metadata was read at; later commands find it by its profile name."""
    commit = derive_hub.add_repo("tiny-org/tiny-qwen2-vl", tiny_qwen2_vl)
    rc, shown = invoke_json("profiles", "show", "tiny-org/tiny-qwen2-vl")
    assert rc == 0, shown
    assert shown["source"]["revision"] == commit
    rc, got = invoke_json("download", "tiny-org/tiny-qwen2-vl", "--source", derive_hub.url)
    assert rc == 0, got
    assert got["commit"] == commit
    names = {f["path"] for f in got["files"]}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    # the profile name a lock or Dockerfile records resolves from the metadata cache
    rc, again = invoke_json("profiles", "show", shown["name"], "--offline")
    assert rc == 0 and again["derived"]["commit"] == commit
