"""`capaug quickstart`: `capaug run` on the built-in digits, offline, with the quickstart recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import SetOption, recipe_with

QUICKSTART_ARMS = ("downstream.tune=true", "downstream.arms=[real, reweight, oversample]")


def quickstart(
    run: Path = typer.Option(Path("runs/quickstart"), "--run", help="Run folder (rerun to resume)."),
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Train CM on builtin:digits-lt, synthesize to balance, compare the classifier arms (about 10 min on 2 CPU cores)."""
    from capaug.augment.builtin import DIGITS_LT

    from .run_cmd import run_all

    # the synthetic arm is `tuned` (chosen on val from the recipe's small tune_grid); --set still overrides
    run_all(DIGITS_LT, run, recipe_with("quickstart", [*QUICKSTART_ARMS, *(sets or [])]), origin="quickstart",
            title="capaug quickstart")


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
