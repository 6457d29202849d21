"""`capaug recipes`: list the shipped presets."""

from __future__ import annotations

import typer
from rich.table import Table

from capaug.recipes import list_recipes

from .common import console


def recipes() -> None:
    """List the built-in recipes with one line each."""
    table = Table("recipe", "description")
    for name, description in list_recipes().items():
        table.add_row(name, description)
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("recipes")(recipes)
