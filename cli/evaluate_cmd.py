"""`capaug evaluate`: generative metrics of RUN/synthetic (FID, KID, precision/recall, memorization, CAS)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich import box
from rich.table import Table

from .common import RecipeOption, SetOption, console, recipe_for_run
from .progress import Progress


def evaluate(
    run: Path = typer.Option(..., "--run", help="Run folder with split.json, diffusion/model and synthetic/."),
    synthetic: Optional[Path] = typer.Option(None, "--synthetic", help="Synthetic folder to score (default RUN/synthetic)."),
    features: str = typer.Option("classifier", help="classifier (in-domain, trained on the real training split), inception, or a file (classifier checkpoint, .pt2, TorchScript, Inception weights)."),
    k: int = typer.Option(5, "--k", min=1, help="Neighbours for improved precision/recall."),
    kid_subsets: int = typer.Option(100, "--kid-subsets", min=1, help="Random subsets for KID's mean and std."),
    cas: bool = typer.Option(True, "--cas/--no-cas", help="Train a classifier on synthetic images only and test it on real test images."),
    seed: int = typer.Option(0, help="Seed of KID's subsets and of the classifiers."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda when available)."),
    recipe: Optional[str] = RecipeOption,
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Score the run's synthetic images per class, per Many/Medium/Few group and overall."""
    cfg, _ = recipe_for_run(recipe, run, sets)
    from capaug.augment.evaluate import evaluate_run

    with Progress() as progress:
        result = evaluate_run(run, synthetic_dir=synthetic, features=features, downstream=cfg.downstream,
                              audit_threshold=cfg.synthesize.audit_threshold, k=k, kid_subsets=kid_subsets,
                              cas=cas, seed=seed, device=device, on_stage=progress.on_eval)
    console.print(summary_table(result))
    console.print(f"[green]wrote[/] {run / 'eval' / 'metrics.json'} and {run / 'eval' / 'fid_by_class.png'}")


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def summary_table(result: dict) -> Table:
    """One row per group and overall (P/R: precision/recall, memo: memorized); per class: metrics.json."""
    table = Table(title=f"generative metrics ({result['features']['kind']} features)", box=box.SIMPLE,
                  show_edge=False, collapse_padding=True)
    table.add_column("", no_wrap=True)
    for header in ("real", "synth", "FID", "FID/class", "KID", "P", "R", "memo", "CAS"):
        table.add_column(header, justify="right", no_wrap=True)
    generative, memorization, cas = result["generative"], result["memorization"], result["cas"]
    rows = [(g, generative["per_group"][g], memorization["per_group"][g], cas and cas["per_group"][g])
            for g in ("many", "medium", "few") if g in generative["per_group"]]
    rows.append(("overall", generative["overall"], memorization["overall"], cas and cas["overall"]))
    for name, gen, mem, acc in rows:
        table.add_row(name, str(gen["n_real"]), str(gen["n_fake"]), _fmt(gen["fid"]), _fmt(gen["class_mean"]["fid"]),
                      _fmt(gen["kid_mean"], ".2g"), _fmt(gen["precision"], ".2f"), _fmt(gen["recall"], ".2f"),
                      _fmt(mem["rate"], ".1%"), _fmt(acc["rate"], ".1%") if acc else "-")
    return table


def register(app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
