"""The CLI as users meet it: help, light start-up, exit codes, JSON, and `check` end to end."""

from __future__ import annotations

import subprocess
import sys

from tests.cli_helpers import envelope_of, invoke, result_of, run_cli, run_json

# Nothing on the path of --help or check: the big libraries, nor provision's resolver.
HEAVY = (
    "torch", "transformers", "modelscope", "docker", "huggingface_hub",
    "provision.lock.resolve", "provision.lock.locking", "provision.torch_select",
    "packaging.requirements", "tomli_w",
)  # fmt: skip


def test_help_lists_every_command_with_an_example():
    proc = run_cli("--help")
    assert proc.returncode == 0
    from provision.cli.app import COMMANDS, EXAMPLES, build_commands

    # Every command each module really defines (built the way the app builds the invoked one).
    names = {name for module in set(COMMANDS.values()) for name in build_commands(module)}
    assert names == set(COMMANDS)
    for name in names:
        assert f"  {name} " in proc.stdout, f"{name} missing from --help"
    examples = dict(EXAMPLES)
    assert set(examples) == names, "every command has exactly one example"
    for example in examples.values():
        assert example in proc.stdout
    # Each one-line description is whole, even in an 80-column terminal (click cuts a longer
    # one, or one with an inline "e.g.", with "...").
    narrow = invoke("--help", env={"COLUMNS": "80"}).stdout
    commands = narrow.split("Commands:")[1].split("Examples:")[0]
    from provision.cli.app import SUMMARIES

    assert set(SUMMARIES) == names
    for line in filter(str.strip, commands.splitlines()):
        name, summary = line.split(maxsplit=1)
        assert summary == SUMMARIES[name], line
    # And each command's own --help ends with its example (in-process: the start-up path is
    # the top-level --help above, one child process rather than one per command).
    for name, example in examples.items():
        own = invoke(name, "--help")
        assert own.returncode == 0 and example in own.stdout, name


def test_start_up_imports_nothing_heavy():
    code = (
        # At exit: a short command leaves through os._exit once the atexit functions ran.
        "import atexit, sys, runpy\n"
        "sys.argv = ['provision', 'check', 'qwen2.5-vl-7b', '--gpu', 'RTX 4090', '--json']\n"
        f"atexit.register(lambda: print('HEAVY', [m for m in {HEAVY!r} if m in sys.modules]))\n"
        "try:\n    runpy.run_module('provision', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode in (0, 1), proc.stderr[-500:]  # fits, or does not
    assert "HEAVY []" in proc.stdout, proc.stdout[-500:]
    for argv in ("'--help'", "'check', 'qwen2.5-vl-7b'"):  # help, and check probing this machine
        other = code.replace("'check', 'qwen2.5-vl-7b', '--gpu', 'RTX 4090', '--json'", argv)
        proc = subprocess.run([sys.executable, "-c", other], capture_output=True, text=True)
        assert "HEAVY []" in proc.stdout, (argv, proc.stdout[-500:])


def _modules_after(*argv: str) -> set[str]:
    """The modules a `provision ARGV` process has imported when it ends."""
    code = (
        "import atexit, sys, runpy\n"
        f"sys.argv = ['provision', *{list(argv)!r}]\n"
        "atexit.register(lambda: sys.__stdout__.write("
        "'\\nMODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
        "try:\n    runpy.run_module('provision', run_name='__main__')\n"
        "except SystemExit:\n    pass\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "MODULES " in proc.stdout, proc.stderr[-500:]
    return set(proc.stdout.rsplit("MODULES ", 1)[1].split())


def test_only_the_invoked_command_is_built_and_rich_only_when_it_prints():
    """Issue 17: start-up builds the one command that runs; --help imports no command module."""
    from provision.cli.app import COMMANDS

    commands = {f"provision.cli.{m}" for m in COMMANDS.values()}
    loaded = _modules_after("check", "qwen2.5-vl-7b", "--gpu", "RTX 4090", "--json")
    assert loaded & commands == {"provision.cli.check"}
    assert not any(m == "rich" or m.startswith("rich.") for m in loaded)  # JSON: no rich
    shown = _modules_after("check", "qwen2.5-vl-7b", "--gpu", "RTX 4090")
    assert not any(m.startswith("rich") for m in shown)  # check prints through cli/plain.py
    assert "rich.console" in _modules_after("gpus")  # other reports: rich's tables
    helped = _modules_after("--help")
    assert helped & commands == set() and "rich" not in helped
    assert _modules_after("gpus", "--help") & commands == {"provision.cli.gpus"}


def test_a_mistyped_command_gets_a_suggestion_from_the_commands_not_yet_built():
    proc = run_cli("chek")
    assert proc.returncode == 2
    assert "No such command 'chek'. Did you mean 'check'?" in proc.stderr


def test_check_on_this_machine_reports_and_sets_the_exit_code():
    """Issue 2: on a GPU-less machine, a report, exit 1 and a GPU to plan with."""
    from provision.hardware.probe import probe_machine

    proc = run_cli("check", "qwen2.5-vl-7b")
    rc, report = run_json("check", "qwen2.5-vl-7b")
    if not probe_machine().gpus:
        assert proc.returncode == rc == 1
        assert "no NVIDIA GPU" in proc.stdout and "does not fit" in proc.stdout
        assert "What would make it fit" in proc.stdout
        assert report["fit"]["suggestions"][-1]["kind"] == "gpu-model"
        assert "--gpu '" in proc.stdout  # a concrete catalogue GPU to plan with
    else:  # a GPU machine: the exit code follows the verdict and the disk
        assert proc.returncode == rc == (0 if report["ok"] else 1)
        assert report["machine"]["source"] in ("nvml", "nvidia-smi", "/proc")


def test_an_unwritable_path_is_one_message_not_a_traceback(tmp_path):
    proc = run_cli("env", "--source", "hf", "--persist", env={"HOME": "/proc/no-such-home"})
    assert proc.returncode == 2
    assert "Cannot use /proc/no-such-home" in proc.stderr and "Traceback" not in proc.stderr


def test_check_planned_target_json():
    rc, report = run_json("check", "qwen2.5-vl-7b", "--gpu", "A100-80GB x2", "--task", "lora")
    assert rc == 0
    assert report["machine"]["planned"] and len(report["machine"]["gpus"]) == 2
    assert report["fit"]["verdict"] == "fits"
    names = [c["name"] for c in report["fit"]["estimate"]["components"]]
    assert names[:2] == ["weights", "lora state"]


def test_json_flag_after_the_command_too():
    proc = run_cli("check", "smolvlm-256m", "--gpu", "T4", "--json")
    assert proc.returncode == 0
    assert result_of(proc)["fit"]["verdict"] == "fits"


def test_does_not_fit_exits_1_and_ranks_suggestions():
    args = ("check", "qwen2.5-vl-7b", "--gpu-mem", "16GiB", "--stack", "transformers")
    rc, report = run_json(*args)
    assert rc == 1 and report["fit"]["verdict"] == "does not fit"
    kinds = [s["kind"] for s in report["fit"]["suggestions"]]
    order = [kinds.index(k) for k in ("gpus", "quant", "model", "gpu-model")]
    assert order == sorted(order), kinds
    for s in report["fit"]["suggestions"]:
        if s["kind"] != "gpu-model":  # each change alone brings it under the comfortable line
            assert s["need_gib"] <= 16 * 0.92, s


def test_usage_errors_exit_2_with_one_message():
    cases = [
        (("check", "nope-model"), "Unknown profile"),
        (("check", "qwen2.5-vl-7b", "--gpu", "RTX 4009"), "Close names: RTX 4090"),
        (("check", "qwen2.5-vl-7b", "--gpu-mem", "24 gigs"), "is not a size"),
        (("check", "qwen2.5-vl-7b", "--gpu-mem", "-3GiB"), "is not a size"),
        (("check", "qwen2.5-vl-7b", "--task", "pretrain"), "'infer', 'lora', 'qlora', 'full'"),
        (("check", "qwen2.5-vl-7b", "--quant", "int3", "--gpu", "L4"), "is not one of 'bf16'"),
        (("check", "qwen2.5-vl-7b", "--task", "lora", "--quant", "int4", "--gpu", "L4"), "qlora"),
        (("check", "qwen2.5-vl-7b", "--gpus", "2"), "needs a GPU"),
        (("check", "qwen2.5-vl-7b", "--gpu", "A100 x0"), "at least 1"),
        (("check", "qwen2.5-vl-7b", "--gpu", "L4", "--driver", "foo"), "not an NVIDIA driver"),
    ]
    for args, message in cases:
        proc = invoke(*args)  # in-process: parsing and messages only
        assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
        assert message in proc.stderr, (args, proc.stderr)
        assert "Traceback" not in proc.stderr


def test_debug_env_shows_the_traceback():
    proc = run_cli("check", "nope-model", env={"PROVISION_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_json_error_payload():
    proc = run_cli("--json", "check", "nope-model")
    assert proc.returncode == 2
    error = envelope_of(proc)["error"]
    assert error["message"].startswith("Unknown profile") and error["code"] == "input"


def test_gpus_catalogue_lists_nvml_names():
    rc, rows = run_json("gpus")
    assert rc == 0
    by_name = {r["name"]: r for r in rows}
    assert by_name["NVIDIA GeForce RTX 4090"]["memory_mib"] == 24564
    assert by_name["NVIDIA A100-SXM4-80GB"]["compute_capability"] == "8.0"
