"""`capaug train`: parse options, prepare the split, run `capaug.augment.train.train` with a progress bar."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import (DataArgument, MixedPrecisionOption, RecipeOption, SetOption, TrainStepsOption, console,
                     err_console, overrides_of, recipe_for_run)
from .progress import Progress


def train(
    data: Optional[str] = DataArgument,
    run: Path = typer.Option(..., "--run", help="Run folder (created if needed)."),
    recipe: Optional[str] = RecipeOption,
    method: Optional[str] = typer.Option(None, help="cm (Capacity Manipulation), plain (DDPM/CBDM/OC baseline) or lowrank (the low-rank terms without L_CM, an ablation)."),
    base_loss: Optional[str] = typer.Option(None, "--base-loss", help="ddpm, cbdm or oc."),
    rho: Optional[float] = typer.Option(None, help="Low-rank ratio: rank = max(1, floor(rho * min(c_in, c_out)))."),
    targets: Optional[str] = typer.Option(None, help="Comma list: up, mid, down, attention, or module-name patterns."),
    lambda_con: Optional[float] = typer.Option(None, "--lambda-con", help="Consistency weight of L_CM."),
    lambda_div: Optional[str] = typer.Option(None, "--lambda-div", help="Diversity weight of L_CM: a number, or auto (every Few class diversifies, no Medium class does)."),
    diversity_cap: Optional[float] = typer.Option(None, "--diversity-cap", help="Stop the diversity push at d = this (bounds L_CM below; off by default, DESIGN.md's linear form)."),
    loss_weighting: Optional[str] = typer.Option(None, "--loss-weighting", help="none or min_snr (min-SNR-gamma weighting of L_base; --set train.snr_gamma=5)."),
    parameterization: Optional[str] = typer.Option(None, "--parameterization", help="eps (DDPM noise prediction) or edm (Karras et al. 2022 preconditioning, noise levels and loss; base loss ddpm, no min_snr)."),
    cm_fraction: Optional[float] = typer.Option(None, "--cm-fraction", help="Fraction of the batch that gets the off branch."),
    steps: Optional[int] = TrainStepsOption,
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Global batch per optimizer step."),
    grad_accum: Optional[int] = typer.Option(None, "--grad-accum", help="Micro-batches per optimizer step."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="Training resolution (pixels)."),
    lr: Optional[float] = typer.Option(None, help="Learning rate."),
    warmup: Optional[int] = typer.Option(None, help="Linear warm-up steps."),
    ema_decay: Optional[float] = typer.Option(None, "--ema-decay", help="EMA decay (with warm-up)."),
    p_uncond: Optional[float] = typer.Option(None, "--p-uncond", help="Label-dropout rate for classifier-free guidance."),
    seed: Optional[int] = typer.Option(None, help="Random seed."),
    mixed_precision: Optional[str] = MixedPrecisionOption,
    sample_every: Optional[int] = typer.Option(None, "--sample-every", help="Write samples/step-N.png every N steps."),
    checkpoint_every: Optional[int] = typer.Option(None, "--checkpoint-every", help="Checkpoint every N steps."),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the training step."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run's last checkpoint with its recorded settings; only recovery settings (--lr, --steps, ...) may change."),
    report_to: str = typer.Option("none", "--report-to", help="Experiment tracker: none, tensorboard, mlflow or wandb (logs under RUN/tracking/)."),
    from_pretrained: Optional[Path] = typer.Option(None, "--from-pretrained", help="Local diffusers UNet folder: LoRA fine-tuning variant."),
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Train a class-conditional diffusion model with Capacity Manipulation on the training split."""
    options = {
        "train.method": method, "train.base_loss": base_loss, "train.rho": rho,
        "train.targets": targets.split(",") if targets else None, "train.lambda_con": lambda_con,
        "train.lambda_div": lambda_div, "train.diversity_cap": diversity_cap, "train.loss_weighting": loss_weighting,
        "train.parameterization": parameterization,
        "train.cm_fraction": cm_fraction, "train.steps": steps,
        "train.batch_size": batch_size, "train.grad_accum": grad_accum, "train.image_size": image_size,
        "train.lr": lr, "train.warmup_steps": warmup, "train.ema_decay": ema_decay, "train.p_uncond": p_uncond,
        "train.seed": seed, "train.mixed_precision": mixed_precision, "train.sample_every": sample_every,
        "train.checkpoint_every": checkpoint_every, "train.compile": compile,
    }
    from capaug.augment.devices import process_state
    from capaug.augment.pipeline import resumed_recipe, run_training
    from capaug.augment.checkpoints import checkpoint_dirs

    # --resume: the train and data settings the run recorded (plus recovery changes), the rest as without it
    base, origin = recipe_for_run(recipe, run, sets, new_run=True, **options)
    cfg = (resume and resumed_recipe(run, overrides_of(sets, options), base)) or base
    try:
        with Progress(disable=not process_state().is_main_process) as progress:
            result = run_training(data, run, cfg, resume=resume, from_pretrained=from_pretrained,
                                  callback=progress.on_train, report_to=report_to, origin=origin)
    except KeyboardInterrupt:
        found = checkpoint_dirs(run)
        line = (f"the last checkpoint is {found[-1]}; continue with `capaug train --run {run} --resume`" if found
                else "no checkpoint was written yet; rerun the command to start again")
        err_console.print(f"[bold red]interrupted[/]: {line}", highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    console.print(
        f"[green]trained[/] {result.step} steps in {result.seconds / 60:.1f} min, final loss {result.final_loss:.4f}; "
        f"model {result.model_dir}, log {result.log_path}, samples {result.model_dir.parent / 'samples'}"
    )


def register(app: typer.Typer) -> None:
    app.command("train")(train)
