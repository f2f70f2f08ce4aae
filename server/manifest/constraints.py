"""`constraints.requires` and `constraints.incompatible_with`: which experts must, or must not,
be served beside this one.

A requirement is an expert name, optionally with a version rule after `@` (hivellm's form):
`expert-sql`, `expert-sql@>=1.0.0`, `expert-sql@^1.2`, `expert-sql@~1.2.3`, `expert-sql@1.2.3`,
or several rules joined by `,` (`expert-sql@>=1.0.0,<2.0.0`). Versions compare by their
numeric dotted core (`1.2.3-rc1` compares as 1.2.3 and below it).

`check_constraints` takes the experts that are (or, for `expert validate`, would be) loaded
before this one, by name and version, and returns a fate for each field plus the reasons the
expert cannot be served: an unmet requirement, or an incompatible expert that is loaded.
The same function runs at start-up, on reload, in the folder watcher and in `validate`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from server.manifest.schema import Manifest

_RULE = re.compile(r"^\s*(>=|<=|==|!=|>|<|=|\^|~)?\s*v?(\d+(?:\.\d+)*)([-+][0-9A-Za-z.-]+)?\s*$")


@dataclass(frozen=True)
class Requirement:
    name: str
    rules: tuple[tuple[str, tuple[int, ...], bool], ...]  # (operator, version, pre-release)
    text: str

    def allows(self, version: str) -> bool:
        have = _version(version)
        if have is None:
            return not self.rules
        return all(_holds(op, have, want, pre) for op, want, pre in self.rules)


@dataclass
class ConstraintReport:
    findings: dict[str, tuple[str, str]] = field(default_factory=dict)  # path -> (fate, detail)
    blockers: list[str] = field(default_factory=list)


def parse_requirement(text: str) -> Requirement:
    """A requirement string; ValueError naming what is wrong."""
    name, _, spec = text.partition("@")
    name = name.strip()
    if not name:
        raise ValueError(f"{text!r}: no expert name")
    rules = []
    if spec.strip():
        for part in spec.split(","):
            match = _RULE.match(part)
            if match is None:
                raise ValueError(f"{text!r}: {part.strip()!r} is not a version rule (e.g. '>=1.0.0')")
            op, version, suffix = match.groups()
            rules.append((op or "==", tuple(int(x) for x in version.split(".")), bool(suffix and suffix[0] == "-")))
    return Requirement(name, tuple(rules), text)


def _version(text: str) -> tuple[tuple[int, ...], bool] | None:
    match = _RULE.match(text)
    if match is None or match.group(1):
        return None
    return tuple(int(x) for x in match.group(2).split(".")), bool(match.group(3) and match.group(3)[0] == "-")


def _cmp(a: tuple[tuple[int, ...], bool], b: tuple[tuple[int, ...], bool]) -> int:
    width = max(len(a[0]), len(b[0]))
    x, y = a[0] + (0,) * (width - len(a[0])), b[0] + (0,) * (width - len(b[0]))
    if x != y:
        return -1 if x < y else 1
    if a[1] != b[1]:  # a pre-release comes before its release
        return -1 if a[1] else 1
    return 0


def _holds(op: str, have: tuple[tuple[int, ...], bool], want: tuple[int, ...], pre: bool) -> bool:
    c = _cmp(have, (want, pre))
    if op in ("==", "="):
        return c == 0
    if op == "!=":
        return c != 0
    if op == ">=":
        return c >= 0
    if op == ">":
        return c > 0
    if op == "<=":
        return c <= 0
    if op == "<":
        return c < 0
    # ^ keeps the first non-zero part, ~ keeps major.minor (major alone when only it is given)
    if c < 0:
        return False
    nums = have[0]
    if op == "^":
        lead = next((i for i, v in enumerate(want) if v != 0), len(want) - 1)
        return tuple(nums[: lead + 1]) == tuple(want[: lead + 1])
    keep = 2 if len(want) >= 2 else 1
    return tuple(nums[:keep]) == tuple(want[:keep])


def check_constraints(m: Manifest, loaded: Mapping[str, str] | None, *, context: str) -> ConstraintReport:
    """Fates of `constraints.requires` / `incompatible_with` against `loaded` (name -> version
    of the experts loaded before this one); `context` says what `loaded` is, for the details.
    `loaded=None`: nothing to compare with (the fields are checked for form only)."""
    report = ConstraintReport()
    c = m.constraints
    if c is None:
        return report
    if c.requires:
        unmet, bad = [], []
        for text in c.requires:
            try:
                req = parse_requirement(text)
            except ValueError as exc:
                bad.append(str(exc))
                continue
            if loaded is None:
                continue
            have = loaded.get(req.name)
            if have is None:
                unmet.append(f"{req.name!r} is not loaded ({context})")
            elif not req.allows(have):
                unmet.append(f"{req.name!r} is version {have}, which does not satisfy {text!r}")
        if bad or unmet:
            detail = "; ".join(bad + unmet)
            report.findings["constraints.requires"] = ("refused", detail + ": the expert is not servable")
            report.blockers.append(f"constraints.requires: {detail}")
        elif loaded is None:
            report.findings["constraints.requires"] = (
                "checked",
                "well-formed; checked against the loaded experts at load",
            )
        else:
            report.findings["constraints.requires"] = ("applied", f"every required expert is loaded ({context})")
    if c.incompatible_with:
        if loaded is None:
            report.findings["constraints.incompatible_with"] = ("checked", "checked against the loaded experts at load")
        else:
            clash = [n for n in c.incompatible_with if n in loaded]
            if clash:
                detail = f"{', '.join(map(repr, clash))} loaded ({context})"
                report.findings["constraints.incompatible_with"] = ("refused", detail + ": the expert is not servable")
                report.blockers.append(f"constraints.incompatible_with: {detail}")
            else:
                report.findings["constraints.incompatible_with"] = ("applied", f"none of them is loaded ({context})")
    return report
