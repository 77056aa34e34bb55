"""The README and docs/ as a newcomer meets them: short, complete, and with no link that leads
nowhere. (The generated pages are held to the code by tests/test_reference.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
# One page per stage or command, plus the reference pages (issue 15), plus the pages other work
# streams wrote (once linked from the index before they landed; all there now, so held the same).
PAGES = [
    "index", "fit", "lock", "weights", "fixes", "smoke", "setup", "docker", "directions",
    "calibration", "measured", "configuration", "cli",
    "reliability", "testing", "fit-engines", "any-model", "lock-contract", "speed", "cluster",
]  # fmt: skip
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _markdown() -> list[Path]:
    return [REPO / "README.md", *sorted(DOCS.glob("*.md"))]


def _anchors(text: str) -> set[str]:
    """The anchors GitHub makes for a page's headings (lower case, punctuation dropped)."""
    found = set()
    for heading in re.findall(r"^#+ (.+)$", text, re.M):
        kept = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
        found.add(kept.replace(" ", "-"))
    return found


def test_the_readme_stays_short():
    assert len((REPO / "README.md").read_bytes()) < 15000


@pytest.mark.parametrize("page", PAGES)
def test_each_page_is_there_with_a_title(page):
    text = (DOCS / f"{page}.md").read_text(encoding="utf-8")
    assert re.search(r"^# \S", text, re.M), f"docs/{page}.md has no title"


def test_every_relative_link_and_anchor_leads_somewhere():
    broken = []
    for source in _markdown():
        text = source.read_text(encoding="utf-8")
        for target in LINK.findall(text):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            dest = (source.parent / path).resolve() if path else source
            if not dest.exists():
                broken.append(f"{source.relative_to(REPO)}: {target}")
            elif (
                anchor
                and dest.suffix == ".md"
                and anchor not in _anchors(dest.read_text(encoding="utf-8"))
            ):
                broken.append(f"{source.relative_to(REPO)}: {target} (no such heading)")
    assert not broken, broken


def test_the_index_and_the_readme_link_every_page():
    index = (DOCS / "index.md").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name in (p for p in PAGES if p != "index"):
        assert f"({name}.md" in index, f"docs/index.md does not link {name}.md"
        assert f"(docs/{name}.md" in readme, f"README.md does not link docs/{name}.md"


def test_the_readme_test_command_is_the_one_ci_runs():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    command = re.search(r"^\S.*python -m pytest.*$", ci, re.M)
    assert command is not None
    assert command.group(0) in readme.splitlines(), "the README's test line is not .ci/run's"
