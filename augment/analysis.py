"""`capaug analyze capacity`: where a trained model keeps each class's knowledge (the paper's evidence).

Two diagnostics, both read off the per-class denoising loss on one fixed probe (the same real images, timesteps
and noise for every model compared, so differences come from the weights alone):
- pruning: zero the p% smallest-magnitude conv/linear weights of the folded model (one global threshold) and
  measure each class's relative loss increase; classes that live in few, small weights suffer first;
- theta split (CM models): the loss with theta_g alone (expert gate 0) against theta_g + theta_e; Few classes
  should depend on theta_e far more than Many classes.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from .capacity import CAPACITY_METHODS
from .errors import CapaugError
from .io import save_figure, write_json
from .runlock import locks_run

DEFAULT_PRUNE_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.5)
GROUPS = ("many", "medium", "few")


@dataclass
class DenoisingProbe:
    """Fixed (x0, label, t, noise) draws; every model is scored on exactly these."""

    x0: torch.Tensor
    labels: torch.Tensor
    timesteps: torch.Tensor
    noise: torch.Tensor


def make_probe(x0: torch.Tensor, labels: torch.Tensor, num_train_timesteps: int, draws: int = 4, seed: int = 0):
    """Repeat each image `draws` times with its own seeded uniform timestep and Gaussian noise."""
    gen = torch.Generator().manual_seed(seed)
    x0 = x0.float().repeat_interleave(draws, dim=0)
    return DenoisingProbe(
        x0=x0,
        labels=labels.long().repeat_interleave(draws),
        timesteps=torch.randint(0, num_train_timesteps, (len(x0),), generator=gen),
        noise=torch.randn(x0.shape, generator=gen),
    )


@torch.no_grad()
def per_class_loss(unet, noise_scheduler, probe: DenoisingProbe, num_classes: int, batch_size: int = 128):
    """Mean eps-prediction MSE per class over the probe ((K,) float array, NaN for classes not in the probe)."""
    device = next(unet.parameters()).device
    sums, counts = torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes, dtype=torch.float64)
    for i in range(0, len(probe.x0), batch_size):
        x0, noise = probe.x0[i : i + batch_size].to(device), probe.noise[i : i + batch_size].to(device)
        t, y = probe.timesteps[i : i + batch_size].to(device), probe.labels[i : i + batch_size]
        eps = unet(noise_scheduler.add_noise(x0, noise, t), t, class_labels=y.to(device)).sample
        mse = (eps.float() - noise).pow(2).flatten(1).mean(dim=1).double().cpu()
        sums.index_add_(0, y, mse)
        counts.index_add_(0, y, torch.ones_like(mse))
    return (sums / counts).numpy()


def prune_smallest(unet, fraction: float):
    """A copy of `unet` with the `fraction` smallest-magnitude conv and linear weights (global ranking) zeroed."""
    from torch.nn.utils import prune

    pruned = copy.deepcopy(unet)
    weights = [(m, "weight") for m in pruned.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    prune.global_unstructured(weights, pruning_method=prune.L1Unstructured, amount=float(fraction))
    for module, name in weights:
        prune.remove(module, name)
    return pruned


def relative_increase(loss: np.ndarray, base: np.ndarray) -> np.ndarray:
    return loss / base - 1.0


def group_means(values: np.ndarray, groups: Sequence[str]) -> dict:
    """Mean of a per-class value over each Many/Medium/Few group present."""
    groups = np.asarray(groups)
    return {g: float(np.nanmean(values[groups == g])) for g in GROUPS if (groups == g).any()}


def rank_correlation(counts: Sequence[int], values: np.ndarray) -> Optional[float]:
    """Spearman correlation of a per-class value with class count (negative: rarer classes are hit harder)."""
    from scipy.stats import spearmanr

    finite = np.isfinite(values)
    if finite.sum() < 3 or len(set(np.asarray(counts)[finite])) < 2 or len(set(values[finite])) < 2:
        return None
    return float(spearmanr(np.asarray(counts)[finite], values[finite]).statistic)


def pruning_sensitivity(unet, noise_scheduler, probe, num_classes, fractions, batch_size: int = 128) -> dict:
    """Per-class loss of the unpruned model and, for each fraction, of the pruned copy and its relative increase."""
    base = per_class_loss(unet, noise_scheduler, probe, num_classes, batch_size)
    losses = {f: per_class_loss(prune_smallest(unet, f), noise_scheduler, probe, num_classes, batch_size)
              for f in fractions}
    return {"base_loss": base, "loss": losses, "relative_increase": {f: relative_increase(l, base) for f, l in losses.items()}}


def capacity_split(unet, noise_scheduler, probe, num_classes, batch_size: int = 128) -> dict:
    """Per-class loss with theta_g + theta_e (gate 1) and theta_g alone (gate 0), and the relative increase."""
    from .capacity import capacity_gate

    with capacity_gate(unet, 1.0):
        full = per_class_loss(unet, noise_scheduler, probe, num_classes, batch_size)
    with capacity_gate(unet, 0.0):
        general = per_class_loss(unet, noise_scheduler, probe, num_classes, batch_size)
    return {"loss_theta_g_plus_e": full, "loss_theta_g": general, "relative_increase": relative_increase(general, full)}


# --------------------------------------------------------------------------- the run folder


def _probe_from_split(split, saved: dict, part: str, images_per_class: int, draws: int, seed: int):
    """Up to `images_per_class` seeded images of each class from a split part, in the model's input space."""
    from .datasets import diffusion_transform

    items = getattr(split, part)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(len(split.classes)):
        keys = [key for key, y in items if y == label]
        picked = rng.choice(len(keys), size=min(images_per_class, len(keys)), replace=False) if keys else []
        chosen += [(keys[i], label) for i in sorted(picked)]
    transform, reader = diffusion_transform(saved["image_size"], saved["channels"]), split.reader()
    x0 = torch.stack([transform(reader.read(key)) for key, _ in chosen])
    labels = torch.tensor([label for _, label in chosen])
    probe = make_probe(x0, labels, saved["train"]["num_train_timesteps"], draws, seed)
    return probe, np.bincount(labels.numpy(), minlength=len(split.classes)).tolist()


def _floats(values: np.ndarray) -> list:
    """JSON-ready: NaN (a class absent from the probe) becomes None."""
    return [float(x) if np.isfinite(x) else None for x in values]


def _by_fraction(values: dict) -> dict:
    return {str(f): _floats(v) for f, v in values.items()}


@locks_run("analyze capacity")
def analyze_capacity(
    run_dir: str | Path,
    prune_fractions: Sequence[float] = DEFAULT_PRUNE_FRACTIONS,
    *,
    part: str = "train",
    images_per_class: int = 64,
    draws: int = 4,
    seed: int = 0,
    batch_size: int = 128,
    device: Optional[str] = None,
) -> dict:
    """Both diagnostics on a trained run; writes RUN/analysis/capacity.json and capacity.png, returns the JSON."""
    import yaml

    from .config import DataConfig
    from .model_io import load_diffusion_model
    from .split import load_split

    if part not in ("train", "val"):
        raise CapaugError(f"--part must be train or val, not {part!r} (the test split stays untouched)")
    fractions = [float(f) for f in prune_fractions]
    if not all(0.0 <= f < 1.0 for f in fractions):
        raise CapaugError(f"prune fractions must lie in [0, 1), got {fractions}")
    run_dir = Path(run_dir)
    config_path = run_dir / "diffusion" / "config.yaml"
    if not config_path.is_file():
        raise CapaugError(f"{run_dir} has no trained model ({config_path} is missing); run `capaug train` first")
    saved = yaml.safe_load(config_path.read_text())
    split = load_split(run_dir)
    stats = split.stats(DataConfig.model_validate(saved.get("data", {})))
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    probe, probe_counts = _probe_from_split(split, saved, part, images_per_class, draws, seed)
    num_classes = len(split.classes)

    folded, noise_scheduler, info = load_diffusion_model(run_dir / "diffusion" / "model", device=device)
    if info.split_hash != split.hash:
        raise CapaugError(f"the model of {run_dir} was trained on split {info.split_hash[:12]}, "
                          f"not the run's split {split.hash[:12]} (mismatched split)")
    if info.parameterization != "eps":  # the probe draws DDPM timesteps and scores eps-MSE
        raise CapaugError(f"capaug analyze capacity scores eps-prediction models; {run_dir}'s model is "
                          f"{info.parameterization}")
    pruning = pruning_sensitivity(folded, noise_scheduler, probe, num_classes, fractions, batch_size)
    split_result = None
    if saved["train"]["method"] in CAPACITY_METHODS:
        from .model_io import load_capacity_model

        unet, _, _ = load_capacity_model(run_dir)
        split_result = capacity_split(unet.to(device), noise_scheduler, probe, num_classes, batch_size)

    counts, groups = list(stats.counts), list(stats.groups)
    result = {
        "classes": split.classes,
        "train_counts": counts,
        "groups": groups,
        "probe": {"part": part, "images_per_class": probe_counts, "draws_per_image": draws, "seed": seed,
                  "loss": "per-class mean eps-prediction MSE over the same (image, t, noise) draws for every model"},
        "pruning": {
            "fractions": fractions,
            "base_loss": _floats(pruning["base_loss"]),
            "loss": _by_fraction(pruning["loss"]),
            "relative_increase": _by_fraction(pruning["relative_increase"]),
            "group_mean_relative_increase": {str(f): group_means(v, groups) for f, v in pruning["relative_increase"].items()},
            "spearman_vs_count": {str(f): rank_correlation(counts, v) for f, v in pruning["relative_increase"].items()},
        },
        "capacity_split": None if split_result is None else {
            **{name: _floats(values) for name, values in split_result.items()},
            "group_mean_relative_increase": group_means(split_result["relative_increase"], groups),
            "spearman_vs_count": rank_correlation(counts, split_result["relative_increase"]),
        },
    }
    if split_result is None:
        result["capacity_split_note"] = f"method is {saved['train']['method']!r}: no theta_e to switch off"
    out = run_dir / "analysis"
    write_json(out / "capacity.json", result)
    save_figure(out / "capacity.png", capacity_figure(result))
    return result


def capacity_figure(result: dict):
    """Left: relative loss increase under pruning against class count; right: theta_e dependence against count."""
    from matplotlib.figure import Figure

    counts = np.asarray(result["train_counts"])
    fig = Figure(figsize=(11, 4), layout="tight")
    left, right = fig.subplots(1, 2)
    for f, values in result["pruning"]["relative_increase"].items():
        if float(f) > 0:
            left.plot(counts, np.asarray(values, dtype=float), "o", label=f"pruned {float(f):.0%}")
    left.set(xscale="log", xlabel="training images of the class", ylabel="relative increase in denoising loss",
             title="global magnitude pruning")
    left.axhline(0, color="grey", lw=0.5)
    if left.get_legend_handles_labels()[0]:
        left.legend()
    split = result["capacity_split"]
    if split is None:
        right.text(0.5, 0.5, result["capacity_split_note"], ha="center", va="center", transform=right.transAxes)
        right.set_axis_off()
    else:
        values, groups = np.asarray(split["relative_increase"], dtype=float), np.asarray(result["groups"])
        for g in GROUPS:
            right.plot(counts[groups == g], values[groups == g], "o", label=g)
        right.set(xscale="log", xlabel="training images of the class", ylabel="loss(theta_g) / loss(theta_g + theta_e) - 1",
                  title="dependence on theta_e")
        right.axhline(0, color="grey", lw=0.5)
        right.legend()
    return fig
