"""The group-beam-search-dtype fix, for real: the crash in an affected transformers, the fix through
`provision patch`, the float32 result, byte-exact revert, idempotence, and "not applicable"
where the bug is not.

Each environment is built once per session by uv (tests/patches/conftest.py). Tests that patch the
4.51.3 environment put its file back before they end, so they can run in any order.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from provision.errors import ProvisionError
from provision.lock.lockfile import read_lock, set_tool_section, tool_table
from provision.patches import CHANGED, apply_fixes, fix_status, revert_fixes
from provision.uv import uv_bin
from tests.cli_helpers import run_cli, run_json
from tests.envs.helpers import run_in
from tests.patches.conftest import TfEnv

pytestmark = pytest.mark.slow

FIX = "group-beam-search-dtype"
CRASH = "Index put requires the source and destination dtypes match"

# A tiny random Llama (2 layers), the same weights in float32 and in bf16, diverse (group) beam
# search with output_scores=True. Prints one JSON line.
REPRO = r"""
import json
import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(1234)
config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0)
model = LlamaForCausalLM(config).eval().to(torch.bfloat16).to(torch.float32)
prompt = torch.tensor([[1, 7, 11, 23, 42]])
args = dict(attention_mask=torch.ones_like(prompt), max_new_tokens=5, min_new_tokens=5,
            num_beams=4, num_beam_groups=2, diversity_penalty=0.5, do_sample=False,
            output_scores=True, return_dict_in_generate=True)
out = {}
with torch.no_grad():
    ref = model.generate(prompt, **args)
    out["float32"] = ref.sequences.tolist()
    try:
        half = model.to(torch.bfloat16).generate(prompt, **args)
    except RuntimeError as exc:
        out["error"] = str(exc)
    else:
        out["bf16"] = half.sequences.tolist()
        out["bf16_scores"] = [str(s.dtype) for s in half.scores]
print(json.dumps(out))
"""


def _repro(env: TfEnv) -> dict:
    proc = run_in(env.python, REPRO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def lock_copy(tf451: TfEnv, tmp_path: Path) -> Path:
    """The session lock, copied: tests record into it without touching the shared one."""
    copy = tmp_path / "pylock.toml"
    shutil.copy(tf451.lock, copy)
    return copy


@pytest.fixture
def pristine(tf451: TfEnv):
    """The 4.51.3 file as released before the test, put back (with no backup left) after it."""
    path = tf451.generation_utils
    original = path.read_bytes()
    yield original
    path.write_bytes(original)
    backup = path.with_name(path.name + ".provision-orig")
    if backup.exists():
        backup.unlink()


def test_env_was_built_from_the_lock_with_local_torch(tf451: TfEnv) -> None:
    assert tf451.built.action == "created"
    assert "torch==2.13.0+cpu" in tf451.built.installed
    assert "transformers==4.51.3" in tf451.built.installed
    assert tf451.built.local_files >= 1  # torch came from the wheel folder


def test_crash_then_apply_fixes_it_then_revert_restores_the_bytes(
    tf451: TfEnv, lock_copy: Path, pristine: bytes
) -> None:
    env, path = str(tf451.env), tf451.generation_utils
    assert _sha(path.read_bytes()) == _sha(pristine)

    before = _repro(tf451)
    assert CRASH in before.get("error", ""), before
    pyc = path.parent / "__pycache__" / "utils.cpython-311.pyc"
    assert pyc.exists(), "the import above left bytecode for the file"

    rc, status = run_json("patch", "status", FIX, "--env", env, "--lock", str(lock_copy))
    assert rc == 0 and status[0]["state"] == "original" and status[0]["version"] == "4.51.3"
    assert status[0]["form"].startswith("4.51-4.56")

    rc, applied = run_json("patch", "apply", FIX, "--env", env, "--lock", str(lock_copy))
    assert rc == 0, applied
    assert applied[0]["action"] == "applied" and applied[0]["state"] == "patched"
    assert str(pyc) in applied[0]["bytecode_removed"] and not pyc.exists()
    backup = path.with_name(path.name + ".provision-orig")
    assert backup.read_bytes() == pristine
    patched = path.read_bytes()
    assert patched != pristine
    changed = [
        (a, b)
        for a, b in zip(pristine.decode().splitlines(), patched.decode().splitlines(), strict=True)
        if a != b
    ]
    indent = " " * 20
    assert changed == [
        (
            f"{indent}processed_score[batch_group_indices] = next_token_scores_processed",
            f"{indent}processed_score[batch_group_indices] = "
            "next_token_scores_processed.to(processed_score.dtype)"
            "  # provision: group-beam-search-dtype",
        )
    ]
    record = tool_table(read_lock(lock_copy))["fixes"]["files"]
    assert record == [
        {
            "fix": FIX,
            "package": "transformers",
            "version": "4.51.3",
            "file": "transformers/generation/utils.py",
            "form": applied[0]["form"],
            "original_sha256": _sha(pristine),
            "patched_sha256": _sha(patched),
        }
    ]

    after = _repro(tf451)
    assert "error" not in after, after
    assert after["bf16"] == after["float32"]
    assert after["bf16_scores"] == ["torch.bfloat16"] * 5

    lock_bytes = lock_copy.read_bytes()
    rc, again = run_json("patch", "apply", FIX, "--env", env, "--lock", str(lock_copy))
    assert rc == 0 and again[0]["action"] == "already-patched"
    assert path.read_bytes() == patched, "apply twice = apply once"
    assert lock_copy.read_bytes() == lock_bytes
    assert backup.read_bytes() == pristine

    rc, checked = run_json("patch", "status", "--env", env, "--lock", str(lock_copy), "--verify")
    assert rc == 0, checked
    assert checked[0]["state"] == "patched" and checked[0]["recorded"] is True
    assert checked[0]["check"]["ok"] is True, checked[0]["check"]

    rc, reverted = run_json("patch", "revert", FIX, "--env", env, "--lock", str(lock_copy))
    assert rc == 0 and reverted[0]["action"] == "reverted"
    assert _sha(path.read_bytes()) == _sha(pristine)
    assert path.read_bytes() == pristine
    assert not backup.exists()
    assert "files" not in tool_table(read_lock(lock_copy)).get("fixes", {})

    rc, again = run_json("patch", "revert", FIX, "--env", env)
    assert rc == 0 and again[0]["action"] == "already-original"
    assert path.read_bytes() == pristine


def test_verify_fails_on_the_unpatched_file(tf451: TfEnv, pristine: bytes) -> None:
    proc = run_cli("patch", "status", FIX, "--env", str(tf451.env), "--verify")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stdout and "Index put requires" in proc.stdout.replace("\n", " ")


def test_a_file_changed_after_the_fix_is_told_apart_and_left_alone(
    tf451: TfEnv, lock_copy: Path, pristine: bytes
) -> None:
    path = tf451.generation_utils
    apply_fixes(tf451.python, [FIX], lock_copy)
    path.write_bytes(path.read_bytes() + b"# a local tweak\n")
    tweaked = path.read_bytes()

    for lock in (lock_copy, None):  # told apart by the lockfile's hash, or by the backup
        (result,) = fix_status(tf451.python, [FIX], lock)
        assert result.state == CHANGED
        assert "changed after" in result.reason

    with pytest.raises(ProvisionError) as err:
        apply_fixes(tf451.python, [FIX], lock_copy)
    assert str(path) in err.value.message and "transformers 4.51.3" in err.value.message
    with pytest.raises(ProvisionError):
        revert_fixes(tf451.python, [FIX], lock_copy)
    # The commands: a refusal is exit 2, the input-error convention (issue 11, item 10).
    for action in ("apply", "revert"):
        proc = run_cli(
            "patch", action, FIX, "--python", str(tf451.python), "--lock", str(lock_copy)
        )
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert f"Refusing to {action}" in proc.stderr and "Traceback" not in proc.stderr
    assert path.read_bytes() == tweaked, "nothing was written"


def _fake_install(tf451: TfEnv, where: Path, edit) -> tuple[Path, Path]:  # noqa: ANN001
    """A venv holding a copy of the installed 4.51.3 metadata and generation/utils.py, edited."""
    subprocess.run(
        [uv_bin(), "venv", "--quiet", "--no-project", "--python", str(tf451.python), str(where)],
        check=True,
    )
    site = next(where.glob("lib/python3*/site-packages"))
    source_site = tf451.generation_utils.parents[2]
    dist = next(source_site.glob("transformers-4.51.3.dist-info"))
    shutil.copytree(dist, site / dist.name)
    target = site / "transformers" / "generation" / "utils.py"
    target.parent.mkdir(parents=True)
    (site / "transformers" / "__init__.py").write_text("")
    text = tf451.generation_utils.read_text(encoding="utf-8")
    edited = edit(text)
    assert edited != text
    target.write_text(edited, encoding="utf-8")
    return where / "bin" / "python", target


@pytest.mark.parametrize(
    ("name", "edit", "expected"),
    [
        (
            "statement changed",
            lambda t: t.replace(
                "processed_score[batch_group_indices] = next_token_scores_processed\n",
                "processed_score[batch_group_indices] = next_token_scores_processed.clone()\n",
            ),
            "found 0",
        ),
        (
            "fixed by hand",
            lambda t: t.replace(
                "processed_score[batch_group_indices] = next_token_scores_processed\n",
                "processed_score[batch_group_indices] = "
                "next_token_scores_processed.to(processed_score.dtype)\n",
            ),
            "without provision's marker",
        ),
        (
            "upcast removed",
            lambda t: t.replace(
                "next_token_logits = outputs.logits[batch_group_indices, -1, :].to(\n"
                "                    dtype=torch.float32, device=input_ids.device\n"
                "                )",
                "next_token_logits = outputs.logits[batch_group_indices, -1, :]",
            ),
            "missing `next_token_logits",
        ),
    ],
)
def test_code_matching_no_known_form_is_refused(
    tf451: TfEnv, tmp_path: Path, name: str, edit, expected: str
) -> None:
    python, target = _fake_install(tf451, tmp_path / "venv", edit)
    before = target.read_bytes()
    rc, status = run_json("patch", "status", FIX, "--python", str(python))
    assert rc == 0 and status[0]["state"] == "changed", status
    assert expected in status[0]["reason"]

    proc = run_cli("patch", "apply", FIX, "--python", str(python))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    message = " ".join(proc.stderr.split())
    assert str(target) in message
    assert "transformers 4.51.3" in message
    assert "Expected one statement `processed_score[batch_group_indices] = " in message
    assert "4.51-4.56" in message and expected in message
    assert "Traceback" not in proc.stderr
    assert target.read_bytes() == before
    assert not target.with_name("utils.py.provision-orig").exists()


def test_before_4_45_not_applicable_and_group_beam_search_works_in_bf16(tf444: TfEnv) -> None:
    path = tf444.generation_utils
    before = path.read_bytes()
    rc, status = run_json("patch", "status", FIX, "--env", str(tf444.env))
    assert rc == 0
    assert status[0]["version"] == "4.44.2" and status[0]["state"] == "not-applicable"
    assert "before 4.45" in status[0]["reason"]
    rc, applied = run_json("patch", "apply", FIX, "--env", str(tf444.env))
    assert rc == 0 and applied[0]["action"] == "skipped"
    assert path.read_bytes() == before
    # the reason holds: 4.44.2 keeps scores in bf16, so the unpatched code runs
    result = _repro(tf444)
    assert "error" not in result, result
    assert result["bf16"] == result["float32"]


def test_from_4_57_not_applicable_because_it_left_the_library(tf457: TfEnv) -> None:
    path = tf457.generation_utils
    before = path.read_bytes()
    assert b"def _group_beam_search(" not in before
    rc, applied = run_json("patch", "apply", FIX, "--env", str(tf457.env))
    assert rc == 0
    assert applied[0]["version"] == "4.57.6" and applied[0]["state"] == "not-applicable"
    assert applied[0]["action"] == "skipped"
    assert "left the core library in transformers 4.57" in applied[0]["reason"]
    assert path.read_bytes() == before


def test_without_fix_the_lock_list_is_used_and_unknown_ids_are_refused(
    tf457: TfEnv, tmp_path: Path
) -> None:
    lock = tmp_path / "pylock.toml"
    shutil.copy(tf457.lock, lock)
    set_tool_section(lock, "fixes", {"apply": [FIX]})
    rc, status = run_json("patch", "status", "--env", str(tf457.env), "--lock", str(lock))
    assert rc == 0 and [r["fix"] for r in status] == [FIX]
    set_tool_section(lock, "fixes", {"apply": []})
    rc, status = run_json("patch", "status", "--env", str(tf457.env), "--lock", str(lock))
    assert rc == 0 and status == []

    proc = run_cli("patch", "apply", "no-such-fix", "--env", str(tf457.env))
    assert proc.returncode == 2 and "Unknown fix 'no-such-fix'" in proc.stderr
    assert FIX in proc.stderr
    proc = run_cli("patch", "status", "--env", str(tmp_path))
    assert proc.returncode == 2 and "not a virtual environment" in proc.stderr


def test_engine_runs_in_the_target_python_from_its_own_source_alone(
    tf457: TfEnv, tmp_path: Path
) -> None:
    """Image builds run the engine with the env's Python and only provision's own files on
    PYTHONPATH (provision/docker/image_fixes.py): it must need nothing beyond the standard library,
    packaging and filelock (both come with transformers)."""
    package = Path(__import__("provision").__file__).parent
    staged = tmp_path / "src" / "provision"
    (staged / "patches").mkdir(parents=True)
    for name in ("__init__.py", "errors.py", "atomic.py"):
        shutil.copy(package / name, staged / name)
    for module in (package / "patches").glob("*.py"):
        shutil.copy(module, staged / "patches" / module.name)
    code = (
        "import json\nfrom pathlib import Path\nimport sys\n"
        "from provision.patches import apply_fixes\n"
        "print(json.dumps([r.to_json() for r in apply_fixes(Path(sys.executable), None)]))\n"
    )
    proc = subprocess.run(
        [str(tf457.python), "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path / "src"), "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    (result,) = json.loads(proc.stdout)
    assert result["state"] == "not-applicable" and result["version"] == "4.57.6"


def test_bytecode_under_pythonpycacheprefix_is_dropped_too(
    tf451: TfEnv, pristine: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tf451.generation_utils
    prefix = tmp_path / "pycache"
    compile_it = f"import py_compile; print(py_compile.compile({str(path)!r}))"
    proc = run_in(tf451.python, compile_it, env={"PYTHONPYCACHEPREFIX": str(prefix)})
    cached = Path(proc.stdout.strip())
    assert proc.returncode == 0 and cached.is_file() and prefix in cached.parents, proc.stderr
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(prefix))
    (applied,) = apply_fixes(tf451.python, [FIX], None)
    assert str(cached) in applied.bytecode_removed and not cached.exists()
    proc = run_in(tf451.python, compile_it, env={"PYTHONPYCACHEPREFIX": str(prefix)})
    (reverted,) = revert_fixes(tf451.python, [FIX], None)
    assert str(cached) in reverted.bytecode_removed and not cached.exists()
    assert path.read_bytes() == pristine
