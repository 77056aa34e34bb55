"""`provision lock` without typer: its command line read from a grammar generated from typer.

typer's import and the building of a command are 30-40 ms of each `provision lock` here, about a
fifth of what provision adds to the `uv pip compile` it runs (issue 17). The options stay declared
once, in typer (provision/cli/lock.py and options.py); `provision.cli.reference --write` writes
what they accept to provision/data/cli_grammar.json, and tests/test_reference.py fails when that
file differs from what typer declares now.

A command line this reader takes exactly as click would (known options, values of the declared
type or choice, at most the declared arguments) runs the command's body directly. Anything else,
`--help`, a typo, `-ofile`, a bad choice, an empty environment variable, goes through typer,
which prints its usual usage error; nothing here prints one.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing.TYPE_CHECKING without typing's import, before uv starts (early.py)
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from typing import Any

GRAMMAR = "cli_grammar.json"

# Command -> (module, function): the body the typer command calls with the same arguments.
QUICK = {"lock": ("provision.cli.lock_run", "run")}

_TYPES = {"str", "int", "float", "choice"}  # click's names


def run_quick(argv: Sequence[str]) -> bool:
    """Run `argv` (without the program name) when it is one of the QUICK commands and this
    reader can take it; False when typer must (nothing has run then)."""
    if not argv or argv[0] not in QUICK:
        return False
    name = argv[0]
    grammar = _load().get(name)
    if grammar is None:
        return False
    kwargs = parse(grammar, argv[1:], os.environ)
    if kwargs is None:
        return False
    if name == "lock" and not kwargs["check"] and not kwargs["all_profiles"]:
        # A re-lock starts uv on the last run's input before the lock modules are even imported;
        # the lock adopts it only if its own input is the same (provision/lock/early.py).
        from provision.lock import early

        early.start(list(argv))
    from provision.cli.output import record_command, short_run

    short_run(True)  # lock is one of app.COLLECTOR_OFF: main.entry() may leave quickly
    record_command(name, bool(kwargs.get(grammar["json"], False)))
    import importlib

    module, function = QUICK[name]
    getattr(importlib.import_module(module), function)(**kwargs)
    return True


def _load() -> dict[str, Any]:
    import json

    # provision/data/ beside this package, as provision.resources.data_file has it (without
    # pathlib's import, 3 ms before uv can start)
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        with open(os.path.join(here, "data", GRAMMAR), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):  # a broken install: typer still parses
        return {}


def parse(
    grammar: Mapping[str, Any], args: Sequence[str], environ: Mapping[str, str]
) -> dict[str, Any] | None:
    """The keyword arguments click would give the command for `args`; None where this reader
    is not sure it would (click then decides, and prints its error if there is one)."""
    flags: dict[str, tuple[Mapping[str, Any], bool]] = {}
    for param in grammar["options"]:
        for opt in param["opts"]:
            flags[opt] = (param, True)
        for opt in param.get("secondary", []):
            flags[opt] = (param, False)
    values: dict[str, Any] = {}
    positional: list[str] = []
    rest = list(args)
    only_positional = False
    while rest:
        token = rest.pop(0)
        if only_positional or token == "-" or not token.startswith("-"):
            positional.append(token)
            continue
        if token == "--":
            only_positional = True
            continue
        name, eq, attached = token.partition("=") if token.startswith("--") else (token, "", "")
        found = flags.get(name)
        if found is None:
            return None
        param, on = found
        if param["flag"]:
            if eq:
                return None
            values[param["name"]] = on
            continue
        if not eq:
            if not rest:
                return None
            attached = rest.pop(0)
        value = _convert(param, attached)
        if value is None:
            return None
        values[param["name"]] = value  # given twice, click keeps the last, as here
    arguments = grammar["arguments"]
    if len(positional) > len(arguments):
        return None
    for param, token in zip(arguments, positional, strict=False):  # lengths checked above
        values[param["name"]] = token
    for param in [*grammar["options"], *arguments]:
        if param["name"] in values:
            continue
        envvar = param.get("envvar")
        if envvar and envvar in environ:
            if param["flag"] or not environ[envvar]:
                return None  # click's reading of these is not worth repeating here
            value = _convert(param, environ[envvar])
            if value is None:
                return None
            values[param["name"]] = value
            continue
        values[param["name"]] = param["default"]
    return values


def _convert(param: Mapping[str, Any], raw: str) -> Any:
    kind = param["type"]
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
    except ValueError:
        return None
    if kind == "choice" and raw not in param["choices"]:
        return None
    return raw


# --- the grammar, from typer ---------------------------------------------------------------------


def grammar_json() -> str:
    """provision/data/cli_grammar.json as typer declares the QUICK commands now."""
    import json

    from provision.cli.app import COMMANDS, build_commands

    doc: dict[str, Any] = {
        "_generated": "by `python -m provision.cli.reference --write` from the typer app; "
        "read by provision/cli/quick.py",
    }
    for name in QUICK:
        doc[name] = describe(build_commands(COMMANDS[name])[name])
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def describe(command: Any) -> dict[str, Any]:
    """One click command as the grammar: its options and arguments. Raises on anything this
    reader does not handle, so that such an option is a decision, not a silent misreading."""
    import enum

    options: list[dict[str, Any]] = []
    arguments: list[dict[str, Any]] = []
    json_name = None
    for param in command.params:
        entry: dict[str, Any] = {"name": param.name}
        kind = param.type.name
        if getattr(param, "is_flag", False):
            kind = "flag"
        elif kind not in _TYPES:
            raise ValueError(f"{command.name}: {param.name} has type {kind}")
        if param.nargs != 1 or getattr(param, "multiple", False) or getattr(param, "count", False):
            raise ValueError(f"{command.name}: {param.name} takes several values")
        if getattr(param, "prompt", None) or param.required:
            raise ValueError(f"{command.name}: {param.name} is required or prompted")
        if param.callback is not None:
            if list(getattr(param, "opts", [])) != ["--json"]:
                raise ValueError(f"{command.name}: {param.name} has a callback")
            json_name = param.name  # options.JsonFlag: its callback is record_command's call
        default = param.default
        if isinstance(default, enum.Enum):
            default = default.value
        entry.update(flag=kind == "flag", type=kind, default=default)
        if kind == "choice":
            if not param.type.case_sensitive:
                raise ValueError(f"{command.name}: {param.name} ignores case")
            entry["choices"] = list(param.type.choices)
        if param.param_type_name == "argument":
            arguments.append(entry)
            continue
        entry["opts"] = list(param.opts)
        if param.secondary_opts:
            entry["secondary"] = list(param.secondary_opts)
        if param.envvar:
            entry["envvar"] = param.envvar
        options.append(entry)
    if json_name is None:
        raise ValueError(f"{command.name}: no --json flag")
    return {"options": options, "arguments": arguments, "json": json_name}
