"""`capaug train`: the whole training loop, readable in one sitting.

One optimizer step = `grad_accum` micro-batches on every process; `cfg.batch_size` is the global batch of one
optimizer step, so a recipe means the same thing on one CPU or eight GPUs. The data order is a pure function
of (seed, step), which makes `--resume` exact without saving loader state.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import yaml

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
    """The UNet with capacity terms attached for `cm` (two sets and a frozen base for the LoRA variant)."""
    from .capacity import add_capacity, freeze_base
    from .unet import build_unet

    if from_pretrained:
        unet, new_class_table = _pretrained_unet(from_pretrained, num_classes, channels)
        add_capacity(unet, cfg.rho, cfg.targets, sets=("general", "expert") if cfg.method == "cm" else ("general",))
        freeze_base(unet, train_class_embedding=new_class_table)
    else:
        unet = build_unet(cfg, num_classes, channels)
        if cfg.method == "cm":
            add_capacity(unet, cfg.rho, cfg.targets)
    return unet


def noise_schedule(cfg: TrainConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)


def fold_copy(unet):
    """A plain UNet2DModel with every capacity term folded into its weights (the input is left untouched)."""
    from .capacity import fold_capacity

    return fold_capacity(copy.deepcopy(unet).float().to("cpu", memory_format=torch.contiguous_format))


# --------------------------------------------------------------------------- logging helpers


def _group_means(d: torch.Tensor, labels: torch.Tensor, group_of_class: torch.Tensor) -> list[float]:
    """Mean on/off disagreement d over the samples of each Many/Medium/Few group (NaN where absent)."""
    out = []
    for g in range(3):
        mask = (group_of_class[labels] == g) & torch.isfinite(d)
        out.append(float(d[mask].mean()) if mask.any() else float("nan"))
    return out


def _read_log(path: Path, upto_step: int) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [row for row in csv.DictReader(f) if int(row["step"]) <= upto_step]


def _write_log(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(x: float) -> str:
    return "nan" if x != x else f"{x:.6g}"


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
) -> TrainResult:
    """Train `cfg.method` on the split's training images; write checkpoints, logs, grids and the folded model.

    `callback` receives {"step", "total", "loss", "images_per_s", ...} after every optimizer step (progress bars).
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    from .datasets import ImageDataset, diffusion_transform
    from .devices import wants_cpu
    from .objective import DiffusionObjective

    run_dir = Path(run_dir)
    out = run_dir / "diffusion"
    log_path = out / "train_log.csv"
    existing = checkpoint_dirs(run_dir)
    if existing and not resume:
        raise CapaugError(f"{run_dir} already holds a training run; pass --resume to continue it or use another --run")
    if resume and not existing:
        raise CapaugError(f"nothing to resume in {run_dir}: no checkpoint under {out / 'checkpoints'}")

    on_cuda = torch.cuda.is_available()
    precision, channels_last = _device_settings(cfg, on_cuda)
    accelerator = Accelerator(cpu=wants_cpu(), mixed_precision=precision, gradient_accumulation_steps=cfg.grad_accum)
    world, rank = accelerator.num_processes, accelerator.process_index
    micro_global = cfg.batch_size // cfg.grad_accum
    if cfg.batch_size % (cfg.grad_accum * world):
        raise CapaugError(
            f"batch size {cfg.batch_size} must be divisible by grad_accum x processes = {cfg.grad_accum * world}"
        )
    set_seed(cfg.seed, device_specific=True)

    classes, counts = split.classes, split.counts("train")
    stats = split.stats(data_cfg)
    channels = 1 if split.mode == "L" else 3
    unet = build_model(cfg, len(classes), channels, from_pretrained)
    image_size = unet.config.sample_size if from_pretrained else cfg.image_size
    scheduler = noise_schedule(cfg)
    objective = DiffusionObjective(unet, scheduler, cfg, counts)
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

    step = 0
    if resume:
        last = existing[-1]
        accelerator.load_state(str(last))
        step = int(yaml.safe_load((last / "state.json").read_text())["step"])
    log_rows = _read_log(log_path, step) if accelerator.is_main_process else []
    if accelerator.is_main_process:
        write_yaml(out / "config.yaml", {"train": cfg.model_dump(), "data": data_cfg.model_dump(),
                                          "source": split.source, "classes": classes, "train_counts": counts,
                                          "split_hash": split.hash, "channels": channels, "image_size": image_size,
                                          "from_pretrained": from_pretrained})

    dataset = ImageDataset(split.reader(), split.train, diffusion_transform(image_size, channels))
    sampler = StepBatchSampler(len(dataset), micro_global, cfg.seed, step * cfg.grad_accum, rank, world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=cfg.num_workers,
                                         persistent_workers=cfg.num_workers > 0)
    group_of_class = torch.tensor([["many", "medium", "few"].index(g) for g in stats.groups])

    window: list[dict] = []
    t0, window_start, window_images = time.time(), time.time(), 0
    last_good = existing[-1] if resume else None
    loss_value = float("nan")
    batches = iter(loader)
    while step < cfg.steps:
        for _ in range(cfg.grad_accum):
            x0, y = next(batches)
            x0, y = x0.to(accelerator.device), y.to(accelerator.device)
            if cfg.hflip:
                flip = torch.rand(len(x0), device=x0.device) < 0.5
                x0 = torch.where(flip[:, None, None, None], x0.flip(-1), x0)
            if channels_last:
                x0 = x0.contiguous(memory_format=torch.channels_last)
            with accelerator.accumulate(objective):
                result = objective(x0, y)
                loss = result["loss"]
                finite = accelerator.gather(loss.detach().float().reshape(1)).isfinite().all()
                if not finite:
                    where = f"; the last good checkpoint is {last_good}" if last_good else "; no checkpoint was written yet"
                    raise CapaugError(f"training stopped: the loss became {loss.item()} at step {step + 1}{where}")
                accelerator.backward(loss)
                if accelerator.sync_gradients and cfg.grad_clip > 0:
                    accelerator.clip_grad_norm_(trainable, cfg.grad_clip)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            window.append({k: v.detach().float().cpu() for k, v in result.items() if k != "loss"} | {"y": y.cpu()})
            window_images += len(x0) * world
        ema.step(trainable)
        step += 1
        loss_value = float(loss.detach())

        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.time() - window_start
            d = torch.cat([w["d"] for w in window])
            row = {"step": step, "loss": float(torch.stack([w["loss_base"] + w["loss_cm"] for w in window]).mean()),
                   "loss_base": float(torch.stack([w["loss_base"] for w in window]).mean()),
                   "loss_cm": float(torch.stack([w["loss_cm"] for w in window]).mean()),
                   "lr": lr_scheduler.get_last_lr()[0], "images_per_s": window_images / max(elapsed, 1e-9)}
            row.update(zip(["d_many", "d_medium", "d_few"],
                           _group_means(d, torch.cat([w["y"] for w in window]), group_of_class)))
            log_rows.append({k: _fmt(v) if isinstance(v, float) else v for k, v in row.items()})
            window, window_start, window_images = [], time.time(), 0
            if accelerator.is_main_process:
                _write_log(log_path, log_rows)
            if callback:
                callback(row | {"total": cfg.steps})
        elif callback:
            callback({"step": step, "total": cfg.steps, "loss": loss_value})

        if step % cfg.sample_every == 0 or step == cfg.steps:
            _sample_grid(accelerator, unet_of(objective, accelerator), scheduler, ema, trainable, classes,
                         out / "samples" / f"step-{step}.png")
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            last_good = _save_checkpoint(accelerator, run_dir, step, cfg.keep_checkpoints)

    model_dir = out / "model"
    if accelerator.is_main_process:
        trained = unet_of(objective, accelerator)
        with ema_weights(ema, trainable):
            folded = fold_copy(trained)
        info = ModelInfo(classes=classes, train_counts=counts, split_hash=split.hash, image_size=image_size,
                         channels=channels, method=cfg.method, base_loss=cfg.base_loss, step=step)
        save_diffusion_model(folded, scheduler, info, model_dir)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return TrainResult(step=step, model_dir=model_dir, log_path=log_path, final_loss=loss_value,
                       seconds=time.time() - t0, unet=unet_of(objective, accelerator))


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


@torch.no_grad()
def _sample_grid(accelerator, unet, scheduler, ema, trainable, classes: list[str], path: Path, per_class: int = 8) -> None:
    """EMA samples, one row per class, fixed seeds (so grids of successive steps are comparable)."""
    if not accelerator.is_main_process:
        return
    from .grids import save_grid
    from .sampling import generate

    labels = [c for c in range(len(classes)) for _ in range(per_class)]
    with ema_weights(ema, trainable):
        images = generate(unet, scheduler, labels, list(range(len(labels))), sampler="dpmsolver++", steps=25,
                          guidance=1.0, null_class=len(classes), device=accelerator.device)
    save_grid(path, list(images.reshape(len(classes), per_class, *images.shape[1:])), pad=1)


# --------------------------------------------------------------------------- analysis access


def load_capacity_model(run_dir: str | Path, use_ema: bool = True):
    """The last checkpoint's UNet with its capacity terms still separate (theta_g and theta_e apart).

    Returns (unet in eval mode, noise scheduler, config dict from RUN/diffusion/config.yaml).
    """
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    found = checkpoint_dirs(run_dir)
    if not found:
        raise CapaugError(f"no training checkpoint in {run_dir / 'diffusion' / 'checkpoints'}")
    saved = yaml.safe_load((run_dir / "diffusion" / "config.yaml").read_text())
    cfg = TrainConfig.model_validate(saved["train"])
    unet = build_model(cfg, len(saved["classes"]), saved["channels"], saved.get("from_pretrained"))
    state = load_file(str(found[-1] / "model.safetensors"))
    unet.load_state_dict({k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")})
    if use_ema:
        ema_state = torch.load(found[-1] / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)
        trainable = [p for p in unet.parameters() if p.requires_grad]
        for p, shadow in zip(trainable, ema_state["shadow_params"]):
            p.data.copy_(shadow)
    return unet.eval(), noise_schedule(cfg), saved

