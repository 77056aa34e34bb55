"""The `--json` contract, pinned as pipx pins its result shape: the envelope every command
prints, and for each command the top-level keys and types of its result.

A result must carry every key of one of its command's shapes, with that type (a command has
several shapes where it has several modes: `lock` and `lock --check`). A key may be added
without breaking scripts; removing, renaming or retyping one breaks them, so it fails here and
the envelope's version has to change (docs/json.md). Every reader of JSON in the tests goes
through `check_envelope` (tests/cli_helpers.py), so every command run with --json in any test
is held to this table.
"""

from __future__ import annotations

from typing import Any

ENVELOPE = {"version": int, "command": str, "ok": bool, "result": object, "error": object}
ERROR = {"message": str, "hint": (str, type(None)), "code": str, "exit_code": int}
# The error codes scripts may match (provision/errors.py and its subclasses; "usage" is click's).
ERROR_CODES = {
    "input",
    "usage",
    "check_failed",
    "conflict",
    "source_failed",
    "unreachable",
    "bad_file",
    "node_failed",
    "lease_timeout",
}

N = type(None)
NUM = (int, float)

CHECK = {
    "profile": str,
    "model": str,
    "profile_origin": str,
    "approximate": list,
    "machine": dict,
    "fit": dict,
    "disk": dict,
    "ok": bool,
    "launch": (dict, N),
}
LOCK_CHECKS = ("list", {"profile": str, "task": str, "path": str, "fresh": bool, "reasons": list})
LOCKED_ALL = ("list", {"profile": str, "task": str, "path": str, "ok": bool, "message": str})
SETUP = {
    "profile": str,
    "env": str,
    "lock_file": str,
    "state_file": str,
    "ok": bool,
    "stages": list,
    "outputs": dict,
}
CONFLICT = {"conflict": dict}
DIRECTION_LOCK = {
    "path": str,
    "direction": str,
    "members": dict,
    "python": str,
    "platform": (str, N),
    "torch": str,
    "variant": str,
    "fixes": list,
    "packages": int,
    "resolution": dict,
    "kept": list,
    "seconds": NUM,
    "summary": str,
}
MEMBERSHIP = {
    "direction": str,
    "action": str,
    "profile": str,
    "tasks": list,
    "path": str,
    "members": dict,
    "lock": (dict, N),
    "notes": list,
}
PATCHES = (
    "list",
    {
        "fix": str,
        "package": str,
        "python": str,
        "version": (str, N),
        "state": str,
        "action": str,
        "reason": str,
        "file": (str, N),
        "recorded": bool,
        "check": (dict, N),
    },
)
DOCKER_RENDER = {
    "profile": str,
    "dockerfile": str,
    "dockerignore": str,
    "lock_file": str,
    "lock_sha256": str,
    "base_image": dict,
    "uv_image": str,
    "bake_weights": bool,
    "tag": str,
    "changed": bool,
    "written": bool,
    "warnings": list,
}
JOB_REPORT = {"job_id": str, "ok": bool, "problems": list, "nodes": list, "missing": list}

# command path -> the shapes its result may have (one must match).
CONTRACTS: dict[str, list[Any]] = {
    "check": [CHECK],
    "profiles": [
        (
            "list",
            {
                "name": str,
                "title": str,
                "huggingface": str,
                "params_b": NUM,
                "weights_gib": NUM,
                "tasks": list,
                "gated": bool,
                "builtin": bool,
                "origin": str,
                "path": str,
            },
        )
    ],
    "profiles show": [
        {
            "name": str,
            "path": str,
            "origin": str,
            "title": str,
            "params": dict,
            "weights": dict,
            "tasks": dict,
            "source": dict,
        }
    ],
    "profiles add": [{"name": str, "path": str, "origin": str, "approximate": list, "notes": list}],
    "gpus": [
        (
            "list",
            {
                "name": str,
                "memory_mib": int,
                "compute_capability": (str, N),
                "aliases": list,
                "source": str,
            },
        )
    ],
    "download": [
        {
            "profile": str,
            "source": str,
            "endpoint": (str, N),
            "kind": str,
            "reason": str,
            "repo_id": str,
            "revision": str,
            "commit": (str, N),
            "files": list,
            "total_bytes": int,
            "bytes_fetched": int,
            "bytes_reused": int,
            "files_fetched": int,
            "files_reused": int,
            "cache_dir": str,
            "snapshot": str,
            "lock_file": (str, N),
            "record_file": (str, N),
            "seconds": NUM,
        }
    ],
    "verify": [
        {
            "profile": str,
            "ok": bool,
            "lock_file": str,
            "repo_id": str,
            "source": str,
            "revision": str,
            "commit": (str, N),
            "snapshot": str,
            "files": int,
            "bytes": int,
            "missing": list,
            "wrong": list,
            "unverified": list,
            "checks": list,
        }
    ],
    "env": [
        {
            "env": dict,
            "shell": str,
            "source": (str, N),
            "reason": (str, N),
            "persisted": list,
            "notes": list,
        }
    ],
    "patch status": [PATCHES],
    "patch apply": [PATCHES],
    "patch revert": [PATCHES],
    "lock": [
        {
            "path": str,
            "profile": str,
            "task": str,
            "python": str,
            "torch": str,
            "variant": str,
            "rewrites": list,
            "warnings": list,
            "driver": dict,
            "decision": dict,
            "indexes": (dict, list),
            "target": dict,
            "resolution": dict,
            "kept": list,
        },
        LOCK_CHECKS,
        LOCKED_ALL,
    ],
    "docker": [
        DOCKER_RENDER
        | {
            "tags": list,
            "engine": (str, N),
            "context": (str, N),
            "build": (dict, N),
            "pushed": (list, bool, N),
            "labels": dict,
            "timings": dict,
        },
        ("list", DOCKER_RENDER),
    ],
    "smoke": [
        {
            "profile": str,
            "ok": bool,
            "summary": str,
            "answer": (str, N),
            "repo_id": (str, N),
            "python": str,
            "backend": (str, N),
            "device": (str, N),
            "modes": dict,
            "error": (dict, N),  # {stage, type, message, ...} from the runner
            "versions": dict,
        },
        {  # smoke --dataset NAME --n N
            "profile": str,
            "ok": bool,
            "dataset": str,
            "repo_id": str,
            "commit": (str, N),
            "model": str,
            "n": int,
            "items_run": int,
            "scored": int,
            "correct": int,
            "accuracy": (float, int, N),
            "items": list,
            "error": (str, N),
            "python": str,
            "lock_file": (str, N),
        },
    ],
    "serve": [
        {
            "profile": str,
            "stack": str,
            "argv": list,
            "line": str,
            "env": dict,
            "environment": (str, N),
            "lock_file": (str, N),
            "repo_id": (str, N),
            "commit": (str, N),
            "verified": bool,
            "host": str,
            "port": int,
            "base_url": str,
            "health_url": str,
            "curl": str,
            "notes": list,
        }
    ],
    "setup": [
        SETUP,
        {
            "profile": str,
            "task": str,
            "env": str,
            "lock": str,
            "lock_action": str,
            "relock_from": (str, N),
            "variant": (str, N),
            "records": str,
        },
    ],
    "direction list": [{"directions": list, "environments": list}],
    "direction show": [
        {
            "name": str,
            "description": str,
            "path": str,
            "builtin": bool,
            "members": list,
            "packages": list,
            "env": (str, N),
            "lock": dict,
            "registry": (dict, N),
        }
    ],
    "direction check": [
        {"direction": str, "machine": dict, "members": list, "disk": dict, "ok": bool}
    ],
    "direction lock": [DIRECTION_LOCK, LOCK_CHECKS, LOCKED_ALL, CONFLICT],
    "direction setup": [
        {
            "direction": str,
            "env": str,
            "lock": str,
            "ok": bool,
            "setup": dict,
            "shared": dict,
            "registry": str,
            "entry": (dict, N),
            "activate_files": list,
            "notes": list,
        },
        CONFLICT,
    ],
    "direction add": [MEMBERSHIP, CONFLICT],
    "direction remove": [MEMBERSHIP, CONFLICT],
    "cluster slurm": [
        {
            "job": dict,
            "script": str,
            "launcher": (str, dict),
            "lock": (str, N),
            "job_id": (str, N),
            "state": (str, N),
            "report": (dict, N),
        }
    ],
    "cluster node": [
        {
            "node": str,
            "host": str,
            "job": str,
            "target": str,
            "env_mode": str,
            "env": (str, N),
            "ok": (bool, N),
            "failed": (dict, N),
            "stages": list,
        }
    ],
    "cluster report": [JOB_REPORT],
}


def _type_ok(value: Any, expected: Any) -> bool:
    if expected is object:
        return True
    kinds = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in kinds:
        return False  # a bool is an int to isinstance, never to a script
    return isinstance(value, kinds)


def shape_problems(value: Any, shape: Any) -> list[str]:
    """What in `value` does not match `shape` (empty: it matches)."""
    if isinstance(shape, tuple) and shape and shape[0] == "list":
        if not isinstance(value, list):
            return [f"a list expected, got {type(value).__name__}"]
        out = []
        for i, item in enumerate(value):
            out += [f"[{i}] {p}" for p in shape_problems(item, shape[1])]
        return out
    if not isinstance(value, dict):
        return [f"an object expected, got {type(value).__name__}"]
    out = []
    for key, expected in shape.items():
        if key not in value:
            out.append(f"key {key!r} missing")
        elif not _type_ok(value[key], expected):
            out.append(f"key {key!r} is {type(value[key]).__name__}, not {expected}")
    return out


def check_envelope(doc: Any) -> dict[str, Any]:
    """Assert `doc` is the versioned envelope, its error (when failed) and its result (when
    there is one) as the command's contract says; return it."""
    assert isinstance(doc, dict), f"the envelope is an object, got {doc!r:.200}"
    assert set(doc) == set(ENVELOPE), f"envelope keys {sorted(doc)}"
    assert doc["version"] == 1 and type(doc["version"]) is int
    assert isinstance(doc["ok"], bool)
    command = doc["command"]
    assert command in CONTRACTS, f"command {command!r} has no contract in tests/json_contract.py"
    if doc["ok"]:
        assert doc["error"] is None, doc["error"]
    else:
        error = doc["error"]
        problems = shape_problems(error, ERROR)
        assert not problems, f"{command}: error {problems}: {error}"
        assert set(error) == set(ERROR), sorted(error)
        assert error["code"] in ERROR_CODES, error["code"]
        assert error["exit_code"] in (1, 2), error
    if doc["result"] is not None:
        tried = [shape_problems(doc["result"], shape) for shape in CONTRACTS[command]]
        assert any(not p for p in tried), (
            f"`{command}` result matches none of its contract's shapes: {tried}"
        )
    return doc
