"""Shared bits of the commands: consoles, recipe loading with CLI overrides."""

from __future__ import annotations

from typing import Any, Optional

import typer
from rich.console import Console

from capaug.augment.config import Recipe
from capaug.recipes import load_recipe, parse_assignment

console = Console()
err_console = Console(stderr=True)

RecipeOption = typer.Option("quickstart", "--recipe", "-r", help="Recipe name (see `capaug recipes`) or a .yaml file.")
SetOption = typer.Option(None, "--set", help="Override any recipe value, e.g. --set train.lr=1e-4 (repeatable).")


def recipe_with(name: str, sets: Optional[list[str]], **options: Any) -> Recipe:
    """Load a recipe, apply `--set KEY=VALUE`s, then explicit options ({"train.lr": value}; None = not given)."""
    overrides: dict[str, Any] = dict(parse_assignment(s) for s in sets or [])
    overrides.update({k: v for k, v in options.items() if v is not None})
    return load_recipe(name, overrides)
