"""`provision gpus`: the GPU catalogue that planning targets (--gpu NAME) are matched against."""

from __future__ import annotations

from typing import Any

import typer

from provision.cli.options import JsonFlag
from provision.cli.output import emit


def gpus(json_output: JsonFlag = False) -> None:
    """List the GPU catalogue: names as NVML reports them, memory, compute capability, aliases."""
    from provision.hardware.catalogue import catalogue

    rows = [
        {
            "name": g.name,
            "memory_mib": g.memory_mib,
            "compute_capability": None
            if g.compute_capability is None
            else f"{g.compute_capability[0]}.{g.compute_capability[1]}",
            "aliases": list(g.aliases),
            "source": g.source,
        }
        for g in catalogue()
    ]

    def render(con: Any) -> None:
        from rich.table import Table

        table = Table(title="GPU catalogue (use a name or alias with --gpu)")
        for col in ("NVML name", "memory", "CC", "aliases"):
            table.add_column(col)
        for row in rows:
            table.add_row(
                row["name"],
                f"{row['memory_mib']} MiB",
                row["compute_capability"] or "?",
                ", ".join(row["aliases"]),
            )
        con.print(table)

    emit(rows, render, json_output)


def register(app: typer.Typer) -> None:
    app.command("gpus", help="List the GPU catalogue used by --gpu.")(gpus)
