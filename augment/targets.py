"""Synthesis target policies -> a per-class plan (class, real, target, to generate).

Policies (DESIGN.md, Synthesis): `balanced` (every class up to the largest class), `balanced:N` (every class up
to N), `ratio:R` (every class up to at least max/R), or a YAML/JSON file mapping class -> target count (classes
it leaves out keep their real count). A class already at or above its target gets 0 images, never fewer.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from .errors import CapaugError


@dataclass(frozen=True)
class ClassPlan:
    name: str
    label: int
    real: int
    target: int

    @property
    def generate(self) -> int:
        return max(0, self.target - self.real)

    def to_dict(self) -> dict:
        return {**asdict(self), "generate": self.generate}


def plan_targets(classes: list[str], real_counts: list[int], policy: str) -> list[ClassPlan]:
    """Apply `policy` to the real training counts; raises CapaugError on a malformed policy."""
    if len(classes) != len(real_counts):
        raise ValueError("one real count per class is needed")
    targets = _targets(classes, real_counts, policy.strip())
    return [
        ClassPlan(name, label, real, max(real, target))
        for label, (name, real, target) in enumerate(zip(classes, real_counts, targets))
    ]


def _targets(classes: list[str], real: list[int], policy: str) -> list[int]:
    kind, _, arg = policy.partition(":")
    if kind == "balanced" and not arg:
        return [max(real)] * len(real)
    if kind == "balanced":
        n = _number(arg, int, policy)
        if n < 1:
            raise CapaugError(f"target {policy!r}: N must be at least 1")
        return [n] * len(real)
    if kind == "ratio":
        r = _number(arg, float, policy)
        if not (math.isfinite(r) and r >= 1):
            raise CapaugError(f"target {policy!r}: the ratio max/min must be a finite number of at least 1")
        return [math.ceil(max(real) / r)] * len(real)
    if Path(policy).suffix.lower() in (".yaml", ".yml", ".json"):
        return _from_file(Path(policy), classes, real)
    raise CapaugError(f"unknown target {policy!r}; use balanced, balanced:N, ratio:R or a .yaml/.json file")


def _number(text: str, kind, policy: str):
    try:
        return kind(text)
    except ValueError:
        raise CapaugError(f"target {policy!r}: {text!r} is not a {'whole ' if kind is int else ''}number") from None


def _from_file(path: Path, classes: list[str], real: list[int]) -> list[int]:
    if not path.is_file():
        raise CapaugError(f"target file {path} does not exist")
    try:
        text = path.read_text()
        mapping = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        raise CapaugError(f"target file {path} is unreadable: {str(e).splitlines()[0]}") from None
    if not isinstance(mapping, dict):
        raise CapaugError(f"target file {path} must map class names to target counts")
    mapping = {str(k): v for k, v in mapping.items()}
    unknown = sorted(set(mapping) - set(classes))
    if unknown:
        raise CapaugError(f"target file {path} names unknown classes: {', '.join(unknown)}")
    for name, count in mapping.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise CapaugError(f"target file {path}: class {name!r} needs a whole number >= 0, got {count!r}")
    return [mapping.get(name, n) for name, n in zip(classes, real)]
