"""A profile from a repository's metadata: config.json, the processor config, generation_config
and the safetensors headers, read through the family table (provision/data/families.toml).

Nothing here guesses silently: every value says where it came from (`source` keys), and what the
metadata could not give is listed under [derived].approximate.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any

from provision.choices import DTYPE_BYTES  # the dtypes a profile may name
from provision.derive.safetensors import DTYPE_BITS, Tensor
from provision.resources import load_table

LAYER_RE = re.compile(r"(?:^|\.)(?:layers|h|blocks)\.(\d+)\.")


@functools.lru_cache(maxsize=1)
def family_table() -> dict[str, Any]:
    return load_table("families.toml")


@dataclass
class Metadata:
    """What was read from the repository (everything the derivation uses)."""

    repo_id: str
    config: dict[str, Any]
    preprocessor: dict[str, Any] = field(default_factory=dict)
    generation: dict[str, Any] = field(default_factory=dict)
    tensors: list[Tensor] | None = None  # None: no safetensors (only .bin weights)
    index_total_size: int | None = None  # the weight index's total_size, when there is one
    weight_format: str = "safetensors"
    download_bytes: int | None = None


def lookup_family(config: dict[str, Any]) -> tuple[str, dict[str, Any], bool]:
    """(key, family entry, known?) for the config's architecture, else its model_type."""
    table = family_table()
    for arch in config.get("architectures") or []:
        if isinstance(arch, str) and arch in table.get("architectures", {}):
            return arch, table["architectures"][arch], True
    model_type = config.get("model_type")
    if isinstance(model_type, str) and model_type in table["families"]:
        return model_type, table["families"][model_type], True
    return str(model_type or "unknown"), table["unknown"], False


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _first(section: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        if section.get(key) is not None:
            return section[key]
    return None


def text_section(config: dict[str, Any]) -> dict[str, Any]:
    for key in ("text_config", "llm_config", "language_config"):
        if isinstance(config.get(key), dict):
            return config[key]
    return config


def vision_section(config: dict[str, Any]) -> dict[str, Any]:
    for key in ("vision_config", "vision_tower_config"):
        if isinstance(config.get(key), dict):
            return config[key]
    return {}


# --- sorting the tensors ---------------------------------------------------------------------


def part_of(name: str, family: dict[str, Any]) -> str:
    """projector, vision or language: the first matching prefix list, in that order."""
    if any(name.startswith(p) for p in family.get("projector", [])):
        return "projector"
    if any(name.startswith(p) for p in family.get("vision", [])):
        return "vision"
    language = family.get("language", [])
    if not language or any(name.startswith(p) for p in language):
        return "language"
    return "other"


def _quant_method(config: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    quant = config.get("quantization_config") or text_section(config).get("quantization_config")
    if not isinstance(quant, dict):
        return None, {}
    method = str(quant.get("quant_method", "")).lower()
    if method in ("compressed-tensors", "fbgemm_fp8"):
        method = "fp8"
    return method or None, quant


def count_params(
    tensors: list[Tensor], config: dict[str, Any], family: dict[str, Any]
) -> dict[str, Any]:
    """Parameters per part and bytes, with quantized tensors counted as the values they pack."""
    method, quant = _quant_method(config)
    rules = family_table()["quantization"].get(method or "", {})
    bits = _int(quant.get("bits")) or (4 if quant.get("load_in_4bit") else 8)
    parts = {"vision": 0, "projector": 0, "language": 0, "other": 0}
    nbytes = 0
    dtypes: dict[str, int] = {}
    experts = 0
    for tensor in tensors:
        nbytes += tensor.nbytes
        dtypes[tensor.dtype] = dtypes.get(tensor.dtype, 0) + tensor.nbytes
        if any(tensor.name.endswith(s) for s in rules.get("skip_suffixes", [])):
            continue
        numel = tensor.numel
        if any(tensor.name.endswith(s) for s in rules.get("packed_suffixes", [])):
            numel = numel * DTYPE_BITS[tensor.dtype] // bits
        elif method == "bitsandbytes" and tensor.dtype == "U8" and bits == 4:
            numel *= 2  # two 4-bit values per byte
        part = part_of(tensor.name, family)
        parts[part] += numel
        if ".experts." in tensor.name and part == "language":
            experts += numel
    return {"parts": parts, "bytes": nbytes, "dtypes": dtypes, "experts": experts, "quant": method}


# --- the text model's shape --------------------------------------------------------------------


def _language_tensors(tensors: list[Tensor], family: dict[str, Any]) -> list[Tensor]:
    return [t for t in tensors if part_of(t.name, family) == "language"]


def text_shape(
    config: dict[str, Any], family: dict[str, Any], tensors: list[Tensor] | None
) -> tuple[dict[str, Any], list[str], list[str]]:
    """The [text] table, which keys came from the headers, and what is missing."""
    text = dict(text_section(config))
    table = family_table()
    defaults = dict(table.get("text_model_defaults", {}).get(str(text.get("model_type")), {}))
    family_defaults = dict(family.get("text_defaults", {}))
    if "model_type" in family_defaults:
        defaults = {
            **table.get("text_model_defaults", {}).get(family_defaults.pop("model_type"), {}),
            **defaults,
        }
    defaults.update(family_defaults)
    for key, value in defaults.items():
        text.setdefault(key, value)
    out: dict[str, Any] = {}
    from_headers: list[str] = []
    missing: list[str] = []
    out["layers"] = _int(_first(text, "num_hidden_layers", "n_layer", "num_layers"))
    out["hidden"] = _int(_first(text, "hidden_size", "d_model", "n_embd"))
    out["intermediate"] = _int(_first(text, "intermediate_size", "ffn_dim", "n_inner"))
    out["heads"] = _int(_first(text, "num_attention_heads", "n_head"))
    out["kv_heads"] = _int(_first(text, "num_key_value_heads", "n_kv_heads"))
    out["head_dim"] = _int(text.get("head_dim"))
    out["vocab"] = _int(_first(text, "vocab_size")) or _int(config.get("vocab_size"))
    lang = _language_tensors(tensors, family) if tensors else []
    by_suffix = {t.name: t for t in lang}

    def find(*suffixes: str) -> Tensor | None:
        for name, tensor in by_suffix.items():
            if any(name.endswith(s) for s in suffixes) and ".0." in f".{name}":
                return tensor
        return None

    embed = next((t for t in lang if t.name.endswith(("embed_tokens.weight", "wte.weight"))), None)
    if embed is not None and len(embed.shape) == 2:
        if out["vocab"] is None:
            out["vocab"], _ = embed.shape
            from_headers.append("vocab")
        if out["hidden"] is None:
            out["hidden"] = embed.shape[1]
            from_headers.append("hidden")
    if out["layers"] is None and lang:
        indices = {int(m.group(1)) for t in lang if (m := LAYER_RE.search(t.name))}
        if indices:
            out["layers"] = max(indices) + 1
            from_headers.append("layers")
    if out["intermediate"] is None:
        up = find("mlp.up_proj.weight", "mlp.gate_proj.weight", "mlp.fc1.weight")
        if up is not None:
            out["intermediate"] = up.shape[0]
            from_headers.append("intermediate")
    if out["heads"] is None or out["kv_heads"] is None:
        q, k = find("self_attn.q_proj.weight"), find("self_attn.k_proj.weight")
        head_dim = out["head_dim"] or (
            out["hidden"] // out["heads"] if out["hidden"] and out["heads"] else None
        )
        if head_dim and q is not None and out["heads"] is None:
            out["heads"] = q.shape[0] // head_dim
            from_headers.append("heads")
        if head_dim and k is not None and out["kv_heads"] is None:
            out["kv_heads"] = k.shape[0] // head_dim
            from_headers.append("kv_heads")
    if out["kv_heads"] is None and out["heads"]:
        out["kv_heads"] = out["heads"]  # no num_key_value_heads: multi-head attention
    if out["head_dim"] is None and out["hidden"] and out["heads"]:
        out["head_dim"] = out["hidden"] // out["heads"]
    context = _int(_first(text, "max_position_embeddings", "seq_length", "max_sequence_length"))
    cap = _int(family.get("max_context"))
    out["max_context"] = min(context, cap) if context and cap else (context or cap)
    if context and cap and context > cap:
        out["config_max_len"] = context  # what a serving engine reserves when given no length
    scaling = text.get("rope_scaling")
    if isinstance(scaling, dict) and isinstance(scaling.get("factor"), (int, float)):
        kind = scaling.get("rope_type", scaling.get("type"))
        if isinstance(kind, str) and scaling["factor"] > 0:
            out["rope_type"], out["rope_factor"] = kind, scaling["factor"]
    tie = _first(text, "tie_word_embeddings")
    if tie is None:
        tie = config.get("tie_word_embeddings")
    if tie is None and tensors is not None:
        tie = not any(t.name.endswith("lm_head.weight") for t in tensors)
        from_headers.append("tie_word_embeddings")
    out["tie_word_embeddings"] = bool(tie) if tie is not None else False
    window = _int(text.get("sliding_window"))
    pattern = _int(text.get("sliding_window_pattern"))
    layer_types = text.get("layer_types")
    if window and isinstance(layer_types, list) and out["layers"]:
        full = sum(1 for t in layer_types if t == "full_attention")
        if 0 < full < len(layer_types):
            out["sliding_window"], out["global_layers"] = window, full
    elif window and pattern and out["layers"]:
        out["sliding_window"], out["global_layers"] = window, out["layers"] // pattern
    cross = text.get("cross_attention_layers")
    if isinstance(cross, list) and cross:
        out["cross_attention_layers"] = len(cross)
    for key in ("layers", "hidden", "intermediate", "heads", "kv_heads", "head_dim", "vocab"):
        if out[key] is None:
            missing.append(f"text.{key}")
            out[key] = {"kv_heads": out["heads"] or 1}.get(key, 1)
    if out["max_context"] is None:
        missing.append("text.max_context")
        out["max_context"] = 4096
    if out["heads"] % out["kv_heads"]:
        out["kv_heads"] = out["heads"]
        missing.append("text.kv_heads (does not divide heads)")
    return out, from_headers, missing


# --- one image in tokens -------------------------------------------------------------------


def _downsample_factor(value: Any) -> float:
    """InternVL's downsample_ratio 0.5 and Idefics3's scale_factor 2/4 as a token multiplier."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
        return 1.0
    return value**2 if value < 1 else 1.0 / value**2


def image_shape(
    config: dict[str, Any], preprocessor: dict[str, Any], family: dict[str, Any]
) -> tuple[dict[str, Any] | None, list[str]]:
    """The [image] table (without `source`), or None when the family has no image rule."""
    rule = family.get("image")
    vision = vision_section(config)
    out: dict[str, Any] = {}
    # Qwen2-VL's vision hidden_size is the merger's output; embed_dim is the encoder's width.
    hidden = _int(_first(vision, "embed_dim", "hidden_size", "width"))
    layers = _int(_first(vision, "num_hidden_layers", "depth", "layers"))
    if layers and _int(vision.get("num_global_layers")):
        layers += vision["num_global_layers"]  # Mllama: local + global encoder layers
    heads = _int(_first(vision, "num_attention_heads", "num_heads", "attention_heads", "heads"))
    for key, value in (
        ("encoder_hidden", hidden),
        ("encoder_layers", layers),
        ("encoder_heads", heads),
    ):
        if value:
            out[key] = value
    if not rule:
        return None, ["image tokens (no image rule for this architecture)"]
    kind = rule["rule"]
    patch = (
        _int(rule.get("patch_size"))
        or _int(vision.get("patch_size"))
        or _int(preprocessor.get("patch_size"))
    )
    image_size = (
        _int(config.get(rule.get("image_size_key", "")))
        or _int(rule.get("image_size"))
        or _int(vision.get("image_size"))
    )
    missing: list[str] = []
    if kind == "pixels":
        merge = _int(vision.get("spatial_merge_size")) or _int(preprocessor.get("merge_size")) or 2
        if not patch:
            return None, ["image tokens (no patch_size in the config)"]
        unit = patch * merge
        size = preprocessor.get("size") if isinstance(preprocessor.get("size"), dict) else {}
        max_pixels = _int(preprocessor.get("max_pixels")) or _int(size.get("longest_edge"))
        max_tokens = max_pixels // (unit * unit) if max_pixels else None
        default = rule["default_tokens"]
        out["tokens"] = min(default, max_tokens) if max_tokens else default
        if max_tokens:
            out["max_tokens"] = max_tokens
        else:
            missing.append("image.max_tokens (no max_pixels in the processor config)")
        out["encoder_tokens_per_image_token"] = merge * merge
        out["tokens_setting"] = f"max_pixels={{tokens}}*{unit}*{unit}"
        out["rule"] = (
            f"(H/{unit})*(W/{unit}) after resizing into the processor's pixel bounds; "
            f"{out['tokens']} = max_pixels {out['tokens']}*{unit}*{unit}"
        )
        if rule.get("dense_mask"):
            out["encoder_dense_mask"] = True
    elif kind == "fixed":
        if not (patch and image_size):
            return None, ["image tokens (no image_size / patch_size in the vision config)"]
        out["tokens"] = (image_size // patch) ** 2 + int(rule.get("extra", 0))
        out["encoder_tokens_per_image_token"] = 1
        out["rule"] = f"{out['tokens']} tokens per image (({image_size}/{patch})^2)"
    elif kind == "tiles":
        per_tile = _int(rule.get("tokens_per_tile"))
        factor = _downsample_factor(
            config.get(rule.get("downsample_key", ""), rule.get("downsample", 1))
        )
        if per_tile is None:
            if not (patch and image_size):
                return None, ["image tokens (no image_size / patch_size in the vision config)"]
            per_tile = int((image_size // patch) ** 2 * factor) + int(rule.get("per_tile_extra", 0))
        max_tiles = _int(config.get(rule.get("max_tiles_key", ""))) or _int(rule.get("max_tiles"))
        if max_tiles is None:
            crop = preprocessor.get("max_image_size")
            size = preprocessor.get("size")
            edge = _int(crop.get("longest_edge")) if isinstance(crop, dict) else None
            longest = _int(size.get("longest_edge")) if isinstance(size, dict) else None
            if edge and longest:
                max_tiles = (longest // edge) ** 2
        max_tiles = max_tiles or _int(preprocessor.get("max_image_tiles"))
        tiles = (
            rule["default_tiles"] if max_tiles is None else min(rule["default_tiles"], max_tiles)
        )
        extra = 1 if rule.get("thumbnail") else 0
        out["tokens"] = (tiles + extra) * per_tile
        if max_tiles:
            out["max_tokens"] = (max_tiles + extra) * per_tile
        out["encoder_tokens_per_image_token"] = max(1, round(1 / factor))
        view = " + a global view" if extra else ""
        out["rule"] = f"{per_tile} tokens per tile; {tiles} tiles{view} by default" + (
            f", {max_tiles}{view} at most" if max_tiles else ""
        )
    elif kind == "config":
        tokens = _int(config.get(rule["key"]))
        if not tokens:
            return None, [f"image tokens (the config has no {rule['key']})"]
        out["tokens"] = tokens
        if patch and image_size:
            out["encoder_tokens_per_image_token"] = max(1, (image_size // patch) ** 2 // tokens)
        out["rule"] = f"{tokens} tokens per image (config {rule['key']})"
    if rule.get("in_text_sequence") is False:
        out["in_text_sequence"] = False
    else:
        out["in_text_sequence"] = True
    for key in ("encoder_hidden", "encoder_layers", "encoder_heads"):
        if key not in out:
            missing.append(f"image.{key}")
    return out, missing


# --- packages --------------------------------------------------------------------------------


def _version_tuple(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", text)[:3])


def transformers_floor(config: dict[str, Any], family: dict[str, Any]) -> str | None:
    """The lowest transformers: the family's floor or the version that wrote the config
    (a .dev0 of X.Y.0 is that release's pre-release: X.Y.0 is the first release with it)."""
    floors = [f for f in (family.get("transformers_floor"),) if f]
    written = config.get("transformers_version")
    if isinstance(written, str) and re.match(r"^\d+\.\d+(\.\d+)?", written):
        major_minor_patch = ".".join(str(p) for p in _version_tuple(written))
        floors.append(major_minor_patch)
    return max(floors, key=_version_tuple) if floors else None


def task_tables(config: dict[str, Any], family: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    table = family_table()
    notes: list[str] = []
    floor = transformers_floor(config, family)
    tasks: dict[str, Any] = {}
    for task, set_name in family["packages"].items():
        chosen = table["package_sets"][set_name]
        packages = list(chosen["packages"]) + [
            p for p in family.get("extra_packages", []) if p not in chosen["packages"]
        ]
        for i, req in enumerate(packages):
            if req.startswith("transformers==") and floor:
                pinned = req.split("==", 1)[1]
                if _version_tuple(pinned) < _version_tuple(floor):
                    packages[i] = f"transformers=={floor}"
                    note = (
                        f"transformers pinned to {floor} (the config needs it; the family's "
                        f"stack pins {pinned}): check that torch and the stack accept it"
                    )
                    if note not in notes:
                        notes.append(note)
        tasks[task] = {"stack": chosen["stack"], "packages": packages}
    return tasks, notes


def profile_dtype(config: dict[str, Any], tensors: list[Tensor] | None) -> tuple[str, bool]:
    """(dtype, guessed?) of the model's 16/32-bit weights."""
    for section in (config, text_section(config)):
        value = _first(section, "torch_dtype", "dtype")
        if isinstance(value, str) and value.replace("torch.", "") in DTYPE_BYTES:
            return value.replace("torch.", ""), False
    if tensors:
        counts: dict[str, int] = {}
        for t in tensors:
            counts[t.dtype] = counts.get(t.dtype, 0) + t.nbytes
        top = max(counts, key=counts.__getitem__)
        mapped = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(top)
        if mapped:
            return mapped, False
    return "bfloat16", True
