"""Regenerate provision/data/train_flags.toml (and the LLaMA-Factory template fixture) from the
training stacks' own wheels.

    pip download --no-deps --only-binary :all: -d /tmp/wheels \
        llamafactory==0.9.2 ms-swift==3.4.1 transformers==4.49.0 transformers==4.51.3
    pip download --no-deps --only-binary :all: --python-version 3.10 -d /tmp/wheels xtuner==0.1.23
    python scripts/train_flags.py /tmp/wheels

Reads source only (ast, nothing imported):
- LLaMA-Factory 0.9.2 `llamafactory-cli train`: HfArgumentParser over _TRAIN_ARGS in
  llamafactory/hparams/parser.py (ModelArguments, DataArguments, TrainingArguments,
  FinetuningArguments, GeneratingArguments); each dataclass field `x` is the option `--x`. Its
  TrainingArguments extends transformers' Seq2SeqTrainingArguments: read in transformers 4.49.0,
  the newest release LLaMA-Factory 0.9.2 accepts (its requirements.txt: <=4.49.0).
- ms-swift 3.4.1 `swift sft`: HfArgumentParser over swift/llm/argument/train_args.py
  TrainArguments and its bases; transformers' part read in 4.51.3, the release the profiles pin
  with ms-swift (provision/data/families.toml package_sets).
- XTuner 0.1.23 `xtuner train`: the add_argument options of xtuner/tools/train.py, the dotted keys
  `--cfg-options` can set in each shipped config stacks.toml names, and the DeepSpeed config names
  under xtuner/configs/deepspeed/.
- tests/fixtures/llamafactory-0.9.2-templates.json: every register_template name in
  llamafactory/data/template.py with its mm_plugin, and the repositories each multimodal
  register_model_group in llamafactory/extras/constants.py lists per template.
"""

from __future__ import annotations

import ast
import hashlib
import json
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from provision.resources import load_table  # noqa: E402
from scripts.engine_flags import _options  # noqa: E402 - the same argparse reading

OUT = ROOT / "provision" / "data" / "train_flags.toml"
FIXTURE = ROOT / "tests" / "fixtures" / "llamafactory-0.9.2-templates.json"

# `from transformers import X` goes through a lazy module ast cannot follow: where X lives.
LAZY = {
    ("transformers", "Seq2SeqTrainingArguments"): "transformers.training_args_seq2seq",
    ("transformers", "TrainingArguments"): "transformers.training_args",
}


class Source:
    """Modules read from several wheels, by dotted name."""

    def __init__(self, wheels: list[zipfile.ZipFile]) -> None:
        self.wheels = wheels
        self.trees: dict[str, ast.Module] = {}

    def module(self, name: str) -> ast.Module | None:
        if name not in self.trees:
            path = name.replace(".", "/")
            for wheel in self.wheels:
                for candidate in (f"{path}.py", f"{path}/__init__.py"):
                    if candidate in wheel.namelist():
                        self.trees[name] = ast.parse(wheel.read(candidate))
                        break
                if name in self.trees:
                    break
            else:
                return None
        return self.trees[name]

    def is_package(self, name: str) -> bool:
        path = name.replace(".", "/") + "/__init__.py"
        return any(path in w.namelist() for w in self.wheels)

    def resolve(self, module: str, name: str) -> tuple[str, ast.ClassDef] | None:
        """The class `name` as seen from `module`: defined there, or imported into it."""
        if (module, name) in LAZY:
            return self.resolve(LAZY[(module, name)], name)
        tree = self.module(module)
        if tree is None:
            return None
        for node in tree.body:
            if isinstance(node, ast.ClassDef) and node.name == name:
                return module, node
        for node in tree.body:
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    if (alias.asname or alias.name) != name:
                        continue
                    base = module if self.is_package(module) else module.rpartition(".")[0]
                    for _ in range(max(node.level - 1, 0)):
                        base = base.rpartition(".")[0]
                    target = node.module or ""
                    if node.level:
                        target = f"{base}.{target}" if target else base
                    return self.resolve(target, alias.name)
        return None

    def fields(self, module: str, name: str) -> list[str]:
        """The dataclass fields of `name` and of every base it names, as HfArgumentParser sees."""
        found = self.resolve(module, name)
        if found is None:
            raise SystemExit(f"cannot find {name} from {module}")
        where, cls = found
        out: list[str] = []
        for base in cls.bases:
            if isinstance(base, ast.Name) and self.resolve(where, base.id) is not None:
                out += self.fields(where, base.id)
        for node in cls.body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                if "ClassVar" in ast.unparse(node.annotation):
                    continue
                out.append(node.target.id)
        return out


def _config_keys(tree: ast.Module) -> dict[str, object]:
    """Dotted keys of the module-level dicts of an mmengine config (what --cfg-options sets),
    each with its literal value where it has one (numbers, booleans, strings; else None)."""
    top: dict[str, ast.expr] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                top[target.id] = node.value

    def literal(value: ast.expr, depth: int = 0) -> object:
        if depth > 8:
            return None
        if isinstance(value, ast.Name) and value.id in top:
            return literal(top[value.id], depth + 1)
        if isinstance(value, ast.Constant) and isinstance(value.value, (int, float, str)):
            return value.value
        if isinstance(value, ast.BinOp) and isinstance(value.op, ast.Add):
            left, right = literal(value.left, depth + 1), literal(value.right, depth + 1)
            if isinstance(left, str) and isinstance(right, str):
                return left + right
        return None

    def walk(prefix: str, value: ast.expr, depth: int = 0) -> dict[str, object]:
        if depth > 8:
            return {}
        if isinstance(value, ast.Name) and value.id in top:
            value = top[value.id]
        pairs: list[tuple[str, ast.expr]] = []
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "dict":
            pairs = [(k.arg, k.value) for k in value.keywords if k.arg]
        elif isinstance(value, ast.Dict):
            pairs = [
                (k.value, v)
                for k, v in zip(value.keys, value.values, strict=True)
                if isinstance(k, ast.Constant) and isinstance(k.value, str)
            ]
        keys: dict[str, object] = {}
        for key, sub in pairs:
            keys[f"{prefix}{key}"] = literal(sub)
            keys.update(walk(f"{prefix}{key}.", sub, depth + 1))
        return keys

    keys: dict[str, object] = {}
    for name, value in top.items():
        keys[name] = literal(value)
        keys.update(walk(f"{name}.", value))
    return dict(sorted(keys.items()))


def _templates(template_py: bytes, constants_py: bytes) -> dict:
    templates: dict[str, str] = {}
    for call in ast.walk(ast.parse(template_py)):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "register_template":
            kw = {k.arg: k.value for k in call.keywords}
            plugin = "base"
            mm = kw.get("mm_plugin")
            if isinstance(mm, ast.Call):
                plugin = next((k.value.value for k in mm.keywords if k.arg == "name"), plugin)
            templates[kw["name"].value] = plugin
    repos: dict[str, list[str]] = {}
    for call in ast.walk(ast.parse(constants_py)):
        if isinstance(call, ast.Call) and getattr(call.func, "id", "") == "register_model_group":
            kw = {k.arg: k.value for k in call.keywords}
            if "template" not in kw or not (
                isinstance(kw.get("multimodal"), ast.Constant) and kw["multimodal"].value
            ):
                continue
            names = repos.setdefault(kw["template"].value, [])
            for node in ast.walk(kw["models"]):
                if isinstance(node, ast.Dict):
                    for key, value in zip(node.keys, node.values, strict=True):
                        if getattr(key, "attr", "") == "DEFAULT" and isinstance(
                            value, ast.Constant
                        ):
                            names.append(value.value)
    return {"templates": dict(sorted(templates.items())), "multimodal_repos": repos}


def _architectures(wheel: zipfile.ZipFile) -> list[str]:
    """Every `architectures=[...]` a ModelMeta in swift/llm/model/model/ registers: what ms-swift
    matches a checkpoint's config.json architectures against when the repo name is not listed."""
    out: set[str] = set()
    for name in wheel.namelist():
        if name.startswith("swift/llm/model/model/") and name.endswith(".py"):
            for call in ast.walk(ast.parse(wheel.read(name))):
                for kw in getattr(call, "keywords", []):
                    if kw.arg == "architectures" and isinstance(kw.value, ast.List):
                        out.update(e.value for e in kw.value.elts if isinstance(e, ast.Constant))
    return sorted(out)


def _json_stems(wheel: zipfile.ZipFile, folder: str) -> list[str]:
    """The names of the DeepSpeed configs a stack ships (what its --deepspeed NAME resolves)."""
    return sorted(
        Path(n).stem for n in wheel.namelist() if n.startswith(folder) and n.endswith(".json")
    )


def _wheel(folder: Path, prefix: str) -> tuple[zipfile.ZipFile, str]:
    path = next(folder.glob(f"{prefix}-py3-none-any.whl"))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return zipfile.ZipFile(path), f"{path.name} (sha256 {digest})"


def _toml_list(name: str, items: list[str]) -> list[str]:
    return [f"{name} = [", *[f'    "{x}",' for x in items], "]"]


def main(folder: str) -> int:
    wheels = Path(folder)
    lf, lf_src = _wheel(wheels, "llamafactory-0.9.2")
    swift, swift_src = _wheel(wheels, "ms_swift-3.4.1")
    tf49, tf49_src = _wheel(wheels, "transformers-4.49.0")
    tf51, tf51_src = _wheel(wheels, "transformers-4.51.3")
    xt, xt_src = _wheel(wheels, "xtuner-0.1.23")

    lf_source = Source([lf, tf49])
    lf_fields = []
    for module, name in (
        ("llamafactory.hparams.model_args", "ModelArguments"),
        ("llamafactory.hparams.data_args", "DataArguments"),
        ("llamafactory.hparams.training_args", "TrainingArguments"),
        ("llamafactory.hparams.finetuning_args", "FinetuningArguments"),
        ("llamafactory.hparams.generating_args", "GeneratingArguments"),
    ):
        lf_fields += lf_source.fields(module, name)
    swift_fields = Source([swift, tf51]).fields("swift.llm.argument.train_args", "TrainArguments")

    stacks = load_table("stacks.toml")["stack"]
    xt_cfg = stacks["xtuner"]["launch"]
    xt_configs = {}
    for base in xt_cfg["configs"].values():
        for suffix in xt_cfg["config_suffix"].values():
            name = base + suffix
            path = f"xtuner/configs/internvl/v2/{name}.py"
            xt_configs[name] = _config_keys(ast.parse(xt.read(path)))
    deepspeed = _json_stems(xt, "xtuner/configs/deepspeed/")

    parts = [
        "# Every option each training stack's own parser accepts, at the version",
        "# provision/data/stacks.toml [stack.*.launch] names. Generated by",
        "# scripts/train_flags.py from the wheels named below (their sha256 as PyPI serves",
        "# them); tests/test_train_flags.py checks every flag and config key provision's",
        "# training launch lines use is listed here.",
        "",
        "[stack.llama-factory]",
        'version = "0.9.2"',
        'command = "llamafactory-cli train"',
        f'source = "{lf_src}: llamafactory/hparams/parser.py _TRAIN_ARGS (Model, Data, Training, '
        f"Finetuning, GeneratingArguments), their Seq2SeqTrainingArguments base read in {tf49_src}"
        '"',
        *_toml_list("flags", sorted({f"--{f}" for f in lf_fields})),
        "",
        "[stack.ms-swift]",
        'version = "3.4.1"',
        'command = "swift sft"',
        f'source = "{swift_src}: swift/llm/argument/train_args.py TrainArguments and its bases, '
        f"transformers' part read in {tf51_src}; architectures: every ModelMeta architectures= "
        "in swift/llm/model/model/; deepspeed: swift/llm/ds_config/ (train_args.py "
        '_init_deepspeed)"',
        *_toml_list("flags", sorted({f"--{f}" for f in swift_fields})),
        *_toml_list("architectures", _architectures(swift)),
        *_toml_list("deepspeed", _json_stems(swift, "swift/llm/ds_config/")),
        "",
        "[stack.xtuner]",
        'version = "0.1.23"',
        'command = "xtuner train"',
        f'source = "{xt_src}: xtuner/tools/train.py add_argument, xtuner/configs/internvl/v2/'
        'the configs named below (their module-level dict keys), xtuner/configs/deepspeed/"',
        *_toml_list("flags", sorted(set(_options(ast.parse(xt.read("xtuner/tools/train.py")))))),
        *_toml_list("deepspeed", deepspeed),
        "",
        "[stack.xtuner.config_keys]",
    ]
    for name, keys in xt_configs.items():
        parts += _toml_list(f'"{name}"', list(keys))
    parts += [
        "",
        "# The literal values the same configs give those keys (numbers, booleans, strings).",
        "[stack.xtuner.config_values]",
    ]
    for name, keys in xt_configs.items():
        pairs = [f"{json.dumps(k)} = {json.dumps(v)}" for k, v in keys.items() if v is not None]
        parts += [f'"{name}" = {{ {", ".join(pairs)} }}']
    OUT.write_text("\n".join(parts) + "\n", encoding="utf-8")

    fixture = {
        "source": f"{lf_src}: llamafactory/data/template.py register_template (name, mm_plugin), "
        "llamafactory/extras/constants.py register_model_group(..., template, multimodal=True) "
        "DownloadSource.DEFAULT repositories",
        **_templates(
            lf.read("llamafactory/data/template.py"), lf.read("llamafactory/extras/constants.py")
        ),
    }
    FIXTURE.write_text(json.dumps(fixture, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {OUT} and {FIXTURE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
