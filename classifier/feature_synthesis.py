"""The `synthetic-features` arm: feature-level synthesis (LDMLR, Han et al. 2024) inside the fair step budget.

Phase 1 trains the whole classifier on the real training split as the `real` arm does. When it ends, the
encoder's pooled (pre-logits) features of the real training images (eval mode, eval pipeline, no augmentation)
fit a small class-conditional diffusion model (augment/feature_diffusion.py: an MLP trained with the CM method,
folded), which samples features of every class below the target (`downstream.features.target`, default
`balanced`). Phase 2, the last `head_frac` of the same optimizer-step budget, freezes the encoder and re-trains
only the final layer on the real features + the generated ones (weight `w`; `+la`: logit adjustment with the
effective prior, real + w x generated counts). The diffusion model's steps are the generator's cost and are
reported per run (`record["feature_synthesis"]`), not counted as classifier optimizer steps; so are the
encoder's feature passes. Everything is seeded from the classifier seed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from capaug.augment.feature_diffusion import synthesize_features
from capaug.augment.targets import plan_targets

from .arms import ArmSpec
from .data import Weighted
from .engine import Phase
from .experiment import Experiment
from .losses import make_loss


def generate_counts(experiment: Experiment) -> list[int]:
    """Features to generate per class: `downstream.features.target` over the real training counts."""
    split = experiment.split
    plan = plan_targets(list(split.classes), split.counts("train"), experiment.cfg.features.target)
    return [entry.generate for entry in plan]


def head_counts(experiment: Experiment, spec: ArmSpec) -> list[float]:
    """The head phase's effective class counts: real + w x generated (the prior of `+la`)."""
    return [real + spec.w * made for real, made in zip(experiment.split.counts("train"), generate_counts(experiment))]


@torch.no_grad()
def pooled_features(model: nn.Module, dataset: Dataset, experiment: Experiment) -> torch.Tensor:
    """The inputs of `model`'s final layer (timm's pooled pre-logits) for `dataset`, eval mode, float32 on the CPU."""
    model.eval()
    cfg, accelerator = experiment.cfg, experiment.accelerator
    device = accelerator.device
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    loader = DataLoader(dataset, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
    out = []
    for images, *_ in loader:
        with accelerator.autocast():
            pooled = model.forward_head(model.forward_features(images.to(device, memory_format=memory_format)),
                                        pre_logits=True)
        out.append(pooled.float().cpu())
    return torch.cat(out)


def feature_phases(experiment: Experiment, spec: ArmSpec, seed: int, main_steps: int, head_steps: int) -> list[Phase]:
    """Phase 1 on the real split (cross-entropy), then, if `head_steps`, the head phase on real + generated
    features, whose loader is built from the encoder phase 1 leaves."""
    split, cfg = experiment.split, experiment.cfg
    real = Weighted(experiment.dataset(split.train, train=True, seed=seed), 1.0)
    phases = [Phase(experiment.loader(real, seed), make_loss("cross-entropy", split.counts("train")), main_steps)]
    if not head_steps:
        return phases
    record: dict = {}

    def head_data(model: nn.Module) -> DataLoader:
        features = pooled_features(model, experiment.dataset(split.train, train=False), experiment)
        labels = torch.as_tensor([y for _, y in split.train], dtype=torch.long)
        made, made_labels, info = synthesize_features(features, labels, generate_counts(experiment), cfg.features,
                                                      seed=seed, device=experiment.accelerator.device)
        record["feature_synthesis"] = info
        weights = torch.cat([torch.ones(len(features)), torch.full((len(made),), spec.w)])
        data = TensorDataset(torch.cat([features, made]), torch.cat([labels, made_labels]), weights)
        return DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed),
                          drop_last=len(data) > cfg.batch_size)

    loss = make_loss("logit-adjusted" if "la" in spec.flags else "cross-entropy", head_counts(experiment, spec),
                     tau=spec.tau if "la" in spec.flags else 1.0)
    return [*phases, Phase(head_data, loss, head_steps, features=True, record=record)]


def feature_settings(experiment: Experiment, spec: ArmSpec, head_steps: int) -> dict:
    """The arm's `settings` in metrics.json: weight, logit adjustment (effective prior), the head phase (its
    steps, loss and the features generated per class); the generator's settings are `settings.features`."""
    settings = spec.settings()
    if settings["logit_adjust"]:
        counts = head_counts(experiment, spec)
        settings["logit_adjust"]["prior"] = [c / sum(counts) for c in counts]
    settings["head"].update(steps=head_steps, loss="logit-adjusted" if "la" in spec.flags else "cross-entropy",
                            generate=generate_counts(experiment) if head_steps else [0] * len(experiment.split.classes))
    return settings
