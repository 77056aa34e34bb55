"""Safetensors headers: read with two Range reads at most, validated before anything trusts them.

A safetensors file starts with an 8-byte little-endian header length N, then N bytes of JSON:
`{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`. Like
huggingface_hub's `parse_safetensors_file_metadata`, the first read asks for the first 100 kB
(which holds the whole header of almost every file); only a longer header takes a second read.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from dataclasses import dataclass

from provision.errors import ProvisionError

FIRST_READ = 100_000  # bytes 0..FIRST_READ-1 (huggingface_hub reads the same)
MAX_HEADER = 25_000_000  # huggingface_hub's SAFETENSORS_MAX_HEADER_LENGTH
MAX_TENSORS = 1_000_000
# bits per element of each safetensors dtype (the format's own list)
DTYPE_BITS = {
    "F64": 64, "F32": 32, "F16": 16, "BF16": 16, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
    "I64": 64, "I32": 32, "I16": 16, "I8": 8, "U64": 64, "U32": 32, "U16": 16, "U8": 8,
    "BOOL": 8,
}  # fmt: skip


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BITS[self.dtype] // 8


# (first byte, last byte inclusive) -> (bytes, total file size or None)
RangeReader = Callable[[int, int], tuple[bytes, int | None]]


def read_header(read: RangeReader, where: str) -> dict:
    """The header JSON of one file, from at most two calls to `read`."""
    first, size = read(0, FIRST_READ - 1)
    if len(first) < 8:
        raise _bad(where, f"is {len(first)} bytes long, shorter than a safetensors header")
    (length,) = struct.unpack("<Q", first[:8])
    if length < 2 or length > MAX_HEADER:
        raise _bad(where, f"declares a {length}-byte header (allowed 2 to {MAX_HEADER})")
    if size is not None and 8 + length > size:
        raise _bad(where, f"declares a {length}-byte header in a {size}-byte file")
    body = first[8 : 8 + length]
    if len(body) < length:
        rest, _ = read(len(first), 8 + length - 1)
        body += rest
    if len(body) != length:
        raise _bad(where, f"sent {len(body)} header bytes, {length} declared")
    try:
        header = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(where, f"has a header that is not JSON ({exc})") from exc
    if not isinstance(header, dict):
        raise _bad(where, "has a header that is not a JSON object")
    header["__size__"] = size
    header["__header_length__"] = length
    return header


def tensors_of(header: dict, where: str) -> list[Tensor]:
    """The tensors a header lists, each checked (dtype known, shape and offsets consistent)."""
    size = header.get("__size__")
    length = header.get("__header_length__", 0)
    out: list[Tensor] = []
    end_max = 0
    names = [k for k in header if not k.startswith("__")]
    if len(names) > MAX_TENSORS:
        raise _bad(where, f"lists {len(names)} tensors (more than {MAX_TENSORS})")
    for name in names:
        entry = header[name]
        if not isinstance(entry, dict):
            raise _bad(where, f"tensor {name!r} is not an object")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_BITS:
            raise _bad(where, f"tensor {name!r} has an unknown dtype {dtype!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**40 for d in shape
        ):
            raise _bad(where, f"tensor {name!r} has a bad shape {shape!r}")
        tensor = Tensor(name, dtype, tuple(shape))
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
            or offsets[1] - offsets[0] != tensor.nbytes
        ):
            raise _bad(
                where, f"tensor {name!r} has data_offsets {offsets!r} that do not fit its shape"
            )
        end_max = max(end_max, offsets[1])
        out.append(tensor)
    if size is not None and 8 + length + end_max > size:
        raise _bad(
            where, f"has tensors ending at byte {8 + length + end_max}, past the file's {size}"
        )
    return out


def _bad(where: str, reason: str) -> ProvisionError:
    return ProvisionError(
        f"The safetensors file {where} {reason}.",
        "The file on the hub is not a valid safetensors file; try another source or revision.",
    )
