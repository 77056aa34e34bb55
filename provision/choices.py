"""The fixed choices a user names: tasks, quantisations, attention kernels, stacks.

One home for them, imported by the memory model, the profiles and the CLI alike (so neither
imports the other for a list). Stacks are data (provision/data/stacks.toml); the rest are the
tuples below, also offered to the CLI as enums so a typo fails with the list.
"""

from __future__ import annotations

from enum import Enum
from functools import cache
from typing import Any

from provision.resources import load_table

TASKS = ("infer", "lora", "qlora", "full")
# Bytes per parameter of the dtypes a profile may store its weights in.
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
QUANTS = ("bf16", "fp16", "fp8", "int8", "int4")
ATTENTION = ("sdpa", "flash_attention_2", "eager")
TRAIN_VISION = ("frozen", "lora", "full")  # --train-vision: what training does to the vision tower


@cache
def stacks() -> dict[str, dict[str, Any]]:
    """The stack table: name -> what the memory model and smoke test need to know about it."""
    return load_table("stacks.toml")["stack"]


def _enum(name: str, values: tuple[str, ...] | list[str]) -> type[Enum]:
    """A str enum whose members are `values` (typer shows them, and rejects anything else)."""
    return Enum(name, {value: value for value in values}, type=str)  # type: ignore[return-value]


Task = _enum("Task", TASKS)
Quant = _enum("Quant", QUANTS)
Attention = _enum("Attention", ATTENTION)
TrainVision = _enum("TrainVision", TRAIN_VISION)
Stack = _enum("Stack", sorted(stacks()))


def value(choice: Enum | str | None) -> str | None:
    """The plain string of an enum member (or a string, or None) for the library's functions."""
    return choice.value if isinstance(choice, Enum) else choice
