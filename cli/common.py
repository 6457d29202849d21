"""Shared bits of the commands: consoles, recipe loading with CLI overrides."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape  # help text is rich markup; arm specs have [brackets]

from capaug.augment.config import Recipe
from capaug.recipes import load_recipe, parse_assignment

console = Console()
err_console = Console(stderr=True)

RecipeOption = typer.Option("quickstart", "--recipe", "-r", help="Recipe name (see `capaug recipes`) or a .yaml file.")
SetOption = typer.Option(None, "--set", help="Override any recipe value, e.g. --set train.lr=1e-4 (repeatable).")

# options that `capaug run` shares with the stage commands
DataArgument = typer.Argument(None, help="Image folder, .npz, .csv or builtin:digits-lt (default: the recipe's dataset, or the run's split).")
TrainStepsOption = typer.Option(None, "--steps", help="Diffusion training steps (optimizer steps).")
MixedPrecisionOption = typer.Option(None, "--mixed-precision", help="auto (bf16 on CUDA), no, bf16, fp16.")
TargetOption = typer.Option(None, "--target", help="balanced, balanced:N, ratio:R, or a .yaml/.json file class -> count.")
ArmsOption = typer.Option(None, "--arms", help=escape("Comma list of arms: real, reweight, oversample, synthetic, a --compare name; synthetic settings as BASE+la+filter+crt[w=0.5,share=0.25], e.g. synthetic+la[w=0.5]."))
TuneOption = typer.Option(None, "--tune/--no-tune", help="Add the arm `tuned`: the downstream.tune_grid setting with the best mean val score (test read only by it).")
SeedsOption = typer.Option(None, "--seeds", help="Classifier seeds per arm (0..N-1); default 5 for inputs <= 64 px, else 3.")


@contextlib.contextmanager
def human_output_on_stderr(enabled: bool = True) -> Iterator[None]:
    """`--json`: stdout carries the JSON alone, so every line for people (tables, progress) goes to stderr."""
    before = console.stderr
    console.stderr = before or enabled
    try:
        yield
    finally:
        console.stderr = before


def recipe_with(name: str, sets: Optional[list[str]], **options: Any) -> Recipe:
    """Load a recipe, apply `--set KEY=VALUE`s, then explicit options ({"train.lr": value}; None = not given)."""
    overrides: dict[str, Any] = dict(parse_assignment(s) for s in sets or [])
    overrides.update({k: v for k, v in options.items() if v is not None})
    return load_recipe(name, overrides)
