"""`capaug inspect`: per-class counts, shares, Many/Medium/Few groups and the imbalance ratio of a data set, and
what would stop or mislead training: duplicate images across splits, classes without val or test images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from capaug.augment.errors import CapaugError

from .common import SetOption, console, recipe_with

BAR_WIDTH = 20
LISTED = 10


def inspect(
    data: Optional[str] = typer.Argument(None, help="Image folder, pre-split tree, .npz, .csv or builtin:digits-lt."),
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder: show its split (made from DATA and saved if new)."),
    as_json: bool = typer.Option(False, "--json", help="Print the same information as JSON, for pipelines."),
    recipe: Optional[str] = typer.Option(None, "--recipe", "-r", help="Recipe whose data settings apply (default: built-in defaults)."),
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Show the training split's class counts, shares, groups and imbalance ratio (plus val and test counts)."""
    from capaug.augment.config import DataConfig
    from capaug.augment.io import check_output
    from capaug.augment.sources import scan_source
    from capaug.augment.split import make_split, prepare_split

    if data is None and run is None:
        raise CapaugError("give DATA, --run RUN, or both")
    cfg = recipe_with(recipe or "quickstart", sets).data if recipe or sets else DataConfig()
    if run is not None:  # a run folder is written (split.json): refuse a file or a read-only place up front
        check_output(run, [data])
    split = prepare_split(data, run, cfg, check=False) if run else make_split(scan_source(data, cfg.intensity), cfg)
    summary = split.describe(cfg)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    console.print(summary_table(summary))
    for line in split.findings():
        console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)
    for part in ("test", "val"):
        pairs = summary["duplicates"][f"{part}_in_train"]
        for key, same_as in pairs[:LISTED]:
            console.print(f"  {part}: {key} = train: {same_as}", highlight=False, soft_wrap=True)
        if len(pairs) > LISTED:
            console.print(f"  ... {len(pairs) - LISTED} more (--json lists all)", highlight=False)


def summary_table(summary: dict) -> Table:
    rows = summary["classes"]
    largest = max(row["train"] for row in rows)
    totals = summary["totals"]
    grouping = (
        f"Many > {summary['thresholds']['many']}, Few < {summary['thresholds']['few']} training images"
        if summary["grouping"] == "thresholds"
        else "terciles of classes ranked by count"
    )
    table = Table(
        title=f"{summary['source']['path']} ({summary['source']['kind']}, {summary['mode']})",
        caption=(
            f"imbalance ratio {summary['imbalance_ratio']:.1f} (largest / smallest training class); groups: {grouping}\n"
            f"train {totals['train']}, val {totals['val']}, test {totals['test']}; split hash {summary['split_hash'][:12]}"
            + (f"; {summary['corrupt']} corrupt file(s) skipped" if summary["corrupt"] else "")
        ),
    )
    for name in ("class", "train", "share", "group", ""):
        table.add_column(name, justify="right" if name in ("train", "share") else "left")
    table.add_column("val", justify="right")
    table.add_column("test", justify="right")
    for row in rows:
        bar = "█" * max(1, round(BAR_WIDTH * row["train"] / largest))
        table.add_row(row["class"], str(row["train"]), f"{row['share']:.1%}", row["group"], bar, str(row["val"]), str(row["test"]))
    return table


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
