"""`capaug synthesize`: parse options, call `capaug.augment.synthesize.synthesize`, show plan, progress and audit."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from capaug.augment.errors import CapaugError

from .common import RecipeOption, SetOption, TargetOption, console, recipe_for_run
from .progress import Progress


def synthesize(
    run: Optional[Path] = typer.Option(None, "--run", help="Run folder: model RUN/diffusion/model, output RUN/synthetic, split RUN/split.json."),
    model: Optional[Path] = typer.Option(None, "--model", help="Folded model folder (default RUN/diffusion/model)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Output folder (default RUN/synthetic)."),
    target: Optional[str] = TargetOption,
    sampler: Optional[str] = typer.Option(None, help="dpmsolver++ (default), ddim or ddpm."),
    steps: Optional[int] = typer.Option(None, help="Sampler steps."),
    guidance: Optional[float] = typer.Option(None, help="Classifier-free guidance weight w (1 = none)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per sampler batch."),
    seed: Optional[int] = typer.Option(None, help="Base seed; image i of class c uses a seed derived from (seed, c, i)."),
    resize: Optional[bool] = typer.Option(None, "--resize/--no-resize", help="Save at the data's size instead of the model's."),
    drop_near_copies: Optional[float] = typer.Option(None, "--drop-near-copies", help="Drop and replace images within this RMS pixel distance of a training image."),
    filter_classifier: Optional[str] = typer.Option(None, "--filter-classifier", help="Classifier trained on the real training split, for the confidence filter: a file, or 'auto' (with --run: train or reuse RUN/eval/reference_classifier.safetensors)."),
    filter_confidence: Optional[float] = typer.Option(None, "--filter-confidence", help="Drop images the classifier gives to another class above this confidence."),
    source: Optional[str] = typer.Option(None, "--source", help="Start from noise (default), or from a training image of the class (minority) or of a larger class (majority), denoised with the class's label."),
    strength: Optional[str] = typer.Option(None, "--strength", help="minority/majority: noise level(s) in (0, 1], e.g. 0.3,0.5,0.7 (image i uses the i-th, cycling); 1 = from noise."),
    label_fidelity: Optional[bool] = typer.Option(None, "--label-fidelity/--no-label-fidelity", help="Report how many images the reference classifier gives to their class (with --run; default: when RUN/eval has it, trained for --source majority)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete the images capaug wrote in the output and start again."),
    keep_extra: bool = typer.Option(False, "--keep-extra", help="After lowering the target, keep the images beyond it (the manifest lists them)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and exit."),
    recipe: Optional[str] = RecipeOption,
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Synthesize minority-class images until the target class balance is reached (resumable)."""
    if run is None and (model is None or out is None):
        raise CapaugError("pass --run RUN, or both --model DIR and --out DIR")
    options = {
        "synthesize.target": target, "synthesize.sampler": sampler, "synthesize.steps": steps,
        "synthesize.guidance": guidance, "synthesize.batch_size": batch_size, "synthesize.seed": seed,
        "synthesize.resize": resize, "synthesize.near_copy_threshold": drop_near_copies,
        "synthesize.filter_confidence": filter_confidence, "synthesize.source": source, "synthesize.strength": strength,
    }
    settings, _ = recipe_for_run(recipe, run, sets, **options)
    cfg = settings.synthesize
    from capaug.augment.split import load_split
    from capaug.augment.devices import process_state
    from capaug.augment.io import check_output
    from capaug.augment.runlock import run_lock
    from capaug.augment.synthesize import synthesize as run_synthesis

    split = load_split(check_output(run)) if run is not None else None
    if filter_classifier == "auto" and split is None:
        raise CapaugError("--filter-classifier auto needs --run (the classifier trains on the run's split)")
    if label_fidelity and split is None:
        raise CapaugError("--label-fidelity needs --run (the reference classifier trains on the run's split)")
    model = model or run / "diffusion" / "model"
    out = out or run / "synthetic"
    main = process_state().is_main_process
    with (run_lock(run, "synthesize") if run is not None and not dry_run else contextlib.nullcontext(),
          Progress(disable=dry_run or not main) as progress):
        if filter_classifier == "auto":
            from capaug.classifier.reference import reference_for_run

            progress.message("reference classifier", "training on the real training split")
            filter_classifier = reference_for_run(run, split, settings.downstream)
        label_classifier = None
        if filter_classifier is None and split is not None and not dry_run and label_fidelity is not False:
            label_classifier = _label_classifier(run, split, settings.downstream, label_fidelity or cfg.source == "majority",
                                                 progress)
        result = run_synthesis(model, out, cfg, split=split, classifier=filter_classifier,
                               label_classifier=label_classifier, overwrite=overwrite, keep_extra=keep_extra,
                               dry_run=dry_run, on_progress=progress.on_synthesis)
    if not main:
        return
    if dry_run:
        table = Table("class", "real", "target", "to generate", title=f"plan: {cfg.target}")
        for p in result.plan:
            table.add_row(p.name, str(p.real), str(p.target), str(p.generate))
        console.print(table)
        console.print(f"{sum(p.generate for p in result.plan)} images to generate into {out}")
        return
    if result.audit:
        anchored = result.audit[0].median_source_distance is not None
        table = Table("class", "images", "min dist", "median dist", "near-copies", "rate", "dropped",
                      *(["median dist to source"] if anchored else []),
                      title=f"memorization audit (RMS pixel distance; near-copy < {result.audit[0].threshold:g})")
        for s in result.audit:
            table.add_row(s.name, str(s.images), f"{s.min_distance:.4f}", f"{s.median_distance:.4f}", str(s.near_copies),
                          f"{100 * s.near_copy_rate:.1f}%", str(result.dropped.get(s.name, 0)),
                          *([f"{s.median_source_distance:.4f}"] if anchored else []))
        console.print(table)
    if result.label_fidelity:
        table = Table("class", "images", "given to the class", "rate",
                      title="label fidelity (reference classifier, every image made)")
        for name, f in result.label_fidelity["classes"].items():
            table.add_row(name, str(f["images"]), str(f["as_class"]), f"{100 * f['rate']:.1f}%")
        console.print(table)
    total = sum(p.generate for p in result.plan)
    console.print(f"[green]synthesized[/] {result.made} new images ({total} in the plan); manifest {result.manifest}")


def _label_classifier(run: Path, split, downstream_cfg, train: bool, progress) -> Optional[Path]:
    """The reference classifier file for label fidelity: trained (or reused) when `train`, else only a cached one."""
    from capaug.classifier.reference import REFERENCE, cached_reference, reference_for_run

    if train:
        progress.message("reference classifier", "label fidelity: training on the real training split (or reusing it)")
        reference_for_run(run, split, downstream_cfg)
    elif cached_reference(run, split) is None:
        return None
    return run / "eval" / REFERENCE


def register(app: typer.Typer) -> None:
    app.command("synthesize")(synthesize)
