"""Model profiles: one TOML file per model: what it is, what it needs, how to prove it runs.

Built-in profiles live in `profiles/` (package data); users add their own with `--profiles-dir` or
`PROVISION_PROFILES_DIR` (a user profile with a built-in's name takes its place). Loading
validates every key: an unknown key, a wrong type or a missing field is one message naming the
file, the key and the reason.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from provision.choices import DTYPE_BYTES, TASKS, stacks
from provision.errors import ProvisionError
from provision.resources import builtin_dir
from provision.schema import BOOL, INT, STR, STRLIST, FileError, validate

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


class ProfileError(FileError):
    """A profile file that cannot be used: names the file, the key and the reason."""

    kind = "profile"
    example = "provision profiles show qwen2-vl-2b"


# --- the schema, as data (checked by provision.schema.validate) ---------------------------------
# Each entry: key -> (python type(s), required?, help). Nested tables are dicts of the same.
SOURCE_SCHEMA = {
    "huggingface": (STR, True, "Hugging Face repo id, e.g. Qwen/Qwen2.5-VL-7B-Instruct"),
    "modelscope": (STR, False, "ModelScope repo id"),
    "revision": (STR, False, "a pinned revision (branch, tag or 40-hex commit)"),
    "gated": (BOOL, True, "the hub asks for an accepted license and a token"),
    "license": (STR, False, "license name"),
    "trust_remote_code": (BOOL, False, "the model's code lives in its repository"),
    "note": (STR, False, "free text"),
}
PARAMS_SCHEMA = {
    "total": (INT, True, "all parameters"),
    "vision": (INT, True, "vision encoder + projector parameters"),
    "language": (INT, True, "language model parameters incl. embeddings and lm_head"),
    "active": (INT, False, "parameters one token passes through (mixture-of-experts models)"),
    "source": (STR, True, "where the numbers come from"),
}
WEIGHTS_SCHEMA = {
    "dtype": (STR, True, "stored dtype: bfloat16, float16 or float32"),
    "bytes": (INT, True, "bytes of the stored weights (sum of the checkpoint's tensors)"),
    "format": (STR, False, "safetensors or pytorch"),
    "download_bytes": (INT, False, "bytes a full download takes, if not `bytes`"),
    "source": (STR, True, "where the numbers come from"),
}
TEXT_SCHEMA = {
    "layers": (INT, True, "decoder layers"),
    "hidden": (INT, True, "hidden size"),
    "intermediate": (INT, True, "MLP intermediate size"),
    "heads": (INT, True, "attention heads"),
    "kv_heads": (INT, True, "key/value heads"),
    "head_dim": (INT, True, "head dimension"),
    "vocab": (INT, True, "vocabulary size"),
    "max_context": (INT, True, "longest context the model is meant to use"),
    "config_max_len": (
        INT,
        False,
        "the text config's max_position_embeddings, where above max_context: what a serving "
        "engine reads when given no length",
    ),
    "rope_type": (STR, False, "the text config's rope_scaling type, where it has a factor"),
    "rope_factor": ((int, float), False, "the text config's rope_scaling factor (with rope_type)"),
    "tie_word_embeddings": (BOOL, True, "lm_head shares the embedding matrix"),
    "sliding_window": (INT, False, "tokens a sliding-window layer keeps"),
    "global_layers": (INT, False, "layers with full attention when others slide"),
    "cross_attention_layers": (INT, False, "layers that attend to image states (no text KV)"),
    "prefill_logits_all": (
        BOOL,
        False,
        "generate computes logits for every prompt token (no logits_to_keep in forward)",
    ),
    "source": (STR, True, "where the numbers come from"),
}
IMAGE_SCHEMA = {
    "tokens": (INT, True, "tokens one image costs at the default resolution"),
    "max_tokens": (INT, False, "tokens one image can cost at the processor's maximum"),
    "in_text_sequence": (BOOL, False, "image tokens sit in the text sequence (false: cross-attn)"),
    "encoder_tokens_per_image_token": (INT, False, "vision-encoder patches per LLM image token"),
    "encoder_hidden": (INT, False, "vision encoder hidden size"),
    "encoder_layers": (INT, False, "vision encoder layers"),
    "encoder_heads": (INT, False, "vision encoder attention heads"),
    "encoder_dense_mask": (
        BOOL,
        False,
        "the encoder attends over all patches of a batch with one S x S mask (Qwen2-VL family)",
    ),
    "rule": (STR, False, "how the count follows from the resolution"),
    "tokens_setting": (
        STR,
        False,
        "how to ask the processor for {tokens} tokens per image, e.g. max_pixels={tokens}*28*28",
    ),
    "source": (STR, True, "where the numbers come from"),
}
TASK_SCHEMA = {
    "stack": (STR, True, "a stack from provision/data/stacks.toml, e.g. vllm or ms-swift"),
    "packages": (STRLIST, True, "requirements, exact pins for torch, transformers and the stack"),
    "zero": (INT, False, "DeepSpeed ZeRO stage the stack uses by default for multi-GPU tuning"),
    "python": (STR, False, "Python version this task's environment needs, e.g. 3.10"),
}
# Written by provision/derive for a profile derived from a repository's metadata.
DERIVED_SCHEMA = {
    "repo": (STR, True, "the repository (or folder) the profile was derived from"),
    "revision": (STR, False, "the revision asked for"),
    "commit": (STR, True, "the commit the metadata was read at"),
    "source": (STR, False, "where it was read (hf, hf-mirror, modelscope, a URL or a folder)"),
    "family_rule": (STR, False, "the families.toml entry used"),
    "requests": (INT, False, "requests the derivation made"),
    "approximate": (STRLIST, False, "what the metadata could not give"),
    "notes": (STRLIST, False, "what to know before using it"),
}
SMOKE_SCHEMA = {
    "prompt": (STR, True, "the question asked about the bundled image"),
    "max_new_tokens": (INT, False, "answer length"),
    "model_class": (STR, False, "transformers Auto class to load with"),
}
PROFILE_SCHEMA: dict[str, Any] = {
    "name": (STR, True, "profile name: lowercase letters, digits, '.', '-', '_'"),
    "title": (STR, True, "display name"),
    "family": (STR, True, "model family, for suggesting siblings"),
    "architecture": (STR, True, "the checkpoint's architecture class"),
    "python": (STR, False, "Python version for the environment (default 3.11)"),
    "siblings": (STRLIST, False, "smaller profiles of the same family"),
    "fixes": (STRLIST, False, "library fixes this profile needs (see `provision patch status`)"),
    "source": SOURCE_SCHEMA,
    "params": PARAMS_SCHEMA,
    "weights": WEIGHTS_SCHEMA,
    "text": TEXT_SCHEMA,
    "image": IMAGE_SCHEMA,
    "tasks": {task: TASK_SCHEMA for task in TASKS},
    "smoke": SMOKE_SCHEMA,
    "derived": DERIVED_SCHEMA,
}
_OPTIONAL_TABLES = {"tasks.qlora", "tasks.full", "tasks.lora", "derived"}


# --- the loaded form ------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    stack: str
    packages: tuple[str, ...]
    zero: int = 0
    python: str | None = None


@dataclass(frozen=True)
class Profile:
    name: str
    title: str
    family: str
    architecture: str
    path: Path
    builtin: bool
    data: dict[str, Any] = field(repr=False, compare=False)

    # Convenience views over `data`, which stays the single source of truth.
    @property
    def hf_repo(self) -> str:
        return self.data["source"]["huggingface"]

    @property
    def modelscope_repo(self) -> str | None:
        return self.data["source"].get("modelscope")

    @property
    def revision(self) -> str | None:
        return self.data["source"].get("revision") or None

    @property
    def gated(self) -> bool:
        return self.data["source"]["gated"]

    @property
    def trust_remote_code(self) -> bool:
        return self.data["source"].get("trust_remote_code", False)

    @property
    def python(self) -> str:
        return self.data.get("python", "3.11")

    @property
    def params(self) -> dict[str, Any]:
        return self.data["params"]

    @property
    def weights(self) -> dict[str, Any]:
        return self.data["weights"]

    @property
    def text(self) -> dict[str, Any]:
        return self.data["text"]

    @property
    def image(self) -> dict[str, Any]:
        return self.data["image"]

    @property
    def smoke(self) -> dict[str, Any]:
        return self.data["smoke"]

    @property
    def fixes(self) -> tuple[str, ...]:
        return tuple(self.data.get("fixes", ()))

    @property
    def siblings(self) -> tuple[str, ...]:
        return tuple(self.data.get("siblings", ()))

    @property
    def download_bytes(self) -> int:
        return self.weights.get("download_bytes", self.weights["bytes"])

    def task(self, task: str) -> TaskSpec:
        """The packages and stack for `task`; qlora falls back to lora plus bitsandbytes."""
        tasks = self.data["tasks"]
        if task in tasks:
            spec = tasks[task]
            return TaskSpec(
                stack=spec["stack"],
                packages=tuple(spec["packages"]),
                zero=spec.get("zero", 0),
                python=spec.get("python"),
            )
        if task == "qlora" and "lora" in tasks:
            lora = self.task("lora")
            extra = (
                ()
                if any(_req_name(p) == "bitsandbytes" for p in lora.packages)
                else ("bitsandbytes",)
            )
            return TaskSpec(lora.stack, lora.packages + extra, lora.zero, lora.python)
        raise ProvisionError(
            f"Profile {self.name} has no packages for the task '{task}'.",
            f"Tasks it has: {', '.join(self.tasks)}. Add a [tasks.{task}] table to {self.path}.",
        )

    @property
    def tasks(self) -> tuple[str, ...]:
        names = [t for t in TASKS if t in self.data["tasks"]]
        if "qlora" not in names and "lora" in names:
            names.insert(names.index("lora") + 1, "qlora")
        return tuple(names)

    @property
    def derived(self) -> dict[str, Any] | None:
        """The [derived] table of a profile derived from a repository's metadata, else None."""
        return self.data.get("derived")

    @property
    def local_folder(self) -> Path | None:
        """The model folder a profile derived from a folder (`provision check ./my-model`) was
        read from: its weights are there, not on a hub. None for any other profile."""
        d = self.derived
        if d is None or not self.hf_repo.startswith("local/"):
            return None
        folder = Path(d["repo"])
        return folder if folder.is_absolute() else None

    @property
    def origin(self) -> str:
        """'curated' (written by hand) or 'derived from REPO at COMMIT'."""
        d = self.derived
        return "curated" if d is None else f"derived from {d['repo']} at {d['commit']}"

    def content_hash(self) -> str:
        """sha256 of the profile file's bytes: what a lock was made from."""
        import hashlib

        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def _req_name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;@ ]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _check_semantics(data: dict[str, Any], path: Path) -> None:
    """What the type check cannot see: names, known dtypes and stacks, consistent numbers."""
    name = data["name"]
    if not NAME_RE.match(name):
        raise ProfileError(
            path, "name", f"{name!r} must be lowercase letters, digits, '.', '-', '_'"
        )
    if path.stem != name:
        raise ProfileError(path, "name", f"{name!r} must match the file name ({path.stem}.toml)")
    dtype = data["weights"]["dtype"]
    if dtype not in DTYPE_BYTES:
        raise ProfileError(path, "weights.dtype", f"{dtype!r} is not one of {sorted(DTYPE_BYTES)}")
    for key in ("bytes", "download_bytes"):  # 0 bytes of weights "fits" anything
        if key in data["weights"] and data["weights"][key] <= 0:
            raise ProfileError(path, f"weights.{key}", "must be positive")
    params = data["params"]
    for key in ("total", "language"):
        if params[key] <= 0:
            raise ProfileError(path, f"params.{key}", "must be positive")
    if params["vision"] < 0:
        raise ProfileError(path, "params.vision", "must not be negative")
    if params["vision"] + params["language"] > params["total"] * 1.01:
        raise ProfileError(path, "params", "vision + language exceed total by more than 1%")
    text = data["text"]
    for key in ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab", "max_context"):
        if text[key] <= 0:
            raise ProfileError(path, f"text.{key}", "must be positive")
    if text["heads"] % text["kv_heads"]:
        raise ProfileError(path, "text.kv_heads", "must divide text.heads")
    if text.get("config_max_len", text["max_context"]) < text["max_context"]:
        raise ProfileError(path, "text.config_max_len", "must not be below text.max_context")
    if ("rope_type" in text) != ("rope_factor" in text):
        raise ProfileError(path, "text.rope_factor", "rope_type and rope_factor go together")
    if text.get("rope_factor", 1) <= 0:
        raise ProfileError(path, "text.rope_factor", "must be positive")
    if "infer" not in data["tasks"]:
        raise ProfileError(path, "tasks.infer", "missing table (every profile can at least infer)")
    for task, spec in data["tasks"].items():
        if spec["stack"] not in stacks():
            known = ", ".join(sorted(stacks()))
            raise ProfileError(
                path, f"tasks.{task}.stack", f"{spec['stack']!r} is not one of {known}"
            )
        names = {_req_name(p) for p in spec["packages"]}
        for needed in ("torch", "transformers"):
            pins = [p for p in spec["packages"] if _req_name(p) == needed]
            if needed not in names or not any("==" in p for p in pins):
                raise ProfileError(
                    path,
                    f"tasks.{task}.packages",
                    f"needs an exact pin for {needed} (e.g. {needed}==X.Y.Z)",
                )
    source = data["source"]
    if "/" not in source["huggingface"]:
        raise ProfileError(path, "source.huggingface", "must look like org/name")


def load_profile_file(path: Path, builtin: bool = False) -> Profile:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProfileError(path, None, f"cannot be read ({exc.strerror})") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(path, None, f"is not valid TOML ({exc})") from exc
    validate(data, PROFILE_SCHEMA, path, ProfileError, optional_tables=_OPTIONAL_TABLES)
    _check_semantics(data, path)
    return Profile(
        name=data["name"],
        title=data["title"],
        family=data["family"],
        architecture=data["architecture"],
        path=path,
        builtin=builtin,
        data=data,
    )


def user_profiles_dir(profiles_dir: str | os.PathLike[str] | None = None) -> Path:
    """--profiles-dir, PROVISION_PROFILES_DIR, else $XDG_CONFIG_HOME/provision/profiles (where
    `provision profiles add` writes when no folder is named)."""
    chosen = profiles_dir or os.environ.get("PROVISION_PROFILES_DIR")
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "provision" / "profiles"


def profile_dirs(profiles_dir: str | os.PathLike[str] | None = None) -> list[tuple[Path, bool]]:
    """Search order: the user's folder (flag, then PROVISION_PROFILES_DIR, then
    $XDG_CONFIG_HOME/provision/profiles if it exists), then the built-ins."""
    dirs: list[tuple[Path, bool]] = []
    named = bool(profiles_dir or os.environ.get("PROVISION_PROFILES_DIR"))
    user_path = user_profiles_dir(profiles_dir)
    if named or user_path.is_dir():
        if not user_path.is_dir():
            raise ProvisionError(
                f"Profiles folder {user_path} does not exist.",
                "Pass an existing folder with --profiles-dir or PROVISION_PROFILES_DIR.",
            )
        dirs.append((user_path, False))
    dirs.append((builtin_dir("profiles"), True))
    return dirs


def _profile_files(profiles_dir: str | os.PathLike[str] | None) -> dict[str, tuple[Path, bool]]:
    found: dict[str, tuple[Path, bool]] = {}
    for directory, builtin in reversed(profile_dirs(profiles_dir)):  # user entries win
        for path in sorted(directory.glob("*.toml")):
            found[path.stem] = (path, builtin)
    return found


def list_profiles(profiles_dir: str | os.PathLike[str] | None = None) -> list[Profile]:
    return [load_profile_file(p, b) for p, b in _profile_files(profiles_dir).values()]


def _builtin_for_repo(repo_id: str, files: dict[str, tuple[Path, bool]]) -> Profile | None:
    """The profile whose source is `repo_id` (Hugging Face or ModelScope id, any case)."""
    wanted = repo_id.lower()
    for path, builtin in files.values():
        try:
            text = path.read_text(encoding="utf-8")
            if wanted not in text.lower():
                continue  # cheap: only a file that names the repo is parsed
            source = tomllib.loads(text).get("source", {})
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError):
            continue
        ids = {
            str(source.get("huggingface", "")).lower(),
            str(source.get("modelscope", "")).lower(),
        }
        if wanted in ids:
            return load_profile_file(path, builtin)
    return None


def profile_name(text: str, profiles_dir: str | os.PathLike[str] | None = None) -> str:
    """The profile name `text` stands for, as locks and Dockerfiles record it: `text` itself
    when it is a name (known here or not), else the name of the profile that a hub repo id, a
    model folder or a .toml path loads (a derived profile's name is its repository's)."""
    if NAME_RE.match(text) and not text.endswith(".toml"):
        return text
    return load_profile(text, profiles_dir).name


def load_profile(
    name: str,
    profiles_dir: str | os.PathLike[str] | None = None,
    offline: bool | None = None,
) -> Profile:
    """A profile by name, by path to a .toml file, by hub repo id (`[source:]org/name[@rev]`) or
    by model folder. A repo id that is a profile's source is that profile; any other is derived
    from the repository's metadata (provision.derive) and cached on the data disk."""
    if name.endswith(".toml") and Path(name).is_file():
        return load_profile_file(Path(name))
    files = _profile_files(profiles_dir)
    if name in files:
        path, builtin = files[name]
        return load_profile_file(path, builtin)
    from provision.derive import find_cached_by_name, load_derived, parse_ref

    ref = parse_ref(name)
    if ref is not None:
        if ref.folder is None and ref.revision is None and ref.source is None:
            known = _builtin_for_repo(ref.repo_id, files)
            if known is not None:
                return known
        return load_profile_file(load_derived(ref, offline))
    cached = find_cached_by_name(name) if NAME_RE.match(name) else None
    if cached is not None:
        return load_profile_file(cached)
    import difflib

    close = difflib.get_close_matches(name, list(files), n=3, cutoff=0.5)
    hint = f"Did you mean: {', '.join(close)}? " if close else ""
    raise ProvisionError(
        f"Unknown profile '{name}'.",
        f"{hint}`provision profiles` lists the {len(files)} profiles it knows; a hub repo id "
        "(org/name) or a model folder works too.",
    )
