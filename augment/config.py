"""Validated settings for every stage; a recipe (recipes/*.yaml) is one `Recipe`.

Every model forbids unknown keys, so a typo in a recipe or an override is an error that names the key instead
of a silently ignored setting.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, field_validator


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    """How the input is split and grouped (DESIGN.md, Data)."""

    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    many_threshold: int = Field(100, description="more training images than this: Many")
    few_threshold: int = Field(20, description="fewer training images than this: Few")


class UNetConfig(Strict):
    """The diffusers UNet2DModel shape; class conditioning is added from the data (K + 1 embeddings)."""

    block_out_channels: list[int] = [32, 64]
    layers_per_block: int = 1
    attention_levels: list[bool] = [False, True]
    attention_head_dim: int = 8
    norm_num_groups: int = 8
    dropout: float = 0.0

    @field_validator("attention_levels")
    @classmethod
    def _same_length(cls, v, info):
        channels = info.data.get("block_out_channels")
        if channels is not None and len(v) != len(channels):
            raise ValueError("attention_levels needs one entry per block_out_channels entry")
        return v


class TrainConfig(Strict):
    """`capaug train`: the CM method of DESIGN.md and its training loop."""

    method: Literal["cm", "plain"] = "cm"
    base_loss: Literal["ddpm", "cbdm", "oc"] = "ddpm"
    rho: float = Field(0.1, gt=0, le=1)
    targets: list[str] = ["up"]
    lambda_con: float = 1.0
    lambda_div: float = 0.2
    cm_fraction: float = Field(1.0, gt=0, le=1)
    cbdm_tau: float = 1.0
    cbdm_gamma: float = 0.25
    p_uncond: float = Field(0.1, ge=0, lt=1)
    image_size: int = Field(32, ge=8)
    unet: UNetConfig = UNetConfig()
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    steps: int = Field(20000, ge=1)
    batch_size: int = Field(64, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(2e-4, gt=0)
    warmup_steps: int = Field(500, ge=0)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = Field(0.9999, ge=0, lt=1)
    ema_warmup: bool = True
    seed: int = 0
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", "yes", "no"] = "auto"
    compile: bool = False
    hflip: bool = False
    num_workers: int = 0
    log_every: int = 10
    sample_every: int = 1000
    checkpoint_every: int = 1000
    keep_checkpoints: int = Field(2, ge=1)


class SynthesisConfig(Strict):
    """`capaug synthesize`: target policy and sampler (DESIGN.md, Synthesis)."""

    target: str = "balanced"
    sampler: Literal["dpmsolver++", "ddim", "ddpm"] = "dpmsolver++"
    steps: int = Field(25, ge=1)
    guidance: float = Field(1.0, ge=0)
    batch_size: int = Field(64, ge=1)
    seed: int = 0
    resize: bool = False
    near_copy_threshold: Optional[float] = Field(None, gt=0, description="drop images closer than this to a training image")
    audit_threshold: float = Field(0.02, gt=0, description="RMS pixel distance below which the audit counts a near-copy")
    filter_confidence: float = Field(0.9, gt=0, le=1)


class DownstreamConfig(Strict):
    """`capaug downstream`: the classifier arms (DESIGN.md, Downstream evaluation)."""

    model: str = "resnet18"
    pretrained: bool = False
    weights: Optional[str] = None
    image_size: Optional[int] = None
    epochs: int = Field(30, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 0.05
    seeds: int = Field(3, ge=1)
    arms: list[str] = ["real", "reweight", "oversample", "synthetic"]
    reweight: Literal["class-balanced", "logit-adjusted"] = "logit-adjusted"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    num_workers: int = 0
    cache_mb: float = Field(2048, ge=0, description="hold the split's decoded images in memory up to this size")


class Recipe(Strict):
    """A named preset for the whole pipeline; any value can be overridden from the command line."""

    description: str = ""
    dataset: Optional[str] = None
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    synthesize: SynthesisConfig = SynthesisConfig()
    downstream: DownstreamConfig = DownstreamConfig()
