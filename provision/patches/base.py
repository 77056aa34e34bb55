"""What a library fix is, and how its change is found, made and undone in the file's text.

A fix never trusts line numbers: it finds a region by a pattern (e.g. one function's body),
recognises the code there as one of the forms it was written against (checked against the real
released files), and swaps exactly one statement. The patched statement carries a marker comment,
so provision can tell its own edit from a hand edit and undo it even without the backup.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

ORIGINAL = "original"  # a known form, not patched
PATCHED = "patched"  # a known form with provision's edit in place
UNKNOWN = "unknown"  # the region is there but matches no known form
ABSENT = "absent"  # the region the fix changes is not in the file at all


@dataclass(frozen=True)
class Form:
    """One shape of the code across releases: the statements that must (and must not) be there.

    Anchors are compared with all whitespace removed, so a reformatted line still matches.
    """

    name: str
    seen_in: str  # the released versions whose files were read to write this form
    anchors: tuple[str, ...]
    absent: tuple[str, ...] = ()

    def matches(self, squeezed_region: str) -> bool:
        return all(_squeeze(a) in squeezed_region for a in self.anchors) and not any(
            _squeeze(a) in squeezed_region for a in self.absent
        )

    def missing(self, squeezed_region: str) -> list[str]:
        return [a for a in self.anchors if _squeeze(a) not in squeezed_region]


@dataclass(frozen=True)
class Detection:
    state: str  # ORIGINAL, PATCHED, UNKNOWN or ABSENT
    form: str | None = None
    problems: tuple[str, ...] = ()  # what did not match, for the refusal message


@dataclass(frozen=True)
class Fix:
    """A known library bug and its fix, as data the engine applies.

    `file` is relative to the directory holding the package (site-packages). The region starts at
    the line matching `region_start` and ends before the next line indented no deeper than it.
    `original` is the one statement replaced by `patched` (both without indentation).
    """

    id: str
    package: str
    title: str
    upstream: str
    applies: str  # a PEP 440 specifier: the versions that have the bug
    not_applicable: tuple[tuple[str, str], ...]  # (specifier, reason) for versions without it
    file: str
    region_start: str
    region_name: str  # how messages name the region, e.g. "GenerationMixin._group_beam_search"
    forms: tuple[Form, ...]
    original: str
    patched: str
    check_script: str = ""  # run by the env's Python; prints JSON with "ok" (see engine.verify)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def marker(self) -> str:
        return f"# provision: {self.id}"

    @property
    def patched_line(self) -> str:
        return f"{self.patched}  {self.marker}"

    def applies_to(self, version: str) -> tuple[bool, str]:
        """(True, "") when `version` has the bug, else (False, why not)."""
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version

        try:
            parsed = Version(version)
        except InvalidVersion:
            return False, f"{self.package} version {version!r} is not a valid version"
        if SpecifierSet(self.applies).contains(parsed, prereleases=True):
            return True, ""
        for spec, reason in self.not_applicable:
            if SpecifierSet(spec).contains(parsed, prereleases=True):
                return False, reason
        return False, f"{self.package} {version} is outside {self.applies}, where the bug is"

    # --- text ------------------------------------------------------------------------------

    def region(self, text: str) -> tuple[int, int] | None:
        """Character span of the region in `text`, or None when it is not there."""
        start = re.search(self.region_start, text, flags=re.MULTILINE)
        if not start:
            return None
        line_start = text.rfind("\n", 0, start.start()) + 1
        indent = len(text[line_start:]) - len(text[line_start:].lstrip(" \t"))
        # the region ends at the next non-blank line indented no deeper than its first line
        end_pattern = re.compile(rf"^[ \t]{{0,{indent}}}(?=\S)", flags=re.MULTILINE)
        after_header = text.find("\n", start.end())
        nxt = end_pattern.search(text, after_header + 1 if after_header >= 0 else len(text))
        # decorators, closing parentheses of a long signature: skip lines that only close/open
        while nxt and text[nxt.end() :].startswith((")", "]", "}")):
            nxt = end_pattern.search(text, text.find("\n", nxt.end()) + 1)
        return line_start, (nxt.start() if nxt else len(text))

    def _lines(self, region: str, wanted: str) -> list[re.Match[str]]:
        pattern = rf"^([ \t]*){re.escape(wanted)}[ \t]*(\r?\n|$)"
        return list(re.finditer(pattern, region, flags=re.MULTILINE))

    def detect(self, text: str) -> Detection:
        span = self.region(text)
        if span is None:
            return Detection(ABSENT, problems=(f"{self.region_name} is not in the file",))
        region = text[span[0] : span[1]]
        squeezed = _squeeze(region)
        form = next((f for f in self.forms if f.matches(squeezed)), None)
        originals = self._lines(region, self.original)
        patched = self._lines(region, self.patched_line)
        problems: list[str] = []
        if form is None:
            closest = min(self.forms, key=lambda f: len(f.missing(squeezed)))
            missing = closest.missing(squeezed)
            if missing:
                problems.append("missing " + "; ".join(f"`{m}`" for m in missing))
            else:
                problems.append(f"code of a later release ({', '.join(closest.absent)})")
        if len(originals) + len(patched) != 1:
            hand = [ln for ln in region.splitlines() if ln.strip().startswith(self.patched)]
            if hand and not patched:
                problems.append(f"`{hand[0].strip()}` is there without provision's marker")
            problems.append(
                f"expected exactly one `{self.original}` statement, found "
                f"{len(originals)} (and {len(patched)} patched)"
            )
        if problems:
            return Detection(UNKNOWN, form.name if form else None, tuple(problems))
        assert form is not None
        return Detection(PATCHED if patched else ORIGINAL, form.name)

    def apply_text(self, text: str) -> str:
        """The text with the statement replaced; the caller has checked detect() == ORIGINAL."""
        return self._swap(text, self.original, self.patched_line)

    def revert_text(self, text: str) -> str:
        """The text with provision's statement put back (indentation and line end kept)."""
        return self._swap(text, self.patched_line, self.original)

    def _swap(self, text: str, old: str, new: str) -> str:
        span = self.region(text)
        if span is None:
            raise ValueError(f"{self.region_name} not found")
        region = text[span[0] : span[1]]
        found = self._lines(region, old)
        if len(found) != 1:
            raise ValueError(f"expected one `{old}`, found {len(found)}")
        hit = found[0]
        replaced = region[: hit.start()] + hit.group(1) + new + hit.group(2) + region[hit.end() :]
        return text[: span[0]] + replaced + text[span[1] :]


def _squeeze(code: str) -> str:
    return re.sub(r"\s+", "", code)
