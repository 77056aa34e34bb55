"""Safetensors files with real headers and sparse bodies, for a local hub that costs no disk.

`meta_tensors(config)` builds the architecture with the installed transformers on the meta
device (no memory) and returns its real tensor names, dtypes and shapes, as a checkpoint saved
by that transformers would list them (tied weights once). `write_sparse_safetensors` writes
shards whose header is real and whose body is a hole (`truncate`), so a 16 GB checkpoint takes
a few kB of disk.

Building the architectures costs the test run an import of transformers and seconds a model, so
the fast loop reads the lists `meta_tensors` gives from tests/fixtures/derive-tensors/ (written by
`python -m tests.derive.headers`, which names the transformers that built them);
tests/derive/test_recorded_tensors.py (slow) rebuilds every list with the installed transformers
and holds the recorded ones to it.
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


RECORDED = Path(__file__).resolve().parent.parent / "fixtures" / "derive-tensors"


def recorded_tensors(name: str) -> list[tuple[str, str, list[int]]]:
    """`meta_tensors` of the config `name` (a folder of tests/fixtures/hub-configs, or a key of
    `record_sources`), as recorded in tests/fixtures/derive-tensors/NAME.json."""
    doc = json.loads((RECORDED / f"{name}.json").read_text(encoding="utf-8"))
    return [(t_name, dtype, list(shape)) for t_name, dtype, shape in doc["tensors"]]


def record_sources(work: Path) -> dict[str, Path]:
    """Recorded name -> a folder holding the config.json it was built from: every model the
    derive hub serves, and InternVL2-1B's language model (its `llm_config`)."""
    from tests.derive.conftest import FIXTURES, MODELS

    out = {name: FIXTURES / name for name in MODELS}
    llm = work / "internvl-llm"
    llm.mkdir(parents=True, exist_ok=True)
    config = json.loads((FIXTURES / "OpenGVLab--InternVL2-1B" / "config.json").read_text())
    (llm / "config.json").write_text(json.dumps(config["llm_config"]))
    out["OpenGVLab--InternVL2-1B.llm_config"] = llm
    return out


def record(work: Path) -> list[Path]:
    """Rewrite tests/fixtures/derive-tensors/ from the installed transformers."""
    import transformers

    written = []
    RECORDED.mkdir(parents=True, exist_ok=True)
    for name, folder in record_sources(work).items():
        doc = {
            "source": f"tests/derive/headers.py meta_tensors of tests/fixtures/hub-configs/"
            f"{name.replace('.llm_config', ' (config.json llm_config)')} "
            f"(transformers {transformers.__version__}); "
            "refresh with `python -m tests.derive.headers`",
            "tensors": meta_tensors(folder),
        }
        path = RECORDED / f"{name}.json"
        tmp = path.with_suffix(".tmp")
        # one tensor a line, so a refresh reads as a diff of the tensors that changed
        lines = ",\n".join(json.dumps(t) for t in doc["tensors"])
        text = f'{{"source": {json.dumps(doc["source"])},\n"tensors": [\n{lines}\n]}}\n'
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
        written.append(path)
    return written


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


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        for path in record(Path(work)):
            print(path)
