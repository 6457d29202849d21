"""`capaug downstream`: train and test the classifier arms, print the summary table and the verdict."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape  # arm names such as synthetic[w=0.5] are not markup
from rich.table import Table

from capaug.augment import tracking
from capaug.augment.errors import CapaugError
from capaug.classifier.arms import split_specs

from .common import (ArmsOption, MixedPrecisionOption, RecipeOption, SetOption, SeedsOption, TuneOption, console,
                     recipe_for_run)
from .progress import Progress

TABLE_METRICS = {"balanced_accuracy": "bal. acc.", "recall_few": "Few recall"}


def downstream(
    run: Path = typer.Option(..., "--run", help="Run folder with split.json (and synthetic/ for the synthetic arm)."),
    recipe: Optional[str] = RecipeOption,
    arms: Optional[str] = ArmsOption,
    tune: Optional[bool] = TuneOption,
    tune_grid: Optional[str] = typer.Option(None, "--tune-grid", help="Comma list of synthetic arm specs for --tune (default: the recipe's)."),
    tune_seeds: Optional[int] = typer.Option(None, "--tune-seeds", help="Score the grid on val over this many seeds (default 2); the chosen setting then trains every seed."),
    tune_sets: Optional[str] = typer.Option(None, "--tune-sets", help="Also tune over synthesis settings (implies --tune): comma list of SOURCE[@STRENGTH[+STRENGTH...]], e.g. noise,minority@0.5,majority@0.3+0.6; each made once into RUN/synthetic-<name>/."),
    compare: Optional[list[str]] = typer.Option(None, "--compare", help="NAME=DIR: one more synthetic arm from DIR (a synthetic folder or a run folder); repeatable."),
    model: Optional[str] = typer.Option(None, "--model", help="Any timm.create_model name."),
    pretrained: Optional[bool] = typer.Option(None, "--pretrained/--no-pretrained", help="Start from timm's own weights (needs internet)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="Local checkpoint to start from (the offline path)."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Classifier input size (default: the data's, at most 224)."),
    epochs: Optional[int] = typer.Option(None, help="Budget per model in epochs of the real training split (same optimizer steps for every arm)."),
    seeds: Optional[int] = SeedsOption,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Batch size."),
    lr: Optional[float] = typer.Option(None, help="AdamW learning rate (cosine schedule)."),
    reweight: Optional[str] = typer.Option(None, help="Loss of the reweight arm: class-balanced or logit-adjusted."),
    mixed_precision: Optional[str] = MixedPrecisionOption,
    no_cache: bool = typer.Option(False, "--no-cache", help="Train every model again instead of reusing finished models' results from RUN/downstream-models/ (still stores the new results)."),
    report_to: str = typer.Option("none", "--report-to", help="Experiment tracker for every model's metrics: none, tensorboard, mlflow or wandb (logs under RUN/tracking/)."),
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Train a timm classifier per arm and seed; test each once on the real test split; write RUN/downstream/."""
    options = {
        "downstream.model": model, "downstream.pretrained": pretrained,
        "downstream.weights": str(weights) if weights else None, "downstream.image_size": image_size,
        "downstream.epochs": epochs, "downstream.seeds": seeds, "downstream.batch_size": batch_size,
        "downstream.lr": lr, "downstream.reweight": reweight, "downstream.mixed_precision": mixed_precision,
        "downstream.tune": True if tune is None and tune_sets else tune,
        "downstream.tune_grid": split_specs(tune_grid) if tune_grid is not None else None,
        "downstream.tune_seeds": tune_seeds,
        "downstream.tune_sets": [s.strip() for s in tune_sets.split(",") if s.strip()] if tune_sets is not None else None,
    }
    cfg, _ = recipe_for_run(recipe, run, sets, **options)
    from capaug.classifier.downstream import planned_models, run_downstream

    chosen = split_specs(arms) if arms is not None else None
    planned = planned_models(cfg.downstream, chosen, parse_compare(compare), run_dir=run)  # bad specs fail here
    with Progress() as progress, tracking.tracker(report_to, run, "downstream", cfg.downstream.model_dump()) as log:
        progress.on_stage("downstream", f"{planned} models planned")

        def on_model(arm: str, seed: int, info: dict) -> None:
            progress.on_model(arm, seed, info)
            log(tracking.scalars({k: v for k, v in info.items() if k not in ("done", "total")}, f"{arm}/"), seed)

        result = run_downstream(run, cfg.downstream, parse_compare(compare), chosen, data_cfg=cfg.data,
                                on_model=on_model, synth_cfg=cfg.synthesize, on_synthesis=progress.on_synthesis,
                                reuse_models=not no_cache)
    print_summary(result, run)


def print_summary(result: dict, run: Path) -> None:
    """The arms table, the verdict line and where the report is."""
    console.print(summary_table(result))
    console.print(f"[bold]verdict:[/] {escape(result['verdict']['text'])}", highlight=False)
    console.print(f"report: {Path(run) / 'downstream' / 'report.md'}")


def parse_compare(entries: Optional[list[str]]) -> dict[str, Path]:
    """`NAME=DIR` strings -> {name: Path}."""
    compare: dict[str, Path] = {}
    for entry in entries or []:
        name, sep, folder = entry.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise CapaugError(f"--compare expects NAME=DIR, got {entry!r}")
        if name.strip() in compare:
            raise CapaugError(f"--compare name {name.strip()!r} is given twice")
        compare[name.strip()] = Path(folder.strip())
    return compare


def summary_table(result: dict) -> Table:
    """Mean ± std per arm of the headline metrics and the paired balanced-accuracy differences; winner in bold."""
    from rich import box

    from capaug.classifier.report import plus_minus

    settings = result["settings"]
    best = result["best_classic"]
    table = Table(title=f"downstream: {settings['model']}, {settings['seeds']} seed(s), "
                        f"{settings['budget']['optimizer_steps']} steps per model, real test split, mean ± std",
                  caption="Δ: paired per-seed difference in balanced accuracy; CI: t over seeds; full table in report.md",
                  box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    longest = max((len(name) for name in result["arms"]), default=3)
    table.add_column("arm", overflow="fold", min_width=min(longest, 24))  # at 80 columns it would shrink to nothing
    table.add_column("images", justify="right", no_wrap=True)
    for label in (*TABLE_METRICS.values(), "Δ vs real", f"Δ vs {best or 'classic'} [95% CI]"):
        table.add_column(label, justify="right", no_wrap=True)
    winner = result["verdict"]["winner"]
    for name, arm in result["arms"].items():
        diffs = [arm[key]["balanced_accuracy"] if arm[key] else None for key in ("vs_real", "vs_best_classic")]
        table.add_row(escape(name), str(arm["train_images"]),
                      *(plus_minus(arm["summary"][m], compact=True) for m in TABLE_METRICS),
                      plus_minus(diffs[0], signed=True, compact=True) if diffs[0] else "",
                      delta(diffs[1]) if diffs[1] else "",
                      style="bold green" if name == winner else None)
    return table


def delta(diff: dict) -> str:
    """`+0.012 [-0.004, +0.028]`: mean paired difference and its 95% t-interval over seeds."""
    interval = diff["interval95"]
    return f"{diff['mean']:+.3f}" + (f" [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "")


def register(app: typer.Typer) -> None:
    app.command("downstream")(downstream)
