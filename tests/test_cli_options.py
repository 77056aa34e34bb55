"""Options declared once (provision/cli/options.py), fixed choices as enums: a typo fails with the
list of choices and exit 2, before any work. In-process (typer's CliRunner): parsing only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from provision.choices import ATTENTION, QUANTS, TASKS, stacks
from provision.cli.app import app
from tests.json_contract import check_envelope

CLI = Path(__file__).resolve().parent.parent / "provision" / "cli"


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def _listed(output: str, values) -> bool:
    return all(f"'{v}'" in output for v in values)


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (("check", "qwen2-vl-2b", "--task", "lroa"), TASKS),
        (("check", "qwen2-vl-2b", "--quant", "int3"), QUANTS),
        (("check", "qwen2-vl-2b", "--stack", "vlm"), sorted(stacks())),
        (("check", "qwen2-vl-2b", "--attention", "flash"), ATTENTION),
        (("lock", "qwen2-vl-2b", "--task", "lroa"), TASKS),
        (("setup", "qwen2-vl-2b", "--task", "lroa"), TASKS),
        (("docker", "qwen2-vl-2b", "--task", "lroa"), TASKS),
        (("direction", "add", "d", "qwen2-vl-2b", "--task", "lroa"), TASKS),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, tuple) else None,
)
def test_a_typo_in_a_fixed_choice_fails_with_the_list(args, choices):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert "is not one of" in result.output and _listed(result.output, choices), result.output


def test_a_valid_choice_reaches_the_library_as_a_plain_string():
    """check --json with enum choices: the request the library saw holds the strings."""
    result = invoke(
        "--json", "check", "qwen2-vl-2b", "--task", "qlora", "--quant", "int4",
        "--stack", "peft", "--attention", "eager", "--gpu", "A100-80GB",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    request = check_envelope(json.loads(result.output))["result"]["fit"]["request"]
    assert (request["task"], request["quant"]) == ("qlora", "int4")
    assert (request["stack"], request["attention"]) == ("peft", "eager")
    assert "Task." not in result.output


def test_profiles_dir_is_declared_once_in_options():
    declared = [p.name for p in CLI.glob("*.py") if '"--profiles-dir"' in p.read_text()]
    assert declared == ["options.py"]


def test_no_command_module_imports_another():
    """cli/*.py may import the shared modules (options, output, plain, shared, main, app, quick)
    and its own body (lock -> lock_run), not another command module: what two commands share
    lives in shared.py."""
    import ast

    shared = {"options", "output", "plain", "shared", "main", "app", "quick", "__init__"}
    commands = {p.stem for p in CLI.glob("*.py")} - shared
    crossings = []
    for path in CLI.glob("*.py"):
        if path.stem in ("app", "main"):
            continue  # the app lists every command
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("provision.cli"):
                names = [node.module.rsplit(".", 1)[-1]] if node.module != "provision.cli" else []
                names += [a.name for a in node.names] if node.module == "provision.cli" else []
                own = f"{path.stem}_run"
                crossings += [f"{path.stem} -> {n}" for n in names if n in commands and n != own]
    assert crossings == []
