"""`capaug train`: the whole training loop, readable in one sitting.

`train()` is a loop over small named steps: `setup_training` (in `train_setup.py`: model, optimizer, EMA, data,
resume), then per optimizer step `_train_step`, `_log`, `_sample` and `_checkpoint`, and `_finish` (the folded
model).

One optimizer step = `grad_accum` micro-batches on every process; `cfg.batch_size` is the global batch of one
optimizer step, so a recipe means the same thing on one CPU or eight GPUs. The data order is a pure function
of (seed, step), and a checkpoint holds every other random state (Accelerate saves python, numpy and torch RNGs;
the data loader draws from its own generator, not the global one), so a resumed run is bitwise the
uninterrupted one on CPU.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from .checkpoints import remove_orphans, save_checkpoint
from .cm_report import d_column, save_d_by_class, warn_if_running_away
from .config import DataConfig, TrainConfig
from .errors import CapaugError
from .io import atomic_path
from .model_io import save_diffusion_model
from .split import Split
from .train_setup import TrainLoop, setup_training

LOG_COLUMNS = ["step", "loss", "loss_base", "loss_cm", "d_many", "d_medium", "d_few", "lr", "images_per_s"]


@dataclass
class TrainResult:
    step: int
    model_dir: Path
    log_path: Path
    final_loss: float
    seconds: float
    unet: torch.nn.Module  # the trained (non-EMA, unfolded) model, for Python users


# --------------------------------------------------------------------------- the loop


def train(
    split: Split,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    data_cfg: DataConfig = DataConfig(),
    resume: bool = False,
    from_pretrained: Optional[str] = None,
    callback: Optional[Callable[[dict], None]] = None,
    report_to: Optional[str] = None,
) -> TrainResult:
    """Train `cfg.method` on the split's training images; write checkpoints, logs, grids and the folded model.

    On `resume`, `cfg` may differ from the run's recorded settings only in recovery settings (`resume.RECOVERY`);
    the changes take effect and are appended to `RUN/diffusion/config_history.yaml`. `callback` receives
    {"step", "total", "loss", ...} after every optimizer step (progress bars). `report_to` names an Accelerate
    tracker (tensorboard, mlflow, wandb) that gets the figures of train_log.csv.
    """
    t0 = time.time()
    loop = setup_training(split, cfg, Path(run_dir), data_cfg, resume, from_pretrained, report_to)
    if callback and loop.cm_classes:  # before step 1: which classes L_CM pushes to diversify
        callback({"step": loop.step, "total": cfg.steps, "loss": float("nan"), "cm_classes": loop.cm_classes})
    while loop.step < cfg.steps:
        _train_step(loop)
        row = _log(loop) if loop.due(cfg.log_every) else {"step": loop.step, "loss": loop.loss}
        if callback:
            callback(row | {"total": cfg.steps})
        if loop.due(cfg.sample_every):
            _sample(loop)
        if loop.due(cfg.checkpoint_every):
            _checkpoint(loop)
    return _finish(loop, t0)


def _train_step(loop: TrainLoop) -> None:
    """One optimizer step over `grad_accum` micro-batches, then the EMA update; stops on a NaN/inf loss."""
    cfg, accelerator = loop.cfg, loop.accelerator
    for _ in range(cfg.grad_accum):
        x0, y = next(loop.batches)
        x0, y = x0.to(accelerator.device), y.to(accelerator.device)
        if cfg.hflip:
            flip = torch.rand(len(x0), device=x0.device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
        if loop.channels_last:
            x0 = x0.contiguous(memory_format=torch.channels_last)
        with accelerator.accumulate(loop.objective):
            result = loop.objective(x0, y)
            loss = result["loss"]
            if not accelerator.gather(loss.detach().float().reshape(1)).isfinite().all():
                where = (f"; the last good checkpoint is {loop.last_good} (resume from it with a lower --lr)"
                         if loop.last_good else "; no checkpoint was written yet")
                raise CapaugError(f"training stopped: the loss became {loss.item()} at step {loop.step + 1}{where}")
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(loop.trainable, cfg.grad_clip)
            loop.optimizer.step()
            loop.lr_scheduler.step()
            loop.optimizer.zero_grad(set_to_none=True)
        loop.window.append({k: v.detach().float().cpu() for k, v in result.items() if k != "loss"} | {"y": y.cpu()})
        loop.window_images += len(x0) * accelerator.num_processes
    loop.ema.step(loop.trainable)
    loop.step += 1
    loop.loss = float(loss.detach())


def _log_row(loop: TrainLoop) -> dict:
    """The figures of one train_log.csv row, averaged over the micro-batches since the last row."""
    window = loop.window
    mean = lambda key: float(torch.stack([w[key] for w in window]).mean())  # noqa: E731
    d, labels = torch.cat([w["d"] for w in window]), torch.cat([w["y"] for w in window])
    row = {"step": loop.step, "loss": float(torch.stack([w["loss_base"] + w["loss_cm"] for w in window]).mean()),
           "loss_base": mean("loss_base"), "loss_cm": mean("loss_cm")}
    row.update(zip(["d_many", "d_medium", "d_few"], _group_means(d, labels, loop.group_of_class)))
    if loop.cm_classes:
        k = len(loop.classes)
        row.update(zip(map(d_column, loop.classes), _group_means(d, labels, torch.arange(k), k)))
    row.update(lr=loop.lr_scheduler.get_last_lr()[0],
               images_per_s=loop.window_images / max(time.time() - loop.window_start, 1e-9))
    return row


def _group_means(d: torch.Tensor, labels: torch.Tensor, group_of_class: torch.Tensor, n_groups: int = 3) -> list[float]:
    """Mean on/off disagreement d over the samples of each group (0/1/2 = Many/Medium/Few, or one group per class
    with `group_of_class = arange(K)`), NaN where absent."""
    out = []
    for g in range(n_groups):
        mask = (group_of_class[labels] == g) & torch.isfinite(d)
        out.append(float(d[mask].mean()) if mask.any() else float("nan"))
    return out


def _log(loop: TrainLoop) -> dict:
    """Append a row to train_log.csv (and the tracker, if any); start a new averaging window."""
    from .tracking import scalars

    row = _log_row(loop)
    loop.log_rows.append({k: _fmt(v) if isinstance(v, float) else v for k, v in row.items()})
    loop.window, loop.window_start, loop.window_images = [], time.time(), 0
    if loop.accelerator.is_main_process:
        _write_log(loop.out / "train_log.csv", loop.log_rows)
        if loop.cm_classes and not loop.runaway_warned:
            loop.runaway_warned = warn_if_running_away(row, loop.classes)
    loop.accelerator.log(scalars({k: v for k, v in row.items() if k != "step"}), step=loop.step)
    return row


@torch.no_grad()
def _sample(loop: TrainLoop, per_class: int = 8) -> None:
    """EMA samples, one row per class, fixed seeds (so grids of successive steps are comparable)."""
    if not loop.accelerator.is_main_process:
        return
    from .grids import save_grid
    from .sampling import generate

    k = len(loop.classes)
    labels = [c for c in range(k) for _ in range(per_class)]
    with ema_weights(loop.ema, loop.trainable):
        images = generate(unet_of(loop.objective, loop.accelerator), loop.noise_scheduler, labels,
                          list(range(len(labels))), sampler="dpmsolver++", steps=25, guidance=1.0, null_class=k,
                          device=loop.accelerator.device)
    save_grid(loop.out / "samples" / f"step-{loop.step}.png", list(images.reshape(k, per_class, *images.shape[1:])),
              pad=1)


def _plot_d(loop: TrainLoop) -> None:
    """RUN/diffusion/d_by_class.png from the log so far (method cm)."""
    if loop.cm_classes and loop.accelerator.is_main_process:
        groups = [r["group"] for r in loop.cm_classes["classes"]]
        save_d_by_class(loop.out / "d_by_class.png", loop.log_rows, loop.classes, groups)


def _checkpoint(loop: TrainLoop) -> None:
    """Write `checkpoints/step-N` atomically (and the d-by-class plot); a failed write (full disk) keeps the last
    good one."""
    _plot_d(loop)
    try:
        loop.last_good = save_checkpoint(loop.accelerator, loop.run_dir, loop.step, loop.cfg.keep_checkpoints)
    except OSError as e:
        if loop.accelerator.is_main_process:
            remove_orphans(loop.run_dir)
        kept = f"the last good checkpoint is {loop.last_good}" if loop.last_good else "no checkpoint was written yet"
        raise CapaugError(f"could not write the checkpoint of step {loop.step} "
                          f"({e.strerror or e}); {kept}") from None


def _finish(loop: TrainLoop, t0: float) -> TrainResult:
    """Fold the EMA weights into a plain UNet2DModel and write RUN/diffusion/model."""
    accelerator, model_dir = loop.accelerator, loop.out / "model"
    trained = unet_of(loop.objective, accelerator)
    if accelerator.is_main_process:
        with ema_weights(loop.ema, loop.trainable):
            folded = fold_copy(trained)
        loop.info.step = loop.step
        save_diffusion_model(folded, loop.noise_scheduler, loop.info, model_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(step=loop.step, model_dir=model_dir, log_path=loop.out / "train_log.csv",
                       final_loss=loop.loss, seconds=time.time() - t0, unet=trained)


# --------------------------------------------------------------------------- helpers


def fold_copy(unet):
    """A plain UNet2DModel with every capacity term folded into its weights (the input is left untouched)."""
    from .capacity import fold_capacity

    return fold_capacity(copy.deepcopy(unet).float().to("cpu", memory_format=torch.contiguous_format))


def unet_of(objective, accelerator):
    module = accelerator.unwrap_model(objective)
    return getattr(module, "_orig_mod", module).unet


@contextlib.contextmanager
def ema_weights(ema, params):
    """Within the block `params` hold their EMA values; the training values come back afterwards."""
    ema.store(params)
    ema.copy_to(params)
    try:
        yield
    finally:
        ema.restore(params)


# --------------------------------------------------------------------------- log file


def _write_log(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))  # LOG_COLUMNS first, then any added ones
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.6g}"
