"""Everything `train()` needs before its first step: run folder checks, the Accelerator, model, optimizer,
learning-rate schedule, EMA, the data stream, and the restored checkpoint on `--resume`.

`setup_training` returns a `TrainLoop`, the state the loop's steps in `train.py` share.
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import yaml

from .checkpoints import checkpoint_dirs, remove_orphans
from .cm_report import warn_about_cm_balance
from .config import DataConfig, TrainConfig
from .errors import CapaugError
from .io import write_json, write_yaml
from .model_build import build_model, noise_schedule
from .model_io import ModelInfo
from .split import Split


@dataclass
class TrainLoop:
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


# --------------------------------------------------------------------------- setup


def setup_training(split: Split, cfg: TrainConfig, run_dir: Path, data_cfg: DataConfig, resume: bool,
                   from_pretrained: Optional[str], report_to: Optional[str]) -> TrainLoop:
    """Check the run folder, build model, optimizer, EMA and data stream, and restore the last checkpoint."""
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from . import tracking
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
    accelerator = _accelerator(cfg, run_dir, precision, tracker)
    world, rank = accelerator.num_processes, accelerator.process_index
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

    loader = _data_loader(split, cfg, image_size, channels, step, rank, world)
    info = ModelInfo(classes=classes, train_counts=counts, split_hash=split.hash, image_size=image_size,
                     channels=channels, method=cfg.method, base_loss=cfg.base_loss,
                     parameterization=cfg.parameterization)
    return TrainLoop(cfg=cfg, run_dir=run_dir, accelerator=accelerator, objective=objective, optimizer=optimizer,
                     lr_scheduler=lr_scheduler, ema=ema, trainable=trainable, noise_scheduler=noise_scheduler,
                     batches=iter(loader), classes=classes, channels_last=channels_last, info=info,
                     group_of_class=torch.tensor([["many", "medium", "few"].index(g) for g in stats.groups]),
                     step=step, last_good=existing[-1] if resume else None, cm_classes=cm_classes,
                     log_rows=read_log(out / "train_log.csv", step) if accelerator.is_main_process else [])


def _device_settings(cfg: TrainConfig, on_cuda: bool) -> tuple[str, bool]:
    precision = cfg.mixed_precision if cfg.mixed_precision != "auto" else ("bf16" if on_cuda else "no")
    channels_last = cfg.channels_last == "yes" or (cfg.channels_last == "auto" and on_cuda)
    return precision, channels_last


def _accelerator(cfg: TrainConfig, run_dir: Path, precision: str, tracker: Optional[str]):
    """The Accelerator of this run; `cfg.batch_size` must split evenly over micro-batches and processes."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from .devices import wants_cpu
    from .tracking import logging_dir

    project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(logging_dir(run_dir)))
    accelerator = Accelerator(cpu=wants_cpu(), mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum,
                              log_with=tracker, project_config=project)
    if cfg.batch_size % (cfg.grad_accum * accelerator.num_processes):
        raise CapaugError(f"batch size {cfg.batch_size} must be divisible by grad_accum x processes = "
                          f"{cfg.grad_accum * accelerator.num_processes}")
    return accelerator


def _data_loader(split: Split, cfg: TrainConfig, image_size: int, channels: int, step: int, rank: int, world: int):
    """The endless stream of this process's micro-batches, from optimizer step `step` on."""
    from .datasets import ImageDataset, diffusion_transform

    dataset = ImageDataset(split.reader(), split.train, diffusion_transform(image_size, channels))
    sampler = StepBatchSampler(len(dataset), cfg.batch_size // cfg.grad_accum, cfg.seed, step * cfg.grad_accum,
                               rank, world)
    # its own generator: a loader iterator draws a base seed, which must not shift the global RNG on resume
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                       persistent_workers=cfg.num_workers > 0,
                                       generator=torch.Generator().manual_seed(cfg.seed))


# --------------------------------------------------------------------------- resume


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


def read_log(path: Path, upto_step: int) -> list[dict]:
    """The rows of train_log.csv up to `upto_step` (a resumed run drops the rows after its checkpoint)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto_step]
