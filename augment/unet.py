"""The denoiser: a diffusers `UNet2DModel`, class-conditional with K + 1 label embeddings (index K = null class)."""

from __future__ import annotations

from diffusers import UNet2DModel

from .config import TrainConfig


def build_unet(cfg: TrainConfig, num_classes: int, channels: int) -> UNet2DModel:
    """`cfg.unet`'s shape: one DownBlock2D (AttnDownBlock2D where `attention_levels` says so) per level, up blocks
    mirrored, `num_class_embeds = num_classes + 1` so that label `num_classes` is classifier-free guidance's null."""
    shape = cfg.unet
    return UNet2DModel(
        sample_size=cfg.image_size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=tuple(shape.block_out_channels),
        layers_per_block=shape.layers_per_block,
        down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in shape.attention_levels),
        up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(shape.attention_levels)),
        attention_head_dim=shape.attention_head_dim,
        norm_num_groups=shape.norm_num_groups,
        dropout=shape.dropout,
        num_class_embeds=num_classes + 1,
    )
