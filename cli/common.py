"""Shared bits of the commands: consoles, recipe loading with CLI overrides."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.markup import escape  # help text is rich markup; arm specs have [brackets]

from capaug.augment.config import Recipe
from capaug.recipes import load_recipe, parse_assignment

LOG_WIDTH = 160  # a log file has no terminal width; rich's default of 80 would crop the arms table


def _console(stderr: bool = False) -> Console:
    """A terminal gets its own width; redirected output (a log, a pipe) gets LOG_WIDTH columns."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else LOG_WIDTH)


console = _console()
err_console = _console(stderr=True)

DEFAULT_RECIPE = "quickstart"
RecipeOption = typer.Option(None, "--recipe", "-r", help="Recipe name (see `capaug recipes`) or a .yaml file (default: the run's recipe, RUN/recipe.yaml; a new run: quickstart).")
SetOption = typer.Option(None, "--set", help="Override any recipe value, e.g. --set train.lr=1e-4 (repeatable).")

# options that `capaug run` shares with the stage commands
DataArgument = typer.Argument(None, help="Image folder, .npz, .csv or builtin:digits-lt (default: the recipe's dataset, or the run's split).")
TrainStepsOption = typer.Option(None, "--steps", help="Diffusion training steps (optimizer steps).")
MixedPrecisionOption = typer.Option(None, "--mixed-precision", help="auto (bf16 on CUDA), no, bf16, fp16.")
TargetOption = typer.Option(None, "--target", help="balanced, balanced:N, ratio:R, or a .yaml/.json file class -> count.")
ArmsOption = typer.Option(None, "--arms", help=escape("Comma list of arms: real, reweight, oversample, synthetic, a --compare name, synthetic-features (feature-level synthesis, no images needed); synthetic settings as BASE+la+filter+crt[w=0.5,share=0.25], e.g. synthetic+la[w=0.5], synthetic-features+la[head_frac=0.2]."))
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
    return load_recipe(name, overrides_of(sets, options))


def overrides_of(sets: Optional[list[str]], options: dict[str, Any]) -> dict[str, Any]:
    """`--set KEY=VALUE`s, then the explicit options that were given, as dotted-key overrides."""
    return dict(parse_assignment(s) for s in sets or []) | {k: v for k, v in options.items() if v is not None}


def recipe_origin(name: str) -> str:
    """How RUN/recipe.yaml names a --recipe: a shipped recipe by its name, a file by its absolute path."""
    path = Path(name)
    return str(path.resolve()) if path.suffix in (".yaml", ".yml") and path.is_file() else name


def recipe_for_run(name: Optional[str], run: Optional[Path], sets: Optional[list[str]], *, new_run: bool = False,
                   **options: Any) -> tuple[Recipe, Optional[str]]:
    """The settings of a command on RUN and the origin to record: `--recipe` when given, else the run's recipe
    (RUN/recipe.yaml), else quickstart, with a warning unless the command starts a new run (`new_run`: train,
    run). `--set`s and explicit options apply on top in every case."""
    from capaug.augment.pipeline import recorded_origin, run_recipe

    overrides = overrides_of(sets, options)
    if name is None:
        found = run_recipe(run, overrides) if run is not None else None
        if found is not None:
            return found
        if run is None or not new_run or (Path(run) / "diffusion" / "config.yaml").is_file():
            where = f"{run} has no recorded recipe (RUN/recipe.yaml)" if run is not None else "no --run to take a recipe from"
            err_console.print(f"[yellow]warning:[/] {where}; using the {DEFAULT_RECIPE} recipe; choose one with "
                              "--recipe NAME or FILE (see `capaug recipes`)", highlight=False, soft_wrap=True)
        return load_recipe(DEFAULT_RECIPE, overrides), DEFAULT_RECIPE
    recorded = recorded_origin(run) if run is not None else None
    if recorded is not None and recorded != recipe_origin(name):
        console.print(f"recipe {name} (given; {run} was made with {recorded})", highlight=False, soft_wrap=True)
    return load_recipe(name, overrides), recipe_origin(name)
