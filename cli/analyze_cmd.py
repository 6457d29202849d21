"""`capaug analyze capacity`: where a trained model keeps each class (pruning and theta_g vs theta_g + theta_e)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from capaug.augment.errors import CapaugError

from .common import console

analyze_app = typer.Typer(help="Diagnostics of a trained run.", no_args_is_help=True)


def _fractions(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise CapaugError(f"--prune takes comma-separated fractions like 0,0.1,0.3, not {text!r}") from None


@analyze_app.command("capacity")
def capacity(
    run: Path = typer.Option(..., "--run", help="Trained run folder (RUN/diffusion/model; checkpoints for CM)."),
    prune: str = typer.Option("0,0.1,0.2,0.3,0.5", help="Comma-separated fractions of the smallest weights to zero."),
    part: str = typer.Option("train", help="Real images of the probe: train or val."),
    images_per_class: int = typer.Option(64, "--images-per-class", min=1, help="Probe images per class (fewer if the class is smaller)."),
    draws: int = typer.Option(4, min=1, help="(t, noise) draws per probe image."),
    seed: int = typer.Option(0, help="Seed of the probe (images, timesteps, noise)."),
    batch_size: int = typer.Option(128, "--batch-size", min=1, help="Probe items per forward pass."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: cuda when available)."),
) -> None:
    """Per-class denoising loss under global magnitude pruning, and with theta_g alone vs theta_g + theta_e."""
    from capaug.augment.analysis import analyze_capacity

    with console.status("analysing capacity"):
        result = analyze_capacity(run, _fractions(prune), part=part, images_per_class=images_per_class,
                                  draws=draws, seed=seed, batch_size=batch_size, device=device)
    console.print(summary_table(result))
    console.print(f"[green]wrote[/] {run / 'analysis' / 'capacity.json'} and {run / 'analysis' / 'capacity.png'}")


def summary_table(result: dict) -> Table:
    """Mean relative loss increase per group: one column per pruning fraction, one for switching theta_e off."""
    pruning, split = result["pruning"], result["capacity_split"]
    fractions = [f for f in pruning["group_mean_relative_increase"] if float(f) > 0]
    table = Table("group", *[f"pruned {float(f):.0%}" for f in fractions], "theta_g alone", box=box.SIMPLE,
                  show_edge=False, title="relative increase in denoising loss (mean over the group's classes)")
    for group in (g for g in ("many", "medium", "few") if g in result["groups"]):
        cells = [f"{pruning['group_mean_relative_increase'][f][group]:+.1%}" for f in fractions]
        cells.append(f"{split['group_mean_relative_increase'][group]:+.1%}" if split else "-")
        table.add_row(group, *cells)
    return table


def register(app: typer.Typer) -> None:
    app.add_typer(analyze_app, name="analyze")
