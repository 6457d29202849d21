"""`capaug quickstart`: the whole pipeline on the built-in digits, offline, with the quickstart recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import SetOption, console, recipe_with


QUICKSTART_ARMS = ("downstream.tune=true", "downstream.arms=[real, reweight, oversample]")


class PipelineProgress:
    """One live display for all three stages: a training bar, a bar per synthesized class, a classifier bar."""

    def __init__(self):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[note]}"), TimeRemainingColumn(), console=console)
        self.tasks: dict[str, int] = {}

    def _update(self, name: str, total: int, done: int, note: str = "") -> None:
        if name not in self.tasks:
            self.tasks[name] = self.progress.add_task(name, total=total, note="")
        self.progress.update(self.tasks[name], completed=done, note=note)

    def on_train(self, row: dict) -> None:
        self._update("train diffusion", row["total"], row["step"], f"loss {row['loss']:.4f}")

    def on_synthesis(self, name: str, done: int, total: int) -> None:
        self._update(f"synthesize {name}", total, done)

    def on_model(self, arm: str, seed: int, info: dict) -> None:
        from .downstream_cmd import progress_line

        self._update("classifiers", info["total"], info["done"], progress_line(arm, seed, info).partition("; ")[2])

    def __enter__(self):
        self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        self.progress.__exit__(*exc)


def quickstart(
    run: Path = typer.Option(Path("runs/quickstart"), "--run", help="Run folder (rerun to resume)."),
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Train CM on builtin:digits-lt, synthesize to balance, compare the classifier arms (about 10 min on 2 CPU cores)."""
    from capaug.augment.builtin import DIGITS_LT
    from capaug.augment.pipeline import run_pipeline

    from .downstream_cmd import print_summary

    # the synthetic arm is `tuned` (chosen on val from the recipe's small tune_grid); --set still overrides
    recipe = recipe_with("quickstart", [*QUICKSTART_ARMS, *(sets or [])])
    console.rule(f"capaug quickstart: {DIGITS_LT} -> {run}")
    with PipelineProgress() as progress:
        result = run_pipeline(DIGITS_LT, run, recipe, on_train=progress.on_train,
                              on_synthesis=progress.on_synthesis, on_model=progress.on_model)
    print_summary(result, run)


def register(app: typer.Typer) -> None:
    app.command("quickstart")(quickstart)
