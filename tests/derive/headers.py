"""Safetensors files with real headers and sparse bodies, for a local hub that costs no disk.

`meta_tensors(config)` builds the architecture with the installed transformers on the meta
device (no memory) and returns its real tensor names, dtypes and shapes, as a checkpoint saved
by that transformers would list them (tied weights once). `write_sparse_safetensors` writes
shards whose header is real and whose body is a hole (`truncate`), so a 16 GB checkpoint takes
a few kB of disk.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

DTYPE_NAMES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}
DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1, "F8_E4M3": 1, "I8": 1}


def meta_tensors(folder: Path, dtype: str = "BF16") -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of every parameter of the model whose config.json is in `folder`."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    arch = config.architectures[0]
    cls = getattr(transformers, arch)
    with torch.device("meta"):
        model = cls._from_config(config)
    out = []
    for name, param in model.named_parameters():
        out.append((name, dtype, list(param.shape)))
    for name, buf in model.named_buffers():
        if name in model.state_dict() and not name.endswith(("inv_freq", "position_ids")):
            out.append((name, dtype, list(buf.shape)))
    return out


def write_sparse_safetensors(
    folder: Path,
    tensors: list[tuple[str, str, list[int]]],
    shards: int = 1,
    metadata: dict[str, str] | None = None,
) -> list[Path]:
    """Write `tensors` over `shards` files (with an index when more than one)."""
    folder.mkdir(parents=True, exist_ok=True)
    per = -(-len(tensors) // shards)
    paths: list[Path] = []
    weight_map: dict[str, str] = {}
    total = 0
    for i in range(shards):
        chunk = tensors[i * per : (i + 1) * per]
        name = (
            "model.safetensors" if shards == 1 else f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        )
        header: dict[str, Any] = {"__metadata__": metadata or {"format": "pt"}}
        offset = 0
        for tname, dtype, shape in chunk:
            n = DTYPE_BYTES[dtype]
            for d in shape:
                n *= d
            header[tname] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[tname] = name
        raw = json.dumps(header, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)
        path = folder / name
        with path.open("wb") as handle:
            handle.write(struct.pack("<Q", len(raw)) + raw)
            handle.truncate(8 + len(raw) + offset)  # a hole: no disk for the body
        total += offset
        paths.append(path)
    if shards > 1:
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    return paths
