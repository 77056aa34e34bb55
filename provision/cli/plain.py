"""A console for commands people run often (`provision check`): the few rich markup tags their
output uses (bold and colours), and a borderless table, without importing rich.

rich costs 150-400 ms to import on the shared 2-core machine (rich.console, rich.table, its emoji
and style tables), more than the whole check; issue 17 asks that it load only when needed. Output
goes through `PlainConsole.print` with the same markup as rich's (`[bold]x[/]`,
`[bold green]fits[/]`): on a terminal the tags become ANSI colours (unless NO_COLOR is set or
TERM is dumb), elsewhere they are dropped, as rich does when the output is piped. A tag that is
not a known style stays as it is (`[cu124]` is text).
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Sequence
from typing import Any, TextIO

# rich style words -> SGR codes (the subset the plain commands use).
SGR = {
    "bold": "1",
    "dim": "2",
    "italic": "3",
    "underline": "4",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "blue": "34",
    "magenta": "35",
    "cyan": "36",
}
# What rich takes for a tag (rich.markup.RE_TAGS), with the backslashes before it.
_TAG = re.compile(r"(\\*)\[([a-z#/@][^\[]*?)\]")
_ESCAPE = re.compile(r"(\\*)(\[[a-z#/@][^\[]*?])")


def escape(text: str) -> str:
    """`text` with every tag-like bracket escaped, as rich.markup.escape does (a trailing
    backslash needs no escape here: nothing follows it)."""
    return _ESCAPE.sub(lambda m: f"{m.group(1)}{m.group(1)}\\{m.group(2)}", text)


def _style_codes(words: str) -> str | None:
    parts = words.split()
    if not parts or any(p not in SGR for p in parts):
        return None
    return ";".join(SGR[p] for p in parts)


def render_markup(text: str, color: bool) -> str:
    """`text` with its known style tags turned into ANSI codes (`color`) or removed; an escaped
    tag (`\\[bold]`, see `escape`) is text."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for match in _TAG.finditer(text):
        slashes, inner = match.group(1), match.group(2)
        out.append(text[pos : match.start()])
        pos = match.end()
        out.append(slashes[: len(slashes) // 2])
        bracket = f"[{inner}]"
        if len(slashes) % 2:  # escaped: the bracket is text
            out.append(bracket)
            continue
        closing = inner.startswith("/")
        words = inner[1:] if closing else inner
        codes = _style_codes(words) if words else None
        if closing and (codes is not None or not words):
            if stack:
                stack.pop()
        elif not closing and codes is not None:
            stack.append(codes)
        else:
            out.append(bracket)  # not a style: text (rich would drop it)
            continue
        if color:
            out.append("\x1b[0m" + "".join(f"\x1b[{c}m" for c in stack))
    out.append(text[pos:])
    if color and stack:
        out.append("\x1b[0m")
    return "".join(out)


def visible(text: str) -> str:
    """What `text` shows, markup removed (for widths)."""
    return render_markup(text, color=False)


def wants_color(stream: TextIO) -> bool:
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PlainConsole:
    """The part of rich's Console that the plain commands call: print(text)."""

    def __init__(self, stderr: bool = False) -> None:
        self.stream = sys.stderr if stderr else sys.stdout
        self.color = wants_color(self.stream)

    def print(self, text: Any = "", *, markup: bool = True, **_ignored: Any) -> None:
        if isinstance(text, Table):
            lines = text.lines()
            body = "\n".join(render_markup(line, self.color) for line in lines)
        else:
            body = render_markup(str(text), self.color) if markup else str(text)
        self.stream.write(body + "\n")


class Table:
    """A borderless table laid out as rich lays out `Table(box=None, pad_edge=False)`: columns
    two spaces apart, each as wide as its widest cell, justified left or right."""

    def __init__(self, headers: Sequence[str], right: Sequence[int] = ()) -> None:
        self.headers = list(headers)
        self.right = set(right)
        self.rows: list[list[str]] = []

    def add_row(self, *cells: str) -> None:
        self.rows.append(list(cells))

    def lines(self) -> list[str]:
        rows = [[f"[bold]{h}[/]" if h else "" for h in self.headers], *self.rows]
        widths = [max(len(visible(r[i])) for r in rows) for i in range(len(self.headers))]
        out = []
        for row in rows:
            cells = []
            for i, cell in enumerate(row):
                pad = " " * (widths[i] - len(visible(cell)))
                cells.append(pad + cell if i in self.right else cell + pad)
            out.append("  ".join(cells).rstrip())
        return out
