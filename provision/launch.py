"""The stack's own launch command with the numbers the check chose (`provision check --emit`).

Flag names are data: provision/data/stacks.toml [stack.*.launch], each table with the version and
the source file its names were read from. Training stacks get their own argument names.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from provision.errors import ProvisionError
from provision.memory import FitRequest, engine_of, stacks, vision_family
from provision.profiles import Profile


@dataclass
class Launch:
    stack: str
    argv: list[str]  # the command as argv; `line` joins it for a shell
    version: str
    source: str
    notes: list[str] = field(default_factory=list)  # what the line cannot say
    # Training lines: what the run reads and writes, and what the user must still put in.
    template: str | None = None
    dataset: str | None = None
    dataset_note: str = ""  # whose dataset it is and how to pass one's own
    output_dir: str | None = None
    placeholders: list[str] = field(default_factory=list)  # words to replace before it runs

    @property
    def line(self) -> str:
        return shlex.join(self.argv)

    def to_json(self) -> dict[str, Any]:
        return {
            "stack": self.stack,
            "argv": self.argv,
            "line": self.line,
            "version": self.version,
            "source": self.source,
            "notes": self.notes,
            "template": self.template,
            "dataset": self.dataset,
            "dataset_note": self.dataset_note or None,
            "output_dir": self.output_dir,
            "placeholders": self.placeholders,
            "runs_as_printed": not self.placeholders,
        }


def launch_for(
    profile: Profile, req: FitRequest, gpus: int, dataset: str | None = None
) -> Launch | None:
    """The launch command for the resolved request on `gpus` GPUs; None for a stack without a
    launch table (transformers scripts are the user's own). `dataset` goes into a training
    line in place of the stack's own demo dataset."""
    stack = req.stack or ""
    table = stacks().get(stack, {}).get("launch")
    if dataset is not None and (table is None or req.task == "infer"):
        why = (
            "--task infer has none" if req.task == "infer" else f"stack {stack} has no launch line"
        )
        raise ProvisionError(
            f"--dataset goes into a training stack's launch line; {why}.",
            "Use it with --task lora/qlora/full and --stack ms-swift, llama-factory or xtuner.",
        )
    if table is None:
        return None
    notes: list[str] = []
    out = Launch(stack, [], table["version"], table["source"], notes)
    config = _config(profile, req, table, notes)
    if config == table.get("config_missing"):
        out.placeholders.append(config)
    repo = profile.hf_repo
    if req.task == "infer" and req.quant in ("int8", "int4"):
        # The engines read a checkpoint's quantisation from its config.json: the 16-bit repo
        # would load 16-bit weights, not the ones the check sized.
        repo = f"YOUR_{req.quant.upper()}_BUILD_OF_{repo.split('/')[-1]}"
        out.placeholders.append(repo)
        notes.append(
            f"--quant {req.quant} sizes a {req.quant[3:]}-bit checkpoint: put an AWQ or GPTQ "
            f"build of {profile.hf_repo} in place of {repo} (the engine reads its quantisation "
            "from its config.json)"
        )
    argv = shlex.split(table["command"].format(repo=repo, config=config))
    values: dict[str, Any] = {}
    if req.task != "infer":
        values = _run_values(profile, req, table, dataset, out)
    values.update(_values(profile, req, gpus, stack))
    if profile.data.get("family") not in table.get("max_tiles_families", ()):
        values.pop("max_tiles", None)  # the tile cap is a setting of these families' templates

    env: list[str] = []
    cfg: list[str] = []  # key=value overrides of a config file (XTuner --cfg-options)

    def add(key: str, value: Any) -> None:
        flag = table.get(key)
        if flag is None or value is None or value is False:
            return
        if key == "train_type" and value == "qlora" and "qlora" in table:
            argv.extend(table["qlora"])
        elif key == "zero":
            deepspeed = _zero(table, value, req.cpu_offload, notes)
            argv.extend(deepspeed)
            if deepspeed and "zero_env" in table:  # what the stack needs to start DeepSpeed
                env.append(table["zero_env"])
        elif flag.startswith("env:"):  # a setting the stack reads from the environment
            env.append(f"{flag[4:]}={value}")
        elif flag.startswith("cfg:"):
            if table.get("bool_style") == "python" and value in ("true", "false"):
                value = value.capitalize()
            cfg.append(f"{flag[4:]}={value}")
        elif value is True:
            argv.append(flag)
        elif isinstance(value, dict):  # key=value pairs in one flag (vLLM's JSON form)
            argv.extend([flag, _kv(value, table.get("pairs", "json"))])
        else:
            argv.extend([flag, str(value)])

    if req.task != "infer":
        values.update(_vision_values(req, table, notes))
    for key, value in values.items():
        add(key, value)
    if cfg:
        argv.extend([table["cfg_flag"], *cfg])
    out.argv = env + argv
    return out


def _run_values(
    profile: Profile, req: FitRequest, table: dict[str, Any], dataset: str | None, out: Launch
) -> dict[str, Any]:
    """What a training run needs to start besides the numbers: the template (where the stack
    does not infer it), the dataset (the stack's own demo one unless `dataset` is given) and
    the output folder (where the stack requires one)."""
    values: dict[str, Any] = {}
    if "templates" in table:
        template = table["templates"].get(profile.architecture)
        if template is None:
            template = table["template_missing"]
            out.placeholders.append(template)
            out.notes.append(_unsupported(profile, req, table))
        out.template = values["template"] = template
    elif "configs" not in table and not _trains(profile, req.stack or "", table):
        out.notes.append(_unsupported(profile, req, table))
    if dataset is not None:
        if not dataset.strip() or any(not c.isprintable() for c in dataset):
            raise ProvisionError(
                f"--dataset {dataset!r} is not a dataset name or path.",
                "Example: --dataset mllm_demo (LLaMA-Factory), --dataset my_data.jsonl (ms-swift).",
            )
        out.dataset = dataset
        out.dataset_note = table.get("dataset_note", "")
    else:
        out.dataset = table.get("demo_dataset")
        out.dataset_note = table.get("demo_note", "")
    values["dataset"] = out.dataset
    if "output_dir_format" in table:
        out.output_dir = values["output_dir"] = table["output_dir_format"].format(
            profile=profile.name, task=req.task
        )
    fixed = table.get("fixed_tiles_note")
    tiles = stacks()[req.stack or ""].get("default_max_tiles")
    if fixed and req.max_tiles is not None and tiles is not None and req.max_tiles != tiles:
        out.notes.append(
            fixed.format(
                version=table["version"], tiles=tiles, model=profile.name, asked=req.max_tiles
            )
        )
    return values


def _unsupported(profile: Profile, req: FitRequest, table: dict[str, Any]) -> str:
    """The note for a model the stack's pinned version cannot train, naming the stacks that can."""
    others = [
        name
        for name, entry in stacks().items()
        if name != req.stack and _trains(profile, name, entry.get("launch"))
    ]
    where = f": use --stack {' or '.join(others)}" if others else ""
    return (
        f"{req.stack} {table['version']} cannot train {profile.architecture} ({profile.name}): "
        f"it has no template or model entry for it{where}"
    )


def _trains(profile: Profile, stack: str, table: dict[str, Any] | None) -> bool:
    """Whether `stack`'s pinned version can train the profile's model: a template for its
    architecture (LLaMA-Factory), a shipped config (XTuner; a missing one has its own note),
    or an architecture it registers (ms-swift, read from its wheel into train_flags.toml)."""
    if table is None or "train_type" not in table and "configs" not in table:
        return False
    if "templates" in table:
        return profile.architecture in table["templates"]
    if "configs" in table:
        return profile.name in table["configs"]
    if table.get("architectures_from"):
        return profile.architecture in _architectures(table["architectures_from"], stack)
    return False


@cache
def _architectures(source: str, stack: str) -> frozenset[str]:
    """The architectures `stack` registers, from its table (train_flags.toml: 54 KB, read once)."""
    from provision.resources import load_table

    return frozenset(load_table(source)["stack"][stack]["architectures"])


def _config(profile: Profile, req: FitRequest, table: dict[str, Any], notes: list[str]) -> str:
    """The stack's config file for this model and task, for stacks that start from one (XTuner);
    a placeholder, said in a note, when the stack ships none for the model."""
    if "configs" not in table:
        return ""
    base = table["configs"].get(profile.name)
    if base is None:
        notes.append(
            f"{req.stack} ships no config for {profile.name}: copy the nearest one and put its "
            f"name in place of {table['config_missing']}"
        )
        return str(table["config_missing"])
    return str(base + table["config_suffix"][req.task])


def _zero(table: dict[str, Any], stage: int, offload: bool, notes: list[str]) -> list[str]:
    """The stack's DeepSpeed config for ZeRO `stage` (with CPU offload if asked), or nothing
    and a note when the stack ships no such config."""
    if offload and stage in table.get("zero_offload_stages", ()):
        return [table["zero"], table["zero_offload_format"].format(n=stage)]
    if offload:
        notes.append(f"no ZeRO-{stage} offload config ships with this stack: add offload_optimizer")
    if stage not in table.get("zero_stages", (1, 2, 3)):
        notes.append(f"no ZeRO-{stage} config ships with this stack: write one, or use ZeRO-2/3")
        return []
    return [table["zero"], table.get("zero_format", "{n}").format(n=stage)]


def _vision_values(req: FitRequest, table: dict[str, Any], notes: list[str]) -> dict[str, Any]:
    """--train-vision as the stack's freeze flag: stacks whose unfrozen tower is trained the
    task's way (ms-swift, LLaMA-Factory: LoRA under LoRA) or fully (XTuner)."""
    if req.train_vision == "frozen":
        return {}
    way = "full" if req.task == "full" else "lora"
    if table.get("unfreeze_trains") == "full":
        way = "full"
    if "freeze_vision" not in table or req.train_vision != way:
        notes.append(f"--train-vision {req.train_vision} has no flag in {req.stack}'s command")
        return {}
    return {"freeze_vision": "false"}


def _tiles_of(tokens: int | None, fam: dict[str, Any]) -> int | None:
    """The tile count a tiled family's image of `tokens` tokens has (its thumbnail not counted),
    so a stack that takes a tile cap is told the one the check sized; None if not tiled."""
    per = fam.get("tokens_per_tile")
    if not per or not tokens or tokens % per:
        return None
    tiles = tokens // per
    return tiles - 1 if fam.get("thumbnail") and tiles > 1 else tiles


def _kv(pairs: dict[str, Any], style: str) -> str:
    if style == "json":
        return "{" + ", ".join(f'"{k}": {v}' for k, v in pairs.items()) + "}"
    return ",".join(f"{k}={v}" for k, v in pairs.items())


def _values(profile: Profile, req: FitRequest, gpus: int, stack: str) -> dict[str, Any]:
    """What each launch key is set to for this request."""
    from provision.fit import valid_tp

    eng = engine_of(stack) or {}
    tp_ok = valid_tp(profile, stack, gpus)
    out: dict[str, Any] = {}
    if req.task == "infer":
        out["max_model_len"] = req.context
        out["max_num_seqs"] = req.max_num_seqs
        out["max_batched_tokens"] = req.max_batched_tokens
        limits = {}
        if req.limit_images is not None or req.images > 1:
            limits["image"] = req.limit_images if req.limit_images is not None else req.images
        if req.limit_videos is not None:
            limits["video"] = req.limit_videos
        out["limit_mm"] = limits or None
        if eng.get("name") == "vllm":
            out["memory_fraction"] = req.memory_fraction
        out["cache_max_entry_count"] = req.cache_max_entry_count
        out["tp"] = gpus if gpus > 1 and tp_ok else None
        out["pp"] = gpus if gpus > 1 and not tp_ok else None
        out["enforce_eager"] = req.enforce_eager
        if req.quant == "fp8":
            out["quant"] = "fp8"
        out["trust_remote_code"] = bool(profile.data["source"].get("trust_remote_code"))
    else:
        out["train_type"] = req.task
        out["batch"] = req.batch
        out["max_length"] = req.seq
        out["lora_rank"] = req.lora_rank if req.task in ("lora", "qlora") else None
        out["gradient_checkpointing"] = str(req.gradient_checkpointing).lower()
        out["disable_gradient_checkpointing"] = None if req.gradient_checkpointing else "true"
        fam = vision_family(profile)
        if req.max_pixels is not None or "pixels_per_token" in fam:
            out["max_pixels"] = req.max_pixels or (req.image_tokens or 0) * fam.get(
                "pixels_per_token", 0
            )
        out["max_tiles"] = req.max_tiles or _tiles_of(req.image_tokens, fam)
        out["zero"] = req.zero or None
        out["nproc"] = gpus if gpus > 1 else None
        out["trust_remote_code"] = bool(profile.data["source"].get("trust_remote_code"))
    return {k: v for k, v in out.items() if v not in (None, {}, 0) or v is False}
