"""Smoke failures that need no model: bad input, a timeout, an environment without torch, an
interpreter that dies; and the failure table itself."""

from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.lock.lockfile import read_lock, tool_table
from provision.patches import get_fix
from provision.profiles import load_profile
from provision.smoke import run as smoke_run
from provision.smoke.hints import _table, hint_for
from provision.smoke.run import run_smoke
from tests.cli_helpers import invoke
from tests.smoke.helpers import write_smoke_profile


@pytest.fixture
def absent_profile(tmp_path: Path):
    path = write_smoke_profile(tmp_path / "profiles", "tiny-absent", "tiny-org/absent")
    return load_profile(str(path))


def test_a_smoke_that_runs_too_long_is_stopped_and_says_so(absent_profile, tmp_path: Path) -> None:
    lock = tmp_path / "pylock.toml"
    result = run_smoke(
        absent_profile, Path(sys.executable), tmp_path / "hf", lock_file=lock, timeout=0.5
    )
    assert not result.ok
    assert result.error["type"] == "SmokeTimeout"
    assert "within 0.5 s" in result.error["message"]  # not rounded down to "0 s"
    assert "--timeout" in result.next_step
    assert tool_table(read_lock(lock))["smoke"]["error"]["type"] == "SmokeTimeout"


def test_a_timeout_also_stops_what_the_runner_started(absent_profile, tmp_path: Path) -> None:
    """A backend's own worker processes must not outlive the smoke (they would hold the GPU)."""
    pid_file = tmp_path / "worker.pid"
    spawner = tmp_path / "python"
    spawner.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nsleep 300\n")
    spawner.chmod(0o755)
    result = run_smoke(absent_profile, spawner, tmp_path / "hf", timeout=1)
    assert result.error["type"] == "SmokeTimeout"
    assert _gone(int(pid_file.read_text())), "the worker outlived the smoke's timeout"


def _gone(pid: int, seconds: float = 5.0) -> bool:
    """The process ended (or is a zombie waiting for init to reap it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0]
        except FileNotFoundError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_sigterm_to_provision_also_stops_the_runner_s_group(absent_profile, tmp_path: Path):
    """`timeout`, a CI job's cancel or an ssh hang-up sends SIGTERM/SIGHUP to provision, not to
    the runner's own session: provision must stop the runner and its workers before it exits."""
    pid_file = tmp_path / "worker.pid"
    spawner = tmp_path / "python"
    spawner.write_text(f"#!/bin/sh\nsleep 300 &\necho $! > {pid_file}\nsleep 300\n")
    spawner.chmod(0o755)
    code = (
        "import sys; from pathlib import Path\n"
        "from provision.profiles import load_profile\n"
        "from provision.smoke.run import run_smoke\n"
        f"run_smoke(load_profile({str(absent_profile.path)!r}), Path({str(spawner)!r}), "
        f"Path({str(tmp_path / 'hf')!r}), timeout=120)\n"
    )
    caller = subprocess.Popen([sys.executable, "-c", code])
    try:
        for _ in range(100):
            if pid_file.exists() and pid_file.read_text().strip():
                break
            time.sleep(0.1)
        else:
            pytest.fail("the runner never started its worker")
        caller.send_signal(signal.SIGTERM)
        assert caller.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        caller.kill()
    assert _gone(int(pid_file.read_text())), "the worker outlived provision"


def test_an_environment_without_torch_names_the_missing_package(
    absent_profile, tmp_path: Path
) -> None:
    from provision.uv import uv_bin

    env = tmp_path / "bare"
    subprocess.run([uv_bin(), "venv", "-q", "--python", sys.executable, str(env)], check=True)
    result = run_smoke(
        absent_profile, env / "bin" / "python", tmp_path / "hf", target=f"--env {env}"
    )
    assert not result.ok
    assert result.error["stage"] == "import"
    assert result.error["message"] == "No module named 'torch'"
    assert "lacks the Python package `torch`" in result.next_step
    assert result.versions["python"].startswith(f"{sys.version_info[0]}.{sys.version_info[1]}")


def test_an_interpreter_that_dies_is_reported_with_its_last_words(
    absent_profile, tmp_path: Path
) -> None:
    # A real crash (SIGABRT) of a real interpreter before it could write a report.
    dying = tmp_path / "python"
    dying.write_text(
        f"#!/bin/sh\necho 'Fatal Python error: a native library broke'\n"
        f'exec {sys.executable} -c "import os; os.abort()"\n'
    )
    dying.chmod(0o755)
    result = run_smoke(absent_profile, dying, tmp_path / "hf")
    assert result.error["type"] == "RunnerCrashed"
    assert "Fatal Python error: a native library broke" in result.error["message"]
    assert "stopped before reporting" in result.next_step


def test_bad_interpreter_paths_are_one_message(absent_profile, tmp_path: Path) -> None:
    with pytest.raises(ProvisionError, match="not found or not executable"):
        run_smoke(absent_profile, tmp_path / "nope" / "python", tmp_path / "hf")
    with pytest.raises(ProvisionError, match="is a folder"):
        run_smoke(absent_profile, tmp_path, tmp_path / "hf")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env", "{file}"], "is a file, not a virtual environment"),
        (["--env", "{tmp}/a", "--python", sys.executable], "either --env or --python"),
        (["--python", "{tmp}/missing/python"], "not found or not executable"),
        ([], "No environment for tiny-absent at"),
        (["--python", sys.executable, "--backend", "tgi"], "Unknown backend 'tgi'"),
    ],
)
def test_cli_bad_input_exits_2_with_one_message(
    absent_profile, tmp_path: Path, args: list[str], message: str
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("not an env")
    filled = [a.format(file=a_file, tmp=tmp_path) for a in args]
    proc = invoke(
        "smoke",
        "tiny-absent",
        *filled,
        env={
            "PROVISION_PROFILES_DIR": str(absent_profile.path.parent),
            "PROVISION_DATA_DIR": str(tmp_path / "data"),
        },
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert message in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


# --- the failure table -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error_type", "message", "expected"),
    [
        (
            "RuntimeError",
            "Index put requires the source and destination dtypes match, got BFloat16 for the "
            "destination and Float for the source.",
            "group-beam-dtype",
        ),
        (
            "ImportError",
            "\nQwen2VLVideoProcessor requires the Torchvision library but it was not found",
            "torchvision-missing",
        ),
        (
            "OSError",
            "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find "
            "them in the cached files.",
            "weights-not-cached",
        ),
        ("SafetensorError", "Error while deserializing header: HeaderTooLarge", "corrupt-files"),
        (
            "ValueError",
            "The checkpoint you are trying to load has model type `llava_x` but Transformers does "
            "not recognize this architecture.",
            "unknown-architecture",
        ),
        ("OutOfMemoryError", "CUDA out of memory. Tried to allocate 2.00 GiB", "out-of-memory"),
        ("ModuleNotFoundError", "No module named 'qwen_vl_utils'", "missing-package"),
        ("SomethingElse", "a brand new failure", "other"),
    ],
)
def test_failure_table_maps_real_messages(error_type: str, message: str, expected: str) -> None:
    hint = hint_for(
        {"type": error_type, "message": message},
        {
            "profile": "p",
            "target": "--env /e",
            "hf_home": "/hf",
            "device": "cuda:0",
            "torch": "2.6.0",
            "transformers": "4.51.3",
            "timeout": 60.0,
        },
    )
    assert hint.id == expected
    assert "{" not in hint.next_step  # every placeholder filled
    if expected == "missing-package":
        assert "`qwen_vl_utils`" in hint.next_step


def test_every_fix_the_table_names_exists_and_the_last_entry_catches_all() -> None:
    rows = _table()
    for _ident, _pattern, _next, fix in rows:
        if fix:
            assert get_fix(fix).id == fix
    assert rows[-1][1].pattern == ""


# --- the runner stays standalone; the package carries its files ------------------------------

# pyarrow: the dataset smoke reads parquet with it where the env has it (`datasets` brings it).
ALLOWED_THIRD_PARTY = {
    "torch", "transformers", "PIL", "huggingface_hub", "lmdeploy", "vllm", "pyarrow",
}  # fmt: skip


def test_runner_imports_only_the_stdlib_and_the_target_env_s_libraries() -> None:
    tree = ast.parse(smoke_run.RUNNER.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    outside = names - set(sys.stdlib_module_names) - {"__future__"}
    assert outside <= ALLOWED_THIRD_PARTY, outside
    assert "provision" not in names


def test_the_wheel_ships_the_runner_the_image_and_the_table(tmp_path: Path) -> None:
    from provision.uv import uv_bin

    repo = Path(__file__).resolve().parents[2]
    subprocess.run(
        [uv_bin(), "build", "--wheel", "--quiet", "--out-dir", str(tmp_path), str(repo)],
        check=True,
        env={**os.environ, "UV_NO_PROGRESS": "1"},
    )
    (wheel,) = tmp_path.glob("provision-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "provision/smoke/runner.py",
        "provision/smoke/assets/cat.jpg",
        "provision/data/smoke_failures.toml",
    ):
        assert needed in names
    image = zipfile.ZipFile(wheel).read("provision/smoke/assets/cat.jpg")
    assert image == smoke_run.IMAGE.read_bytes()


def test_a_direction_lock_keeps_each_member_s_smoke(tmp_path: Path) -> None:
    from provision.lock.lockfile import set_tool_section
    from provision.smoke.run import record_smoke

    lock = tmp_path / "pylock.grounding.toml"
    set_tool_section(lock, "profile", {"name": "grounding"})  # a direction, not one model
    record_smoke(lock, "qwen2-vl-2b", {"ok": True, "answer": "a cat"}, into_lock=True)
    record_smoke(lock, "llava-1.5-7b-hf", {"ok": False, "error": {"type": "X"}}, into_lock=True)
    smoke = tool_table(read_lock(lock))["smoke"]
    assert smoke == {
        "qwen2-vl-2b": {"ok": True, "answer": "a cat"},
        "llava-1.5-7b-hf": {"ok": False, "error": {"type": "X"}},
    }
    single = tmp_path / "pylock.qwen2-vl-2b.toml"
    set_tool_section(single, "profile", {"name": "qwen2-vl-2b"})
    record_smoke(single, "qwen2-vl-2b", {"ok": True}, into_lock=True)
    record_smoke(
        single, "qwen2-vl-2b", {"ok": False}, into_lock=True
    )  # a re-run replaces the result
    assert tool_table(read_lock(single))["smoke"] == {"ok": False}


def test_runner_helpers_choose_backend_and_cap_the_context(tmp_path: Path) -> None:
    from provision.smoke import runner

    assert runner.choose_backend("vllm", "cuda:0")[0] == "vllm"
    assert runner.choose_backend("lmdeploy", "cuda:1")[0] == "lmdeploy"
    backend, why = runner.choose_backend("lmdeploy", "cpu")
    assert backend == "transformers" and "needs a GPU" in why
    assert runner.choose_backend("ms-swift", "cuda:0")[0] == "transformers"

    (tmp_path / "config.json").write_text('{"text_config": {"max_position_embeddings": 4096}}')
    assert runner.max_context(str(tmp_path)) == 4096  # llava-1.5: vLLM refuses more
    (tmp_path / "config.json").write_text('{"max_position_embeddings": 128000}')
    assert runner.max_context(str(tmp_path)) == runner.SMOKE_CONTEXT
    assert runner.max_context(str(tmp_path / "missing")) == runner.SMOKE_CONTEXT


def test_a_crash_whose_last_words_look_like_markup_is_printed_as_they_are(
    absent_profile, tmp_path: Path
) -> None:
    # The runner's last line is the environment's text, not rich markup: a path in brackets
    # ("[/opt/...]" reads as a closing tag) must be shown, not end the report in a traceback.
    dying = tmp_path / "python"
    dying.write_text("#!/bin/sh\necho 'cannot open [/opt/conda/lib] [bold]'\nexit 3\n")
    dying.chmod(0o755)
    proc = invoke(
        "smoke",
        "tiny-absent",
        "--python",
        str(dying),
        env={
            "PROVISION_PROFILES_DIR": str(absent_profile.path.parent),
            "PROVISION_DATA_DIR": str(tmp_path / "data"),
            "HF_HOME": str(tmp_path / "hf"),
        },
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    assert "cannot open [/opt/conda/lib] [bold]" in out
    assert "exited with 3 before reporting" in out
