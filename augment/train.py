"""`capaug train`: the whole training loop, readable in one sitting.

`train()` is a loop over small named steps: `_setup` (model, optimizer, EMA, data, resume), then per optimizer
step `_train_step`, `_log`, `_sample` and `_checkpoint`, and `_finish` (the folded model).

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
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import torch
import yaml

from .cm_report import d_column, save_d_by_class, warn_about_cm_balance, warn_if_running_away
from .config import DataConfig, TrainConfig
from .errors import CapaugError
from .io import atomic_path, write_json, write_yaml
from .model_io import ModelInfo, save_diffusion_model
from .split import Split

LOG_COLUMNS = ["step", "loss", "loss_base", "loss_cm", "d_many", "d_medium", "d_few", "lr", "images_per_s"]


@dataclass
class TrainResult:
    step: int
    model_dir: Path
    log_path: Path
    final_loss: float
    seconds: float
    unet: torch.nn.Module  # the trained (non-EMA, unfolded) model, for Python users


# --------------------------------------------------------------------------- data order


class StepBatchSampler(torch.utils.data.Sampler):
    """Micro-batches of a seeded stream of epoch permutations, starting at micro-batch `start`.

    The global micro-batch m holds stream positions [m * G, (m + 1) * G) with G = micro batch x processes;
    process r takes the r-th contiguous share. Same seed and step -> same images, on any restart.
    """

    def __init__(self, n: int, global_micro_batch: int, seed: int, start: int, rank: int = 0, world: int = 1):
        self.n, self.g, self.seed, self.start, self.rank, self.world = n, global_micro_batch, seed, start, rank, world
        self._epoch, self._perm = -1, None

    def _position(self, p: int) -> int:
        epoch, offset = divmod(p, self.n)
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=gen)
        return int(self._perm[offset])

    def __iter__(self) -> Iterator[list[int]]:
        per_rank = self.g // self.world
        m = self.start
        while True:
            first = m * self.g + self.rank * per_rank
            yield [self._position(p) for p in range(first, first + per_rank)]
            m += 1

    def __len__(self) -> int:  # an endless stream; DataLoader only needs a number
        return 1 << 62


# --------------------------------------------------------------------------- checkpoints


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a half-written one has a temporary name and is never listed)."""
    folder = Path(run_dir) / "diffusion" / "checkpoints"
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_orphans(run_dir: Path) -> None:
    """Delete `.tmp-step-N` folders a crash or a full disk left behind mid-checkpoint (capaug's own temp names)."""
    for orphan in (Path(run_dir) / "diffusion" / "checkpoints").glob(".tmp-step-*"):
        shutil.rmtree(orphan, ignore_errors=True)


def _save_checkpoint(accelerator, run_dir: Path, step: int, keep: int) -> Path:
    final = Path(run_dir) / "diffusion" / "checkpoints" / f"step-{step}"
    tmp = final.with_name(f".tmp-step-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "state.json", {"step": step})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


# --------------------------------------------------------------------------- model


def _device_settings(cfg: TrainConfig, on_cuda: bool) -> tuple[str, bool]:
    precision = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if on_cuda else "no")
    channels_last = cfg.channels_last == "yes" or (cfg.channels_last == "auto" and on_cuda)
    return precision, channels_last


def _pretrained_unet(folder: str, num_classes: int, channels: int):
    """A local diffusers UNet as the frozen start of the LoRA variant, with K + 1 class embeddings.

    Returns (unet, whether the class table is new and so must be trained)."""
    from diffusers import UNet2DModel

    path = Path(folder)
    if not (path / "config.json").is_file():
        raise CapaugError(f"--from-pretrained {folder} is not a diffusers UNet folder (no config.json)")
    try:
        unet = UNet2DModel.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise CapaugError(f"--from-pretrained {folder} could not be loaded as a UNet2DModel: {e}") from None
    if unet.config.in_channels != channels:
        raise CapaugError(f"--from-pretrained UNet takes {unet.config.in_channels} channels, the data has {channels}")
    if unet.config.num_class_embeds == num_classes + 1:
        return unet, False
    unet.class_embedding = torch.nn.Embedding(num_classes + 1, unet.time_embedding.linear_2.out_features)
    unet.register_to_config(num_class_embeds=num_classes + 1, class_embed_type=None)
    return unet, True


def build_model(cfg: TrainConfig, num_classes: int, channels: int, from_pretrained: Optional[str] = None):
    """The UNet with capacity terms attached for `cm` and `lowrank` (two sets and a frozen base for the LoRA
    variant)."""
    from .capacity import CAPACITY_METHODS, add_capacity, freeze_base
    from .unet import build_unet

    if from_pretrained:
        unet, new_class_table = _pretrained_unet(from_pretrained, num_classes, channels)
        sets = ("general", "expert") if cfg.method in CAPACITY_METHODS else ("general",)
        add_capacity(unet, cfg.rho, cfg.targets, sets=sets)
        freeze_base(unet, train_class_embedding=new_class_table)
    else:
        unet = build_unet(cfg, num_classes, channels)
        if cfg.method in CAPACITY_METHODS:
            add_capacity(unet, cfg.rho, cfg.targets)
    return unet


def noise_schedule(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)


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


def _read_log(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto_step]


def _write_log(path: Path, rows: list[dict]) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))  # LOG_COLUMNS first, then any added ones
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.6g}"


# --------------------------------------------------------------------------- the loop


@dataclass
class _Loop:
    """What the steps of one training run share."""

    cfg: TrainConfig
    run_dir: Path
    accelerator: Any
    objective: Any
    optimizer: Any
    lr_scheduler: Any
    ema: Any
    trainable: list
    noise_scheduler: Any
    batches: Iterator
    classes: list[str]
    group_of_class: torch.Tensor  # 0/1/2 = Many/Medium/Few per class
    channels_last: bool
    info: ModelInfo
    step: int = 0
    last_good: Optional[Path] = None
    cm_classes: Optional[dict] = None  # losses.cm_class_report, for method cm
    runaway_warned: bool = False  # cm_report.warn_if_running_away fired (once per run)
    log_rows: list = field(default_factory=list)
    window: list = field(default_factory=list)  # per micro-batch outputs since the last log row
    window_start: float = field(default_factory=time.time)
    window_images: int = 0
    loss: float = float("nan")

    @property
    def out(self) -> Path:
        return self.run_dir / "diffusion"

    def due(self, every: int) -> bool:
        return self.step % every == 0 or self.step == self.cfg.steps


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
    loop = _setup(split, cfg, Path(run_dir), data_cfg, resume, from_pretrained, report_to)
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


def _setup(split: Split, cfg: TrainConfig, run_dir: Path, data_cfg: DataConfig, resume: bool,
           from_pretrained: Optional[str], report_to: Optional[str]) -> _Loop:
    """Check the run folder, build model, optimizer, EMA and data stream, and restore the last checkpoint."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration, set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from . import tracking
    from .datasets import ImageDataset, diffusion_transform
    from .devices import wants_cpu
    from .objective import DiffusionObjective

    out = run_dir / "diffusion"
    existing = checkpoint_dirs(run_dir)
    if existing and not resume:
        raise CapaugError(f"{run_dir} already holds a training run; pass --resume to continue it or use another --run")
    if resume and not existing:
        raise CapaugError(f"nothing to resume in {run_dir}: no checkpoint under {out / 'checkpoints'}")
    step = int(yaml.safe_load((existing[-1] / "state.json").read_text())["step"]) if resume else 0
    classes, counts = split.classes, split.counts("train")
    channels = 1 if split.mode == "L" else 3
    settings = _recorded(cfg, data_cfg, split, from_pretrained)
    changes = _resume_changes(out, settings, step) if resume else {}
    tracker = tracking.tracker_name(report_to)

    on_cuda = torch.cuda.is_available()
    precision, channels_last = _device_settings(cfg, on_cuda)
    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(tracking.logging_dir(run_dir)))
    accelerator = Accelerator(cpu=wants_cpu(), mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                              log_with=tracker, project_config=project)
    world, rank = accelerator.num_processes, accelerator.process_index
    if cfg.batch_size % (cfg.grad_accum * world):
        raise CapaugError(
            f"batch size {cfg.batch_size} must be divisible by grad_accum x processes = {cfg.grad_accum * world}"
        )
    set_seed(cfg.seed, device_specific=True)

    unet = build_model(cfg, len(classes), channels, from_pretrained)
    image_size = unet.config.sample_size if from_pretrained else cfg.image_size
    noise_scheduler = noise_schedule(cfg)
    stats = split.stats(data_cfg)
    objective = DiffusionObjective(unet, noise_scheduler, cfg, counts, groups=stats.groups)
    cm_classes = None
    if cfg.method == "cm":
        from .losses import cm_class_report

        cm_classes = cm_class_report(classes, counts, stats.groups, cfg.lambda_con, objective.lambda_div, cfg.lambda_div,
                                     cfg.diversity_cap)
        if accelerator.is_main_process:
            warn_about_cm_balance(cm_classes)
    if channels_last:
        unet.to(memory_format=torch.channels_last)
    if cfg.compile:
        objective = torch.compile(objective)
    trainable = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_scheduler = get_scheduler(
        "constant_with_warmup", optimizer, num_warmup_steps=cfg.warmup_steps * world, num_training_steps=cfg.steps
    )
    ema = EMAModel(trainable, decay=cfg.ema_decay, use_ema_warmup=cfg.ema_warmup)
    objective, optimizer, lr_scheduler = accelerator.prepare(objective, optimizer, lr_scheduler)
    ema.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)

    if accelerator.is_main_process:
        remove_orphans(run_dir)
    if resume:
        accelerator.load_state(str(existing[-1]))
        _apply_optimizer_settings(optimizer, lr_scheduler, cfg)
    if accelerator.is_main_process:
        from .resume import append_history

        write_yaml(out / "config.yaml", {"train": cfg.model_dump(), "data": data_cfg.model_dump(),
                                          "source": split.source, "classes": classes, "train_counts": counts,
                                          "split_hash": split.hash, "channels": channels, "image_size": image_size,
                                          "from_pretrained": from_pretrained,
                                          "lambda_div_resolved": cm_classes and cm_classes["lambda_div"]})
        if cm_classes:
            write_json(out / "cm_classes.json", cm_classes)
        append_history(out / "config_history.yaml", "resume" if resume else "start", step, changes)
    if tracker:
        accelerator.init_trackers("train", config=tracking.hyperparameters(cfg.model_dump()))

    dataset = ImageDataset(split.reader(), split.train, diffusion_transform(image_size, channels))
    sampler = StepBatchSampler(len(dataset), cfg.batch_size // cfg.grad_accum, cfg.seed, step * cfg.grad_accum,
                               rank, world)
    # its own generator: a loader iterator draws a base seed, which must not shift the global RNG on resume
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    info = ModelInfo(classes=classes, train_counts=counts, split_hash=split.hash, image_size=image_size,
                     channels=channels, method=cfg.method, base_loss=cfg.base_loss)
    return _Loop(cfg=cfg, run_dir=run_dir, accelerator=accelerator, objective=objective, optimizer=optimizer,
                 lr_scheduler=lr_scheduler, ema=ema, trainable=trainable, noise_scheduler=noise_scheduler,
                 batches=iter(loader), classes=classes, channels_last=channels_last, info=info,
                 group_of_class=torch.tensor([["many", "medium", "few"].index(g) for g in stats.groups]),
                 step=step, last_good=existing[-1] if resume else None, cm_classes=cm_classes,
                 log_rows=_read_log(out / "train_log.csv", step) if accelerator.is_main_process else [])


def _recorded(cfg: TrainConfig, data_cfg: DataConfig, split: Split, from_pretrained: Optional[str]) -> dict:
    from .resume import recorded_settings

    return recorded_settings(cfg, data_cfg, {"split_hash": split.hash, "from_pretrained": from_pretrained})


def _resume_changes(out: Path, settings: dict, step: int) -> dict:
    """The recovery changes against the run's recorded settings (a `CapaugError` for any other change)."""
    from .resume import resume_changes, saved_settings

    saved = out / "config.yaml"
    if not saved.is_file():
        raise CapaugError(f"cannot resume: {saved} is missing")
    return resume_changes(saved_settings(yaml.safe_load(saved.read_text())), settings, step)


def _apply_optimizer_settings(optimizer, lr_scheduler, cfg: TrainConfig) -> None:
    """A checkpoint restores the learning rate and weight decay it was saved with; a resume may change them."""
    schedule = lr_scheduler.scheduler
    schedule.base_lrs = [cfg.lr for _ in schedule.base_lrs]
    for group, factor in zip(optimizer.param_groups, schedule.lr_lambdas):
        group.update(initial_lr=cfg.lr, lr=cfg.lr * factor(schedule.last_epoch), weight_decay=cfg.weight_decay)
    schedule._last_lr = [group["lr"] for group in optimizer.param_groups]


def _train_step(loop: _Loop) -> None:
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


def _log_row(loop: _Loop) -> dict:
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


def _log(loop: _Loop) -> dict:
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
def _sample(loop: _Loop, per_class: int = 8) -> None:
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


def _plot_d(loop: _Loop) -> None:
    """RUN/diffusion/d_by_class.png from the log so far (method cm)."""
    if loop.cm_classes and loop.accelerator.is_main_process:
        groups = [r["group"] for r in loop.cm_classes["classes"]]
        save_d_by_class(loop.out / "d_by_class.png", loop.log_rows, loop.classes, groups)


def _checkpoint(loop: _Loop) -> None:
    """Write `checkpoints/step-N` atomically (and the d-by-class plot); a failed write (full disk) keeps the last
    good one."""
    _plot_d(loop)
    try:
        loop.last_good = _save_checkpoint(loop.accelerator, loop.run_dir, loop.step, loop.cfg.keep_checkpoints)
    except OSError as e:
        if loop.accelerator.is_main_process:
            remove_orphans(loop.run_dir)
        kept = f"the last good checkpoint is {loop.last_good}" if loop.last_good else "no checkpoint was written yet"
        raise CapaugError(f"could not write the checkpoint of step {loop.step} "
                          f"({e.strerror or e}); {kept}") from None


def _finish(loop: _Loop, t0: float) -> TrainResult:
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
