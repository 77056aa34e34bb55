"""`provision check` prints without rich (issue 17: rich loads only when something needs it):
provision/cli/plain.py lays out what rich would, and the check process never imports rich."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest
from rich.console import Console
from rich.table import Table as RichTable
from rich.text import Text

from provision.cli.plain import PlainConsole, Table, render_markup
from tests.cli_helpers import invoke, invoke_json

MARKUP = [
    "[bold]Qwen2.5-VL-7B-Instruct[/] — infer, bf16, stack vllm",
    "Verdict: [bold green]fits[/] — 1 x A100",
    "  [yellow]approximate:[/] image.tokens set to 0",
    "Data disk: [red]not enough room[/]",
    "plain [1, 2] text",
]


@pytest.mark.parametrize("text", MARKUP)
def test_markup_reads_as_rich_reads_it(text: str) -> None:
    """The visible text is rich's, tags it does not know ([cu124], [1, 2]) included."""
    assert render_markup(text, color=False) == Text.from_markup(text).plain


def test_text_in_brackets_that_is_no_style_is_kept() -> None:
    """rich drops `[cu124]` (an unknown tag); a variant name in a message must stay."""
    text = "torch 2.4.0 [cu124], see [or not]"
    assert render_markup(f"[bold]{text}[/]", color=False) == text


def test_color_only_on_a_terminal_or_when_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    assert render_markup("[bold red]no[/] ok", color=True) == ("\x1b[0m\x1b[1;31mno\x1b[0m ok")
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("FORCE_COLOR", "1")
    console = PlainConsole()
    console.stream = io.StringIO()
    console.print("[green]fits[/]")
    assert "\x1b[32m" in console.stream.getvalue()
    monkeypatch.setenv("NO_COLOR", "1")
    console = PlainConsole()
    console.stream = io.StringIO()
    console.print("[green]fits[/]")
    assert console.stream.getvalue() == "fits\n"


def test_table_is_laid_out_as_rich_lays_it_out() -> None:
    rows = [
        ("weights", "15.45", "bf16, 15.4 GiB in all"),
        ("kv cache", "1.75", "one request"),
        ("activations", "112.96", ""),
        ("[bold]total[/]", "[bold]130.16[/]", ""),
    ]
    ours = Table(["per GPU", "GiB", ""], right=[1])
    theirs = RichTable(show_header=True, header_style="bold", box=None, pad_edge=False)
    theirs.add_column("per GPU")
    theirs.add_column("GiB", justify="right")
    theirs.add_column("")
    for row in rows:
        ours.add_row(*row)
        theirs.add_row(*row)
    out = io.StringIO()
    Console(file=out, width=1000, color_system=None).print(theirs)
    expected = [line.rstrip() for line in out.getvalue().splitlines()]
    plain = PlainConsole()
    plain.stream, plain.color = io.StringIO(), False
    plain.print(ours)
    assert plain.stream.getvalue().splitlines() == expected


def test_a_check_imports_neither_rich_nor_json() -> None:
    code = (
        "import sys\n"
        "from provision.cli.main import main\n"
        "sys.argv = ['provision', 'check', 'qwen2.5-vl-7b', '--gpu', 'A100-80GB']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "print('HEAVY', [m for m in ('rich', 'json', 'torch') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert "Verdict: fits" in out and "HEAVY []" in out, out


def test_the_printed_check_carries_the_report() -> None:
    """The human view shows every component of the JSON report, with its GiB."""
    rc, report = invoke_json("check", "qwen2.5-vl-7b", "--gpu", "RTX 4090", "--task", "lora")
    proc = invoke("check", "qwen2.5-vl-7b", "--gpu", "RTX 4090", "--task", "lora")
    assert proc.returncode == rc
    lines = proc.stdout.splitlines()
    for comp in report["fit"]["estimate"]["components"]:
        gib = f"{comp['gib']:.2f}"
        assert any(line.startswith(comp["name"]) and f" {gib}" in line for line in lines), comp
    assert f"Verdict: {report['fit']['verdict']}" in proc.stdout
