"""`--tune`: choose a synthetic setting on the val split only, at a cost a user accepts.

Cost: each grid setting trains seeds 0..k-1 only (k = `DownstreamConfig.tune_seeds`, default 2, at most the
run's seeds n) and is scored by the mean over them of its models' best val balanced accuracy. The chosen setting
then trains seeds k..n-1, reuses its first k models, and becomes the arm `tuned`; only its models read the test
split. A grid of G settings costs G x k + n - k models instead of G x n. (Successive halving would cut more but
drops settings on one seed's val noise; a fixed k keeps the choice to one rule.) A setting that is also a listed
arm trains every seed as that arm and `tuned` shares its models.

Synthesis settings (`DownstreamConfig.tune_sets`): each entry `SOURCE[@STRENGTH[+STRENGTH...]]` (`noise`,
`minority@0.5`, `majority@0.3+0.6`) is a synthetic set made once from the run's model `RUN/diffusion/model`
into `RUN/synthetic-<name>/` (`synthetic-majority-0.3-0.6`) with the recipe's synthesis settings plus `source`
and `strength`; `synthesize` resumes, so a later run reuses it. The grid then crosses every set with every
grid setting on `synthetic` (`minority@0.5:synthetic+la`); settings on a `--compare` set stay as they are.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional, get_args

import numpy as np
from pydantic import ValidationError

from capaug.augment.config import DownstreamConfig, SynthesisConfig
from capaug.augment.errors import CapaugError

from .arm_plan import PreparedArm
from .arms import ArmSpec
from .metrics import spread

SET_SYNTAX = "SOURCE[@STRENGTH[+STRENGTH...]], e.g. noise, minority@0.5, majority@0.3+0.6"
SELECTOR = "highest mean over {seeds} of each model's best val balanced accuracy; ties: grid order"


def tune_seed_count(cfg: DownstreamConfig, seeds: int) -> int:
    """The seeds the grid is scored on: `cfg.tune_seeds`, at most `seeds` (None: all)."""
    return min(cfg.tune_seeds or seeds, seeds)


def planned_count(reported: list[str], grid: list[str], seeds: int, tune_seeds: int) -> int:
    """Models a run trains: every listed arm on every seed, every other grid setting on the tune seeds, and the
    chosen setting's remaining seeds. Exact, except when the grid holds listed arms and others: if the choice
    falls on a listed arm, `tuned` shares its models and `seeds - tune_seeds` fewer are trained."""
    extra = [name for name in grid if name not in reported]
    return len(reported) * seeds + len(extra) * tune_seeds + (seeds - tune_seeds if extra else 0)


# ------------------------------------------------------------------ synthesis settings


@dataclass(frozen=True)
class TuneSet:
    """One synthesis setting of `tune_sets`: a source and its strengths (empty: the recipe's
    `synthesize.strength`; images mix several strengths by index, `SynthesisConfig.strength`)."""

    source: str
    strength: tuple[float, ...] = ()

    @property
    def name(self) -> str:
        """Canonical: `minority@0.5`, `majority@0.3+0.6`, `noise`."""
        return self.source + ("@" + "+".join(f"{s:g}" for s in self.strength) if self.strength else "")

    @property
    def folder(self) -> str:
        """`synthetic-minority-0.5`: the set's folder in the run, filesystem-safe."""
        return "synthetic-" + re.sub(r"[^\w.]+", "-", self.name)

    def config(self, base: SynthesisConfig) -> SynthesisConfig:
        """`base` (the recipe's synthesis settings) with this source and strengths."""
        update = {"source": self.source, **({"strength": list(self.strength)} if self.strength else {})}
        try:
            return SynthesisConfig(**{**base.model_dump(), **update})
        except ValidationError as e:
            problem = e.errors()[0]
            raise CapaugError(f"tune set {self.name!r}: {problem['msg']}") from None


def parse_tune_sets(entries: list[str]) -> list[TuneSet]:
    """`tune_sets` entries -> unique `TuneSet`s in order; a `CapaugError` naming a bad entry."""
    sets: dict[str, TuneSet] = {}
    for entry in entries:
        sources = get_args(SynthesisConfig.model_fields["source"].annotation)
        text = entry.strip().replace(" ", "")
        source, at, strengths = text.partition("@")
        if source not in sources:
            raise CapaugError(f"tune set {entry!r}: unknown source {source!r}; choose from {', '.join(sources)} "
                              f"({SET_SYNTAX})")
        try:
            values = tuple(float(s) for s in strengths.split("+")) if at else ()
        except ValueError:
            raise CapaugError(f"tune set {entry!r}: strengths must be numbers joined by + ({SET_SYNTAX})") from None
        if at and source == "noise":
            raise CapaugError(f"tune set {entry!r}: noise starts from pure noise and takes no strength")
        if not all(0 < v <= 1 for v in values):
            raise CapaugError(f"tune set {entry!r}: each strength lies in (0, 1]")
        tune_set = TuneSet(source, values)
        sets.setdefault(tune_set.name, tune_set)
    return list(sets.values())


def grid_members(grid: list[ArmSpec], sets: list[TuneSet]) -> dict[str, ArmSpec]:
    """Grid name -> spec. With `sets`, each setting on `synthetic` becomes one per set (set by set), named
    `SET:SETTING`, its base the set's name (the key of its synthetic folder); settings on other sets follow."""
    if not sets:
        return {spec.name: spec for spec in grid}
    members = {f"{tune_set.name}:{spec.name}": replace(spec, base=tune_set.name)
               for tune_set in sets for spec in grid if spec.base == "synthetic"}
    return {**members, **{spec.name: spec for spec in grid if spec.base != "synthetic"}}


def make_sets(run_dir: Path, sets: list[TuneSet], synth_cfg: SynthesisConfig, split,
              on_synthesis: Optional[Callable[[str, int, int], None]] = None, label_classifier=None) -> dict[str, Path]:
    """Make (or complete, or reuse) each set from `RUN/diffusion/model`; set name -> its folder. With
    `label_classifier` (the reference classifier) each set's plan.json reports its label fidelity per class."""
    from capaug.augment.synthesize import synthesize

    folders = {}
    for tune_set in sets:
        out = run_dir / tune_set.folder
        progress = (lambda name, done, total, prefix=tune_set.name: on_synthesis(f"{prefix} {name}", done, total)
                    ) if on_synthesis else None
        synthesize(run_dir / "diffusion" / "model", out, tune_set.config(synth_cfg), split=split,
                   label_classifier=label_classifier, on_progress=progress)
        folders[tune_set.name] = out
    return folders


@dataclass
class NamedArm(PreparedArm):
    """A prepared grid member named `SET:SETTING` (its spec's base is the set)."""

    label: str = ""

    @property
    def name(self) -> str:
        return self.label


# ------------------------------------------------------------------ the record


def tuning_record(scores: dict[str, list[float]], chosen: str, grid: dict[str, ArmSpec], tune_seeds: int,
                  seeds: int, sets: list[TuneSet], folders: dict[str, Path]) -> dict:
    """`metrics.json`'s `tuning` (schema: README_metrics.md)."""
    set_names = {tune_set.name for tune_set in sets}

    def row(name: str, values: list[float]) -> dict:
        spec = grid[name]
        in_set = spec.base in set_names
        return {"spec": name, "set": spec.base if in_set else None,
                "setting": replace(spec, base="synthetic").name if in_set else spec.name,
                "val_balanced_accuracy": spread(values), "per_seed": values, "chosen": name == chosen}

    rows = [row(name, values) for name, values in scores.items()]
    chosen_row = next(r for r in rows if r["chosen"])
    scored = "seed 0" if tune_seeds == 1 else f"seeds 0..{tune_seeds - 1}"
    return {"metric": "val_balanced_accuracy", "chosen": chosen, "chosen_set": chosen_row["set"],
            "chosen_setting": chosen_row["setting"], "selector": SELECTOR.format(seeds=scored),
            "tune_seeds": tune_seeds, "seeds": seeds,
            "sets": [{"name": s.name, "source": s.source, "strength": list(s.strength) or None,
                      "folder": str(folders[s.name]), **set_diagnostics(folders[s.name])} for s in sets],
            "grid": rows}


def set_diagnostics(folder: Path) -> dict:
    """A set's label fidelity (share of its images the reference classifier assigns to the class they were made
    for) and its audit (distances to training and source images) per class, from its plan.json."""
    plan = json.loads((folder / "plan.json").read_text())
    fidelity = (plan.get("label_fidelity") or {}).get("classes") or {}
    return {"label_fidelity": {name: row["rate"] for name, row in fidelity.items()} or None,
            "audit": plan.get("audit")}


def best(scores: dict[str, list[float]]) -> str:
    """The grid name with the highest mean val score (the first on ties)."""
    means = {name: float(np.mean(values)) for name, values in scores.items()}
    return max(means, key=means.get)
