"""Every command's `--json`: one versioned envelope, and the result shape its contract pins
(tests/json_contract.py), on success and on failure, with the exit code and no traceback.

The commands are enumerated from the typer app: a new command with --json fails here until it
has a contract and a test that runs it. Commands whose real run needs a built environment, a
hub or a Slurm cluster are run by their own (end-to-end) tests through the same checked
helpers; `COVERED_ELSEWHERE` names those tests, and a test here makes sure they still exist.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from provision.resources import REPO_DIR
from tests.cli_helpers import envelope_of, invoke, invoke_envelope, run_cli
from tests.json_contract import CONTRACTS

ROOT = Path(__file__).resolve().parent.parent
QWEN_LOCK = str(Path(REPO_DIR) / "lockfiles" / "pylock.qwen2-vl-2b.toml")

# command -> the test that runs it for real, through run_json / run_envelope / result_of.
COVERED_ELSEWHERE = {
    "download": (
        "tests/hub/test_download.py",
        "test_full_download_cache_layout_lock_record_and_offline_reuse",
    ),
    "verify": (
        "tests/hub/test_download.py",
        "test_verify_finds_missing_and_wrong_files",
    ),
    "profiles add": (
        "tests/derive/test_cli_derived.py",
        "test_profiles_add_without_a_folder_uses_the_config_folder",
    ),
    "lock": (
        "tests/lock/test_lock_local.py",
        "test_explain_and_json",
    ),
    "smoke": (
        "tests/smoke/test_smoke.py",
        "test_transformers_5_llava_through_the_cli",
    ),
    "setup": (
        "tests/setup/test_setup.py",
        "test_smoke_failure_stops_setup_with_the_model_s_error",
    ),
    "direction setup": (
        "tests/directions/test_setup.py",
        "test_concurrent_setups_make_one_environment_and_both_smokes_pass",
    ),
    "patch apply": (
        "tests/patches/test_group_beam_search.py",
        "test_crash_then_apply_fixes_it_then_revert_restores_the_bytes",
    ),
    "patch revert": (
        "tests/patches/test_group_beam_search.py",
        "test_crash_then_apply_fixes_it_then_revert_restores_the_bytes",
    ),
    "cluster node": (
        "tests/cluster/test_slurm_job.py",
        "test_a_job_provisions_both_nodes_and_a_second_job_reuses_it",
    ),
}


def json_commands() -> dict[str, bool]:
    """Every command path of the typer app -> whether it takes --json (a group that runs on its
    own, as `profiles` does, counts as a command)."""
    from provision.cli.app import COMMANDS, build_commands

    found: dict[str, bool] = {}

    def walk(command, path: str) -> None:
        takes_json = any("--json" in getattr(p, "opts", ()) for p in command.params)
        subcommands = getattr(command, "commands", None)
        if subcommands is None or takes_json:
            found[path] = takes_json
        for name, sub in (subcommands or {}).items():
            walk(sub, f"{path} {name}")

    for module in dict.fromkeys(COMMANDS.values()):
        for name, command in build_commands(module).items():
            walk(command, name)
    return found


def test_every_command_takes_json_and_has_a_contract_and_a_test() -> None:
    commands = json_commands()
    assert [c for c, takes in commands.items() if not takes] == []
    assert sorted(commands) == sorted(CONTRACTS), "add the new command to tests/json_contract.py"
    tested = set(RUNS) | set(COVERED_ELSEWHERE)
    assert sorted(set(commands) - tested) == [], "give the new command a run in RUNS"


@pytest.mark.parametrize("command", sorted(COVERED_ELSEWHERE))
def test_the_end_to_end_test_of_a_command_is_still_there(command: str) -> None:
    path, name = COVERED_ELSEWHERE[command]
    source = (ROOT / path).read_text()
    assert f"def {name}(" in source
    verb = command.split()[-1]
    assert f'"{verb}"' in source, f"{path} no longer runs `{command}`"
    helpers = ("run_json(", "run_envelope(", "result_of(", "invoke_json(", "invoke_envelope(")
    assert any(h in source for h in helpers), f"{path} reads JSON past the checked helpers"


@pytest.fixture
def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's data dir, home, profiles and directions under tmp_path."""
    from tests.directions.helpers import write_direction, write_profile

    for key in ("PROVISION_PROFILES_DIR", "PROVISION_DIRECTIONS_DIR", "PROVISION_LOCK_DIR"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PROVISION_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    write_profile(tmp_path / "profiles", "tiny-a")
    write_profile(tmp_path / "profiles", "tiny-b")
    write_profile(tmp_path / "profiles", "tiny-c")
    write_direction(tmp_path / "dirs", "pair", [("tiny-a", ["infer"]), ("tiny-b", ["infer"])])
    reports = tmp_path / "job" / "reports" / "7"
    reports.mkdir(parents=True)
    node = {"node": "n0", "ok": True, "failed": None, "stages": [], "target": "qwen2-vl-2b"}
    (reports / "n0.json").write_text(json.dumps(node))
    return tmp_path


def _mine(world: Path) -> list[str]:
    return ["--profiles-dir", str(world / "profiles"), "--directions-dir", str(world / "dirs")]


# command -> its arguments (a cheap real run that succeeds), given the world folder.
RUNS = {
    "check": lambda w: ["check", "qwen2-vl-2b", "--gpu", "RTX 4090"],
    "profiles": lambda w: ["profiles"],
    "profiles show": lambda w: ["profiles", "show", "qwen2-vl-2b"],
    "gpus": lambda w: ["gpus"],
    "env": lambda w: ["env", "--source", "hf"],
    "patch status": lambda w: ["patch", "status", "--python", sys.executable],
    "lock": lambda w: ["lock", "--check", "qwen2-vl-2b"],
    "docker": lambda w: ["docker", "qwen2-vl-2b", "--out", str(w / "docker")],
    "setup": lambda w: ["setup", "qwen2-vl-2b", "--dry-run"],
    "direction list": lambda w: ["direction", "list"],
    "direction show": lambda w: ["direction", "show", "okvqa-vllm-swift"],
    "direction check": lambda w: ["direction", "check", "pair", "--gpu", "RTX 4090", *_mine(w)],
    "direction lock": lambda w: ["direction", "lock", "--check", "okvqa-vllm-swift"],
    "direction add": lambda w: ["direction", "add", "pair", "tiny-c", "--no-lock", *_mine(w)],
    "direction remove": lambda w: ["direction", "remove", "pair", "tiny-a", "--no-lock", *_mine(w)],
    "cluster slurm": lambda w: [
        "cluster", "slurm", "qwen2-vl-2b", "--shared-dir", str(w / "shared"), "--lock", QWEN_LOCK,
    ],
    "cluster report": lambda w: ["cluster", "report", "--job-dir", str(w / "job"), "--job", "7"],
    "serve": lambda w: ["serve", "qwen2-vl-2b", "--stack", "vllm", "--print"],
}  # fmt: skip


@pytest.mark.parametrize("command", sorted(RUNS))
def test_a_command_prints_its_contract(command: str, world: Path) -> None:
    code, doc = invoke_envelope(*RUNS[command](world))
    assert code == 0 and doc["ok"] is True, doc
    assert doc["command"] == command and doc["error"] is None
    assert doc["result"] is not None


def test_the_json_flag_after_the_command_gives_the_same_envelope(world: Path) -> None:
    before = envelope_of(invoke("--json", "direction", "list"))
    after = envelope_of(invoke("direction", "list", "--json"))
    assert before == after and after["command"] == "direction list"


@pytest.mark.parametrize(
    ("args", "command", "code", "words"),
    [
        (["check", "no-such-model"], "check", "input", "Unknown profile"),
        (["direction", "show", "nope"], "direction show", "input", "nope"),
        (["check", "qwen2-vl-2b", "--task", "nope"], "check", "usage", "--task"),
        (["direction", "lock", "--bogus"], "direction lock", "usage", "--bogus"),
        (["setup", "nope", "--dry-run"], "setup", "input", "nope"),
    ],
)
def test_a_failing_command_prints_the_envelope_with_the_error(
    args: list[str], command: str, code: str, words: str, world: Path
) -> None:
    proc = invoke("--json", *args)
    doc = envelope_of(proc)  # one JSON document: ok false, the exit code beside the error
    assert proc.returncode == 2 and doc["ok"] is False and doc["command"] == command
    assert doc["error"]["code"] == code and words in doc["error"]["message"]
    assert doc["result"] is None
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stderr == ""


def test_a_result_that_fails_carries_it_with_ok_false(world: Path) -> None:
    """A model that does not fit: the report is the result, the verdict the error, exit 1."""
    proc = invoke("--json", "check", "qwen2.5-vl-7b", "--gpu", "T4", "--task", "full")
    doc = envelope_of(proc)
    assert proc.returncode == 1 and doc["ok"] is False
    assert doc["result"]["fit"]["verdict"] == "does not fit" and doc["result"]["ok"] is False
    assert doc["error"]["code"] == "check_failed" and "does not fit" in doc["error"]["message"]


def test_a_failed_job_report_is_one_envelope(world: Path) -> None:
    """`cluster report` on a failed node used to print the report, then a second JSON document
    for the error: now one envelope, the report its result."""
    failed = {
        "node": "n1",
        "ok": False,
        "failed": {"stage": "weights", "message": "disk full"},
        "stages": [{"stage": "weights", "status": "failed", "detail": "disk full"}],
    }
    (world / "job" / "reports" / "7" / "n1.json").write_text(json.dumps(failed))
    proc = invoke("--json", "cluster", "report", "--job-dir", str(world / "job"), "--job", "7")
    doc = envelope_of(proc)
    assert proc.returncode == 1 and doc["command"] == "cluster report"
    assert [n["node"] for n in doc["result"]["nodes"]] == ["n0", "n1"]
    assert "n1" in doc["error"]["message"] and doc["error"]["code"] == "check_failed"


def test_a_password_in_a_source_url_reaches_no_envelope(world: Path) -> None:
    """`env --source URL` printed the URL as given, password and all, as its result's source."""
    proc = invoke("--json", "env", "--source", "https://bob:hunter2@mirror.invalid:1/x")
    doc = envelope_of(proc)
    assert "hunter2" not in proc.stdout + proc.stderr
    assert doc["result"]["env"]["HF_ENDPOINT"] == "https://mirror.invalid:1/x"
    # and in an error's message and hint (the entry point's guard, now the envelope's too)
    proc = invoke(
        "--json", "download", "qwen2-vl-2b", "--source", "https://bob:hunter2@127.0.0.1:9/x"
    )
    assert "hunter2" not in proc.stdout + proc.stderr
    assert envelope_of(proc)["ok"] is False


def test_the_envelope_through_the_console_script_start_up() -> None:
    """The subprocess path (python -m provision), as scripts run it."""
    proc = run_cli("--json", "gpus")
    doc = envelope_of(proc)
    assert doc["command"] == "gpus" and isinstance(doc["result"], list) and doc["result"]


def test_a_failed_setup_carries_its_stages_as_the_result(world: Path) -> None:
    """A setup that stops at a stage: the stages (done, failed, not run) are the envelope's
    result with ok false and the stage's error, as the table people see; no error.partial."""
    args = ["setup", "tiny-a", "--profiles-dir", str(world / "profiles")]
    args += ["--env", str(world / "env"), "--torch-index", str(world / "no-wheels")]
    env = {"PROVISION_LOCK_DIR": str(world / "locks")}
    proc = invoke("--json", *args, env=env)
    doc = envelope_of(proc)
    assert proc.returncode == 2 and doc["command"] == "setup" and doc["ok"] is False
    stages = {s["stage"]: s["status"] for s in doc["result"]["stages"]}
    assert stages == {
        "check": "done",
        "lock": "failed",
        "env": "not run",
        "weights": "not run",
        "fixes": "not run",
        "smoke": "not run",
    }
    assert "--torch-index" in doc["error"]["message"] and doc["error"]["code"] == "input"
    # people get the same table, then the message on stderr
    human = invoke(*args, env=env)
    assert human.returncode == 2 and "stopped at lock" in human.stdout
    assert "--torch-index" in human.stderr and "Traceback" not in human.stdout + human.stderr
