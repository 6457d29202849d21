"""The folded model folder that `capaug train` writes and `capaug synthesize` / `evaluate` read.

Layout of `RUN/diffusion/model/`:
  config.json, diffusion_pytorch_model.safetensors   a plain diffusers UNet2DModel (save_pretrained)
  scheduler/scheduler_config.json                    the training noise schedule (DDPMScheduler; EDMEulerScheduler
                                                     for parameterization edm, whose config builds either EDM sampler)
  capaug.json                                        what a plain UNet does not know (see `ModelInfo`)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import CapaugError
from .io import atomic_dir, write_json

FORMAT = "capaug-diffusion/1"
WEIGHTS = "diffusion_pytorch_model.safetensors"


@dataclass
class ModelInfo:
    """Class names and provenance of a folded model; `null_class` (= K) is the unconditional label."""

    classes: list[str]
    train_counts: list[int]
    split_hash: str
    image_size: int
    channels: int
    method: str = "cm"
    base_loss: str = "ddpm"
    parameterization: str = "eps"  # eps (the UNet predicts noise) or edm (the UNet is EDM's F: augment/edm.py)
    step: int = 0
    model_hash: str = ""
    format: str = FORMAT
    extra: dict = field(default_factory=dict)

    @property
    def null_class(self) -> int:
        return len(self.classes)


def file_hash(path: str | Path, length: int = 16) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def save_diffusion_model(unet, noise_scheduler, info: ModelInfo, folder: str | Path) -> ModelInfo:
    """Write a plain (already folded) UNet2DModel, its schedule and `capaug.json`, atomically as one folder."""
    with atomic_dir(folder) as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
        noise_scheduler.save_pretrained(tmp / "scheduler")
        info.model_hash = file_hash(tmp / WEIGHTS)
        write_json(tmp / "capaug.json", asdict(info))
    return info


def read_model_info(folder: str | Path) -> ModelInfo:
    folder = Path(folder)
    if not folder.is_dir():
        raise CapaugError(f"model folder {folder} does not exist; run `capaug train` first or pass --model")
    meta = folder / "capaug.json"
    if not meta.is_file() or not (folder / WEIGHTS).is_file():
        raise CapaugError(f"{folder} is not a capaug model folder (needs capaug.json and {WEIGHTS})")
    try:
        data = json.loads(meta.read_text())
        info = ModelInfo(**data)
    except (json.JSONDecodeError, TypeError) as e:
        raise CapaugError(f"{meta} is unreadable: {e}") from None
    if info.format != FORMAT:
        raise CapaugError(f"{folder} has model format {info.format!r}; this capaug reads {FORMAT!r}")
    return info


def load_diffusion_model(folder: str | Path, device="cpu"):
    """Return (UNet2DModel in eval mode, its noise schedule, ModelInfo) from a folded model folder; the schedule is a
    DDPMScheduler, or an EDMEulerScheduler for parameterization edm (`sampling.make_sampler` reads either)."""
    from diffusers import DDPMScheduler, EDMEulerScheduler, UNet2DModel

    info = read_model_info(folder)
    folder = Path(folder)
    unet = UNet2DModel.from_pretrained(folder).to(device).eval()
    schedule = EDMEulerScheduler if info.parameterization == "edm" else DDPMScheduler
    scheduler = schedule.from_pretrained(folder / "scheduler")
    return unet, scheduler, info


WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP and torch.compile wrap the saved module under these names


def unwrapped_key(key: str) -> str:
    """`module._orig_mod.unet.conv_in.weight` -> `unet.conv_in.weight`."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def load_capacity_model(run_dir: str | Path, use_ema: bool = True):
    """The last training checkpoint's UNet with its capacity terms still separate (theta_g and theta_e apart),
    for analyses; checkpoints written under DDP or torch.compile load too.

    Returns (unet in eval mode, noise scheduler, config dict from RUN/diffusion/config.yaml).
    """
    import torch
    import yaml
    from safetensors.torch import load_file

    from .checkpoints import checkpoint_dirs
    from .config import TrainConfig
    from .model_build import build_model, noise_schedule

    run_dir = Path(run_dir)
    found = checkpoint_dirs(run_dir)
    if not found:
        raise CapaugError(f"no training checkpoint in {run_dir / 'diffusion' / 'checkpoints'}")
    saved = yaml.safe_load((run_dir / "diffusion" / "config.yaml").read_text())
    cfg = TrainConfig.model_validate(saved["train"])
    unet = build_model(cfg, len(saved["classes"]), saved["channels"], saved.get("from_pretrained"))
    state = {unwrapped_key(k): v for k, v in load_file(str(found[-1] / "model.safetensors")).items()}
    unet.load_state_dict({k.removeprefix("unet."): v for k, v in state.items() if k.startswith("unet.")})
    if use_ema:
        ema_state = torch.load(found[-1] / "custom_checkpoint_0.pkl", map_location="cpu", weights_only=False)
        trainable = [p for p in unet.parameters() if p.requires_grad]
        for p, shadow in zip(trainable, ema_state["shadow_params"]):
            p.data.copy_(shadow)
    return unet.eval(), noise_schedule(cfg), saved
