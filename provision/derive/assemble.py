"""The derived profile's TOML data, from what `read_metadata` read (see build.py for the rules)."""

from __future__ import annotations

from typing import Any

from provision.derive import build
from provision.derive.build import Metadata


def _config_params(text: dict[str, Any]) -> int:
    """Language-model parameters from the shapes alone (no headers): attention, MLP, embeddings."""
    h, hd = text["hidden"], text["head_dim"]
    attention = h * text["heads"] * hd * 2 + h * text["kv_heads"] * hd * 2
    mlp = 3 * h * text["intermediate"]
    embed = text["vocab"] * h * (1 if text["tie_word_embeddings"] else 2)
    return text["layers"] * (attention + mlp + 2 * h) + embed + h


def assemble(meta: Metadata, ref: Any, repo: Any, facts: list[str], name: str) -> dict[str, Any]:
    config = meta.config
    key, family, known = build.lookup_family(config)
    approximate: list[str] = list(facts)
    notes: list[str] = []
    architecture = (config.get("architectures") or [key])[0]
    if not known:
        approximate.append(
            f"unknown architecture {architecture} (model_type {config.get('model_type')!r}): "
            "weights and KV cache from the metadata; vision/projector split by generic name "
            "prefixes; image tokens, fixes and stack defaults are missing"
        )
    if family.get("trust_remote_code"):
        notes.append(
            f"{architecture} runs code from the repository (trust_remote_code); "
            f"extra packages: {', '.join(family.get('extra_packages', [])) or 'none'}"
        )
    for line in family.get("missing", []):
        approximate.append(line)
    text, from_headers, missing = build.text_shape(config, family, meta.tensors)
    approximate.extend(f"{m} missing from the config and headers" for m in missing)
    dtype, dtype_guessed = build.profile_dtype(config, meta.tensors)
    if dtype_guessed:
        approximate.append("weights.dtype not stated: bfloat16 assumed")
    per_param = build.DTYPE_BYTES[dtype]
    where = f"{ref.text} @ {repo.commit}"
    active = None
    if meta.tensors is not None:
        counted = build.count_params(meta.tensors, config, family)
        parts = counted["parts"]
        vision = parts["vision"] + parts["projector"]
        total = sum(parts.values())
        language = total - vision
        weight_bytes = counted["bytes"]
        params_source = (
            f"safetensors headers of {where}: vision tower {parts['vision']}, projector "
            f"{parts['projector']}, language {parts['language']}"
            + (f", unsorted {parts['other']} (counted as language)" if parts["other"] else "")
        )
        weights_source = f"safetensors headers of {where}: sum of the tensors' bytes"
        if counted["quant"]:
            weights_source += f" ({counted['quant']} checkpoint: its real bytes)"
        if (
            meta.index_total_size
            and abs(meta.index_total_size - weight_bytes) > 0.01 * weight_bytes
        ):
            approximate.append(
                f"the index's total_size {meta.index_total_size} differs from the headers' "
                f"{weight_bytes} bytes by more than 1%"
            )
        text_cfg = build.text_section(config)
        experts = build._int(text_cfg.get("num_experts") or text_cfg.get("n_routed_experts"))
        per_token = build._int(text_cfg.get("num_experts_per_tok"))
        if counted["experts"] and experts and per_token:
            active = total - counted["experts"] + counted["experts"] * per_token // experts
    else:
        vision = 0
        if meta.index_total_size:
            weight_bytes = meta.index_total_size
            total = weight_bytes // per_param
            params_source = (
                f"pytorch_model.bin.index.json total_size of {where} / {per_param} bytes"
            )
        else:
            total = _config_params(text)
            weight_bytes = total * per_param
            params_source = f"estimated from the text shape in config.json of {where}"
        language = total
        weights_source = params_source
        approximate.append("params.vision unknown without tensor headers (counted as language)")
    image, image_missing = build.image_shape(config, meta.preprocessor, family)
    approximate.extend(image_missing)
    if image is None:
        image = {"tokens": 0, "in_text_sequence": True}
        approximate.append("image.tokens set to 0: pass --image-tokens to check")
    image["source"] = f"config.json and the processor config of {where}, family rule {key}"
    text_source = f"config.json of {where}"
    if from_headers:
        text_source += f"; {', '.join(from_headers)} from the safetensors headers"
    tasks, task_notes = build.task_tables(config, family)
    notes.extend(task_notes)
    source: dict[str, Any] = {"gated": bool(getattr(repo, "gated", False))}
    is_hub = getattr(ref, "folder", None) is None
    hub_kind = getattr(repo, "kind", "hf")
    if is_hub and hub_kind == "modelscope":
        source["huggingface"] = ref.repo_id
        source["modelscope"] = ref.repo_id
        source["note"] = "derived from ModelScope; the Hugging Face id is assumed to be the same"
    elif is_hub:
        source["huggingface"] = ref.repo_id
    else:
        source["huggingface"] = f"local/{name}"
        source["note"] = f"derived from the folder {ref.folder}"
    if is_hub and len(repo.commit) == 40 and hub_kind != "modelscope":
        source["revision"] = repo.commit
    if family.get("trust_remote_code"):
        source["trust_remote_code"] = True
    params: dict[str, Any] = {
        "total": total,
        "vision": vision,
        "language": language,
        "source": params_source,
    }
    if active:
        params["active"] = active
    weights: dict[str, Any] = {
        "dtype": dtype,
        "bytes": weight_bytes,
        "format": meta.weight_format,
        "source": weights_source,
    }
    text["source"] = text_source
    gen = meta.generation
    max_new = gen.get("max_new_tokens") if isinstance(gen.get("max_new_tokens"), int) else None
    derived: dict[str, Any] = {
        "repo": ref.repo_id if is_hub else str(ref.folder),
        "revision": getattr(ref, "revision", None) or repo.revision,
        "commit": repo.commit,
        "source": repo.where,
        "family_rule": key,
        "requests": repo.requests,
    }
    if approximate:
        derived["approximate"] = approximate
    if notes:
        derived["notes"] = notes
    return {
        "name": name,
        "title": ref.repo_id.rsplit("/", 1)[-1] if is_hub else name,
        "family": family["family"],
        "architecture": architecture,
        "fixes": list(family.get("fixes", [])),
        "source": source,
        "params": params,
        "weights": weights,
        "text": text,
        "image": image,
        "tasks": tasks,
        "smoke": {
            "prompt": "What is shown in this image? Answer in one short sentence.",
            "max_new_tokens": min(max_new or 32, 64),
        },
        "derived": derived,
    }
