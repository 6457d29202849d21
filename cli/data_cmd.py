"""`capaug data`: convert a MedMNIST npz to a folder tree, or make a long-tailed tree from a balanced one."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from .common import console

data_app = typer.Typer(help="Prepare data sets: npz to folders, balanced trees to long-tailed ones.", no_args_is_help=True)


@data_app.command("from-npz")
def from_npz(
    file: Path = typer.Argument(..., help="MedMNIST .npz (train/val/test _images and _labels)."),
    out: Path = typer.Option(..., "--out", help="New folder for the {train,val,test}/<class>/*.png tree."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output folder capaug wrote earlier (never a foreign one)."),
) -> None:
    """Write a MedMNIST npz as a pre-split ImageFolder tree of PNGs."""
    from capaug.augment.convert import npz_to_folder

    counts = npz_to_folder(file, out, overwrite)
    console.print(counts_table(counts, f"wrote {out}"))


@data_app.command("make-lt")
def make_lt(
    data: Path = typer.Argument(..., help="Balanced image folder or pre-split tree."),
    ratio: float = typer.Option(..., "--ratio", help="Imbalance ratio: largest / smallest training class."),
    out: Path = typer.Option(..., "--out", help="New folder for the long-tailed tree."),
    max_per_class: Optional[int] = typer.Option(
        None, "--max-per-class", metavar="N", help="Training images of the head class, n_max (default: the smallest class's count)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output folder capaug wrote earlier (never a foreign one)."),
) -> None:
    """Keep floor(n_max * ratio^(-k/(K-1))) training files of class k (first in sorted order); copy val/test as is."""
    from capaug.augment.convert import make_long_tailed

    counts = make_long_tailed(data, ratio, out, overwrite, max_per_class=max_per_class)
    console.print(counts_table(counts, f"wrote {out}"))


def counts_table(counts: dict[str, dict[str, int]], title: str) -> Table:
    parts = list(counts)
    table = Table("class", *parts, title=title)
    for name in counts[parts[0]]:
        table.add_row(name, *(str(counts[part][name]) for part in parts))
    table.add_row("total", *(str(sum(counts[part].values())) for part in parts), style="bold")
    return table


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
