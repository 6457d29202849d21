"""Validated settings for every stage; a recipe (recipes/*.yaml) is one `Recipe`.

Every model forbids unknown keys, so a typo in a recipe or an override is an error that names the key instead
of a silently ignored setting.
"""

from __future__ import annotations

import math
import types
from typing import Annotated, Any, Literal, Optional, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    """Unknown keys are errors; numbers are never true/false and true/false is only ever a real boolean (pydantic
    alone would read `steps: true` as 1 step and `hflip: 1` as on). Numbers written as text ("1e-4") still work."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_confusion(cls, value: Any, info) -> Any:
        _check_bool_use(cls.model_fields[info.field_name].annotation, value)
        return value


def _leaves(annotation) -> list:
    """The alternatives of an annotation: `Optional[int]` -> [int, NoneType], `Annotated[X, ...]` -> X's."""
    if get_origin(annotation) is Annotated:
        return _leaves(get_args(annotation)[0])
    if get_origin(annotation) in (Union, types.UnionType):
        return [leaf for arg in get_args(annotation) for leaf in _leaves(arg)]
    return [annotation]


def _check_bool_use(annotation, value: Any) -> None:
    """Refuse true/false for a field that does not take booleans, and anything else for one that takes only them
    (list items too)."""
    leaves = [leaf for leaf in _leaves(annotation) if leaf is not type(None)]
    if isinstance(value, bool) and bool not in leaves:
        raise PydanticCustomError("bool_not_allowed", "expected {kind}, got {value}",
                                  {"kind": "a number" if {int, float} & set(leaves) else "a value, not true/false",
                                   "value": str(value).lower()})
    if leaves == [bool] and value is not None and not isinstance(value, bool):
        raise PydanticCustomError("bool_only", "expected true or false, got {value}", {"value": repr(value)})
    item_types = [get_args(leaf)[0] for leaf in leaves if get_origin(leaf) is list and get_args(leaf)]
    if isinstance(value, list) and item_types:
        for item in value:
            _check_bool_use(item_types[0], item)


def intensity_window(rule: str) -> Optional[tuple[float, float]]:
    """The fixed (LOW, HIGH) window of a `data.intensity` rule, or None for "minmax"; ValueError when malformed."""
    if rule == "minmax":
        return None
    kind, _, bounds = rule.partition(":")
    try:
        low, high = (float(v) for v in bounds.split(","))
    except ValueError:
        low = high = float("nan")
    if kind != "window" or not low < high or math.inf in (abs(low), abs(high)):
        raise ValueError(f"intensity must be 'minmax' or 'window:LOW,HIGH' with finite LOW < HIGH, got {rule!r}")
    return low, high


class DataConfig(Strict):
    """How the input is read, split and grouped (DESIGN.md, Data)."""

    val_fraction: float = Field(0.1, gt=0, lt=1, description="downstream selects its models on val, so it cannot be 0")
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    many_threshold: int = Field(100, description="more training images than this: Many")
    few_threshold: int = Field(20, description="fewer training images than this: Few")
    intensity: str = Field("minmax", description="images deeper than 8 bits to 0..255: 'minmax' per image or 'window:LOW,HIGH'")
    duplicates: Literal["error", "drop-eval"] = Field(
        "error", description="test images with a training image's pixels: stop, or drop them (and such val images) from evaluation"
    )

    @field_validator("intensity")
    @classmethod
    def _intensity_rule(cls, v: str) -> str:
        intensity_window(v)
        return v

    @model_validator(mode="after")
    def _train_left(self):
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be below 1, got {self.val_fraction} + {self.test_fraction}")
        return self


class UNetConfig(Strict):
    """The diffusers UNet2DModel shape; class conditioning is added from the data (K + 1 embeddings)."""

    block_out_channels: list[int] = [32, 64]
    layers_per_block: int = 1
    attention_levels: list[bool] = [False, True]
    attention_head_dim: int = 8
    norm_num_groups: int = Field(8, ge=1)
    dropout: float = 0.0

    @field_validator("attention_levels")
    @classmethod
    def _same_length(cls, v, info):
        channels = info.data.get("block_out_channels")
        if channels is not None and len(v) != len(channels):
            raise ValueError("attention_levels needs one entry per block_out_channels entry")
        return v

    @model_validator(mode="after")
    def _groups_divide_channels(self):
        """GroupNorm splits each block's channels into norm_num_groups equal groups."""
        groups, channels = self.norm_num_groups, self.block_out_channels
        if any(c % groups for c in channels):
            fits = max(d for d in range(1, groups + 1) if math.gcd(*channels) % d == 0)
            raise ValueError(f"norm_num_groups {groups} does not divide every block_out_channels entry {channels} "
                             f"(GroupNorm needs whole groups); e.g. norm_num_groups {fits} does")
        return self


class TrainConfig(Strict):
    """`capaug train`: the CM method of DESIGN.md and its training loop."""

    method: Literal["cm", "lowrank", "plain"] = Field("cm", description="lowrank: the low-rank terms without L_CM (ablation)")
    base_loss: Literal["ddpm", "cbdm", "oc"] = "ddpm"
    rho: float = Field(0.1, gt=0, le=1)
    targets: list[str] = ["up"]
    lambda_con: float = 1.0
    lambda_div: float | Literal["auto"] = Field(0.2, description="auto: N* between the Few and Medium groups")
    diversity_cap: Optional[float] = Field(None, gt=0, description="m: a diversifying sample's d counts up to m "
                                           "(L_CM bounded below); None: DESIGN.md's linear L_CM")
    cm_fraction: float = Field(1.0, gt=0, le=1)
    cbdm_tau: float = 1.0
    cbdm_gamma: float = 0.25
    p_uncond: float = Field(0.1, ge=0, lt=1)
    image_size: int = Field(32, ge=8, description="any size the UNet halves cleanly: divisible by 2^(levels - 1)")
    unet: UNetConfig = UNetConfig()
    parameterization: Literal["eps", "edm"] = Field("eps", description="eps: DDPM noise prediction; edm: Karras et "
                                                    "al. 2022 preconditioning, noise levels and loss (augment/edm.py)")
    loss_weighting: Literal["none", "min_snr"] = "none"
    snr_gamma: float = Field(5.0, gt=0, description="min_snr: w(t) = min(SNR, gamma) / SNR")
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
    num_workers: int = Field(0, ge=0)
    log_every: int = Field(10, ge=1)
    sample_every: int = Field(1000, ge=1, description="the last step always gets a grid; a large value: only that one")
    checkpoint_every: int = Field(1000, ge=1)
    keep_checkpoints: int = Field(2, ge=1)

    @field_validator("lambda_div", mode="before")
    @classmethod
    def _number_or_auto(cls, v):
        if v == "auto" or isinstance(v, bool):  # true/false: refused by Strict's rule
            return v
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ValueError(f"lambda_div must be a number or 'auto', got {v!r}") from None

    @model_validator(mode="after")
    def _edm_takes_its_own_loss(self):
        """EDM's lambda(sigma) already weights every noise level (min-SNR would weight twice), and CBDM's t/T and
        OC's abar_t are defined on the DDPM schedule."""
        if self.parameterization == "edm":
            if self.loss_weighting != "none":
                raise ValueError(f"loss_weighting {self.loss_weighting} is for parameterization eps; edm weights its "
                                 "loss by lambda(sigma) (use loss_weighting none)")
            if self.base_loss != "ddpm":
                raise ValueError(f"base_loss {self.base_loss} is defined on the DDPM schedule; parameterization edm "
                                 "trains base_loss ddpm (the EDM denoising loss)")
        return self

    @model_validator(mode="after")
    def _unet_fits_image(self):
        factor = 2 ** (len(self.unet.block_out_channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by {factor}: a UNet with "
                             f"{len(self.unet.block_out_channels)} levels halves it {factor.bit_length() - 1} times")
        return self


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
    source: Literal["noise", "minority", "majority"] = Field(
        "noise", description="start from pure noise, or from a training image of the class / of a larger class (SDEdit)")
    strength: list[float] = Field([0.5], description="minority/majority: noise level(s) in (0, 1], image i uses "
                                  "strength[i % len]; 1 = from noise. Text '0.3,0.5' is read as a list")

    @field_validator("strength", mode="before")
    @classmethod
    def _strength_list(cls, value: Any) -> Any:
        """'0.3,0.5,0.7' (the CLI, --set) or one number -> a list of numbers."""
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return [value]
        if not isinstance(value, str):
            return value
        parts = [part.strip() for part in value.split(",")] if value.strip() else []
        try:
            return [float(part) for part in parts]
        except ValueError:
            raise ValueError(f"strength must be numbers in (0, 1] separated by commas, got {value!r}") from None

    @field_validator("strength")
    @classmethod
    def _strength_range(cls, value: list[float]) -> list[float]:
        if not value:
            raise ValueError("give at least one strength in (0, 1]")
        bad = [v for v in value if not 0 < v <= 1]  # also nan
        if bad:
            raise ValueError(f"each strength lies in (0, 1], got {bad[0]:g}")
        return value


class FeatureSynthesisConfig(Strict):
    """The `synthetic-features` arm's generator: a class-conditional diffusion MLP on the classifier's pooled
    features (classifier/feature_synthesis.py), trained with the CM method of `TrainConfig` on its linear layers."""

    target: str = Field("balanced", description="synthesis target policy (as synthesize.target) for the features")
    method: Literal["cm", "plain"] = "cm"
    rho: float = Field(0.1, gt=0, le=1)
    targets: list[str] = Field(["blocks.*"], description="fnmatch patterns on the MLP's linear layers to give terms")
    lambda_con: float = 1.0
    lambda_div: float | Literal["auto"] = Field("auto", description="auto: N* between the Few and Medium groups")
    diversity_cap: Optional[float] = Field(0.01, gt=0, description="m (as train.diversity_cap); None: the linear "
                                           "L_CM, which ran away on digits-lt features (Few features off the data)")
    p_uncond: float = Field(0.1, ge=0, lt=1)
    hidden: int = Field(256, ge=8, description="width of the denoiser's residual blocks")
    depth: int = Field(2, ge=1, description="residual blocks")
    steps: int = Field(1000, ge=1, description="denoiser optimizer steps (the generator's cost)")
    batch_size: int = Field(128, ge=1)
    lr: float = Field(1e-3, gt=0)
    num_train_timesteps: int = Field(1000, ge=2)
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    sample_steps: int = Field(100, ge=1, description="DDPM sampling steps")
    guidance: float = Field(1.0, ge=0, description="classifier-free guidance scale (1: conditional only)")

    @field_validator("lambda_div", mode="before")
    @classmethod
    def _number_or_auto(cls, v):
        return TrainConfig._number_or_auto(v)

    @field_validator("target")
    @classmethod
    def _target_policy(cls, v: str) -> str:
        """A malformed policy fails here, not after an arm's first phase (a file is read when it is used)."""
        from .errors import CapaugError
        from .targets import plan_targets

        if not v.strip().lower().endswith((".yaml", ".yml", ".json")):
            try:
                plan_targets(["class"], [1], v)
            except CapaugError as e:
                raise ValueError(str(e)) from None
        return v


class DownstreamConfig(Strict):
    """`capaug downstream`: the classifier arms (DESIGN.md, Downstream evaluation)."""

    model: str = "resnet18"
    pretrained: bool = False
    weights: Optional[str] = None
    image_size: Optional[int] = None
    epochs: int = Field(30, ge=1, description="budget in epochs of the real training split: epochs x ceil(n_real / batch) steps per model")
    batch_size: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = 0.05
    seeds: Optional[int] = Field(None, ge=1, description="default: 5 for a classifier input <= 64 px, else 3")
    arms: list[str] = ["real", "reweight", "oversample", "synthetic"]
    tune: bool = Field(False, description="add the arm `tuned`: the tune_grid setting with the best mean val score")
    tune_grid: list[str] = ["synthetic", "synthetic[w=0.5]", "synthetic+la", "synthetic+la[w=0.5]",
                            "synthetic+la+filter", "synthetic+la+crt"]
    tune_seeds: Optional[int] = Field(2, ge=1, description="score the grid on val over seeds 0..tune_seeds-1 only; "
                                      "the chosen setting then trains every seed (None: all seeds)")
    tune_sets: list[str] = Field([], description="tune over synthesis settings too: SOURCE[@STRENGTH[+STRENGTH...]] "
                                 "entries (noise, minority@0.5), each made once into RUN/synthetic-<name>/")
    bootstrap: int = Field(1000, ge=0, description="test-image bootstrap resamples per paired difference")
    reweight: Literal["class-balanced", "logit-adjusted"] = "logit-adjusted"
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    num_workers: int = 0
    cache_mb: float = Field(2048, ge=0, description="hold the split's decoded images in memory up to this size")
    features: FeatureSynthesisConfig = FeatureSynthesisConfig()


class Recipe(Strict):
    """A named preset for the whole pipeline; any value can be overridden from the command line."""

    description: str = ""
    dataset: Optional[str] = None
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    synthesize: SynthesisConfig = SynthesisConfig()
    downstream: DownstreamConfig = DownstreamConfig()
