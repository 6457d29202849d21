"""The network `capaug train` trains: the UNet with its capacity terms, and the noise schedule.

Shared by the training setup and by `model_io.load_capacity_model`, which rebuilds the same network to read a
checkpoint's weights into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from .config import TrainConfig
from .errors import CapaugError


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
    """The schedule trained on and saved with the model: DDPM's for eps, EDM's sigma range for edm."""
    from diffusers import DDPMScheduler

    if cfg.parameterization == "edm":
        from .edm import edm_schedule

        return edm_schedule()
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule)
