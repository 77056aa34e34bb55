"""When a direction's members cannot share one environment: who needs what, and a split.

From the pins alone (`disagreements`): a package two members need in ways no version meets
(transformers==4.47.1 against transformers==4.51.3, or against >=4.49). What only the resolver
sees (a dependency of a dependency) comes as uv's own explanation. Either way the members that
disagree are named and a split is suggested: groups, in the direction's order, that can share
an environment each (`suggest_split`, which asks the resolver about a group where pins cannot
tell).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from provision.errors import CheckFailed
from provision.lock.resolve import RequirementSet, canonical

# The key the direction's own `packages` go under beside the members' sets.
DIRECTION_PACKAGES = "(direction packages)"

# --- pins ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ask:
    member: str
    task: str
    requirement: str


@dataclass
class Disagreement:
    """One package two members (or one member's two tasks) need in ways no version satisfies."""

    package: str
    asks: list[Ask]

    @property
    def members(self) -> list[str]:
        return list(dict.fromkeys(a.member for a in self.asks))

    def text(self) -> str:
        # "transformers: tiny-a (infer, lora) needs transformers==4.51.3; tiny-c (infer) needs .."
        grouped: dict[tuple[str, str], list[str]] = {}
        for ask in self.asks:
            grouped.setdefault((ask.member, ask.requirement), []).append(ask.task)
        parts = [
            f"the direction's packages need {req}"
            if member == DIRECTION_PACKAGES
            else f"{member} ({', '.join(tasks)}) needs {req}"
            for (member, req), tasks in grouped.items()
        ]
        return f"{self.package}: " + "; ".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "package": self.package,
            "members": self.members,
            "asks": [a.__dict__ for a in self.asks],
            "text": self.text(),
        }


def _exact(requirement: Any) -> str | None:
    pins = [s.version for s in requirement.specifier if s.operator in ("==", "===")]
    return pins[0] if pins and "*" not in pins[0] else None


def _incompatible(a: Any, b: Any) -> bool:
    """Two requirements on one package that no version can meet (decided from pins alone)."""
    from packaging.version import InvalidVersion, Version

    if a.marker or b.marker:  # they may never apply together
        return False
    pin_a, pin_b = _exact(a), _exact(b)
    try:
        if pin_a and pin_b:
            return Version(pin_a) != Version(pin_b)
        if pin_a:
            return not b.specifier.contains(pin_a, prereleases=True)
        if pin_b:
            return not a.specifier.contains(pin_b, prereleases=True)
    except InvalidVersion:
        return pin_a != pin_b
    return False


def disagreements(sets: Mapping[str, Sequence[RequirementSet]]) -> list[Disagreement]:
    """Every package some members (or tasks) need in incompatible ways, from the pins alone."""
    from packaging.requirements import Requirement

    asks: dict[str, list[tuple[Ask, Any]]] = {}
    for member, member_sets in sets.items():
        for rset in member_sets:
            task = rset.label.rsplit("/", 1)[-1]
            for text in rset.requirements:
                req = Requirement(text)
                asks.setdefault(canonical(req.name), []).append((Ask(member, task, text), req))
    found = []
    for package, items in asks.items():
        involved: list[Ask] = []
        for i, (ask_a, req_a) in enumerate(items):
            for ask_b, req_b in items[i + 1 :]:
                if _incompatible(req_a, req_b):
                    for ask in (ask_a, ask_b):
                        if ask not in involved:
                            involved.append(ask)
        if involved:
            order = {ask: n for n, (ask, _) in enumerate(items)}
            found.append(Disagreement(package, sorted(involved, key=order.__getitem__)))
    return found


def member_pairs(found: Sequence[Disagreement]) -> set[frozenset[str]]:
    """Member pairs (a frozenset of one for a member whose own tasks disagree) that conflict."""
    from packaging.requirements import Requirement

    pairs: set[frozenset[str]] = set()
    for item in found:
        parsed = [(a, Requirement(a.requirement)) for a in item.asks]
        for i, (ask_a, req_a) in enumerate(parsed):
            for ask_b, req_b in parsed[i + 1 :]:
                if _incompatible(req_a, req_b):
                    pairs.add(frozenset((ask_a.member, ask_b.member)))
    return pairs


class DirectionConflict(CheckFailed):
    """The members cannot share one environment: who disagrees about what, and a split."""

    code = "conflict"

    def __init__(
        self,
        direction: str,
        found: list[Disagreement],
        pairs: set[frozenset[str]],
        split: Split,
        resolver_lines: list[str],
        notes: list[str],
    ) -> None:
        groups = split.groups
        self.direction = direction
        self.disagreements = found
        self.pairs = set(pairs)
        # The resolver's verdicts name pairs too, where the group turned down was one member.
        self.pairs |= {frozenset((m, g[0])) for m, g in split.refused if len(g) == 1}
        self.groups = groups
        self.refused = split.refused
        self.resolver_lines = resolver_lines
        self.notes = notes
        lines = [f"Direction {direction}: its members cannot share one environment."]
        lines += [f"  {d.text()}" for d in found]
        lines += [f"  {line}" for line in resolver_lines]
        alone = sorted(next(iter(p)) for p in self.pairs if len(p) == 1)
        both = sorted(
            " and ".join(sorted(p))
            for p in self.pairs
            if len(p) == 2 and DIRECTION_PACKAGES not in p
        )
        if both:
            lines.append("Members that disagree: " + "; ".join(both) + ".")
        against = sorted(
            m for p in self.pairs if DIRECTION_PACKAGES in p for m in p - {DIRECTION_PACKAGES}
        )
        if against:
            lines.append(
                f"The direction's own packages disagree with {', '.join(against)}: change "
                "`packages` in the direction file."
            )
        for member in alone:
            lines.append(f"{member}'s own tasks disagree: it cannot hold them all in one env.")
        for member, group in split.refused:
            if len(group) > 1:
                lines.append(
                    f"{member} cannot join [{', '.join(group)}]: the resolver finds no solution."
                )
        lines += notes
        if len(groups) > 1:
            shown = " and ".join("[" + ", ".join(g) + "]" for g in groups)
            lines.append(f"Suggested split: {shown} (each group can share one environment).")
        keep, rest = groups[0], [m for g in groups[1:] for m in g]
        hint = (
            f"Keep [{', '.join(keep)}] here (provision direction remove {direction} "
            f"{' '.join(rest)}) and make another direction for the rest, or change the pins "
            "in the members' profiles ([tasks.<task>] packages)."
            if rest
            else "Change the pins in the members' profiles ([tasks.<task>] packages), or give "
            "the member fewer tasks."
        )
        super().__init__("\n".join(lines), hint)

    def to_json(self) -> dict[str, Any]:
        return {
            "direction": self.direction,
            "disagreements": [d.to_json() for d in self.disagreements],
            "conflicting_members": sorted(sorted(p) for p in self.pairs),
            "refused": [{"member": m, "group": g} for m, g in self.refused],
            "suggested_split": self.groups,
            "resolver": self.resolver_lines,
            "notes": self.notes,
            "message": self.message,
            "hint": self.hint,
        }


@dataclass
class Split:
    """Groups that can share an environment each, and who the resolver kept out of which group."""

    groups: list[list[str]]
    refused: list[tuple[str, list[str]]]  # (member, the group it could not join)


def suggest_split(
    members: Sequence[str],
    pairs: set[frozenset[str]],
    can_share: Callable[[list[str]], bool | None],
) -> Split:
    """Greedy groups, in the direction's order: a member joins the first group it has no pin
    conflict with and that still resolves with it (`can_share`; None = could not tell)."""
    groups: list[list[str]] = []
    refused: list[tuple[str, list[str]]] = []
    pairs = {p for p in pairs if DIRECTION_PACKAGES not in p}  # every group keeps those
    for member in members:
        if frozenset((member,)) in pairs:
            groups.append([member])
            continue
        for group in groups:
            if any(frozenset((member, other)) in pairs for other in group):
                continue
            if frozenset((group[0],)) in pairs:
                continue
            verdict = can_share([*group, member])
            if verdict is not False:
                group.append(member)
                break
            refused.append((member, list(group)))
        else:
            groups.append([member])
    return Split(groups, refused)
