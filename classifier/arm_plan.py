"""How one arm trains: its data, sampler, loss and phases, from its `ArmSpec` (arms.py).

Every arm trains `experiment.budget` optimizer steps at `cfg.batch_size`, whatever its data; `+crt` takes its
final-layer steps out of that budget, so a two-stage arm trains no longer than any other.
- real: the real training split, shuffled, cross-entropy; reweight: the same with `cfg.reweight`'s loss;
  oversample: the same with a class-balanced sampler.
- a synthetic arm: the real split and the (filtered) synthetic set in one pool, or with `share`, a fixed
  number of synthetic images per batch; synthetic samples weigh `w` in the loss; `+la` adjusts the logits by
  the effective prior, the expected loss-weighted class frequency of a batch (`effective_counts`); `+crt`
  ends with `crt_frac` of the budget re-training only the final layer on the real split with class-balanced
  sampling and plain cross-entropy (the sampler already balances; logit adjustment there would count twice).
- synthetic-features: the real split, then `head_frac` of the budget re-training only the final layer on real
  and generated pooled features (feature_synthesis.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from torch.utils.data import ConcatDataset

from .arms import ArmSpec
from .data import Reader, SyntheticSet, Weighted
from .engine import Phase
from .experiment import Experiment
from .feature_synthesis import feature_phases, feature_settings
from .losses import make_loss
from .sampling import MixedBatchSampler, class_balanced_sampler


@dataclass
class PreparedArm:
    """An arm ready to train: its spec, and its synthetic set after the filter (None for a real-data arm)."""

    spec: ArmSpec
    synthetic: Optional[SyntheticSet] = None
    reader: Optional[Reader] = None
    filter_record: Optional[dict] = None

    @property
    def name(self) -> str:
        return self.spec.name

    def loss_name(self, reweight: str) -> str:
        """The loss of the main phase."""
        if self.spec.base == "reweight":
            return reweight
        if self.spec.features:
            return "cross-entropy"
        return "logit-adjusted" if "la" in self.spec.flags else "cross-entropy"

    def share(self) -> Optional[float]:
        """The batch share in effect (None without synthetic images left to draw)."""
        return self.spec.share if self.synthetic and self.synthetic.items and self.spec.synthetic else None

    def prior_counts(self, experiment: Experiment) -> list[float]:
        """The class counts the loss sees: real, or the effective counts of a synthetic arm."""
        real = experiment.split.counts("train")
        if not self.synthetic:
            return [float(c) for c in real]
        synthetic = self.synthetic.counts(len(real))
        return effective_counts(real, synthetic, self.spec.w, self.share(), experiment.cfg.batch_size)

    def steps(self, experiment: Experiment) -> tuple[int, int]:
        """(main-phase steps, final-layer steps of +crt or synthetic-features); they add up to the budget."""
        budget = experiment.budget
        fraction = (self.spec.crt_frac if "crt" in self.spec.flags else self.spec.head_frac if self.spec.features
                    else 0)
        crt = min(max(1, round(fraction * budget)), budget - 1) if fraction else 0
        return budget - crt, crt

    def phases(self, experiment: Experiment, seed: int) -> list[Phase]:
        """The training phases of seed `seed` (seed s: same transforms' and sampler's random streams per arm)."""
        split, cfg = experiment.split, experiment.cfg
        generator = torch.Generator().manual_seed(seed)
        main_steps, crt_steps = self.steps(experiment)
        if self.spec.features:
            return feature_phases(experiment, self.spec, seed, main_steps, crt_steps)
        real = Weighted(experiment.dataset(split.train, train=True, seed=seed), 1.0)
        labels = [y for _, y in split.train]
        if self.synthetic and self.synthetic.items:
            synthetic = Weighted(experiment.dataset(self.synthetic.items, train=True, seed=seed, reader=self.reader),
                                 self.spec.w)
            data = ConcatDataset([real, synthetic])
            share = self.share()
            loader = (experiment.loader(data, seed, batch_sampler=MixedBatchSampler(
                len(real), len(synthetic), cfg.batch_size, share, main_steps, generator))
                if share else experiment.loader(data, seed))
        elif self.spec.base == "oversample":
            loader = experiment.loader(real, seed, sampler=class_balanced_sampler(labels, generator))
        else:
            loader = experiment.loader(real, seed)
        phases = [Phase(loader, make_loss(self.loss_name(cfg.reweight), self.prior_counts(experiment),
                                          tau=self.spec.tau if "la" in self.spec.flags else 1.0), main_steps)]
        if crt_steps:
            balanced = experiment.loader(real, seed, sampler=class_balanced_sampler(labels, generator))
            phases.append(Phase(balanced, make_loss("cross-entropy", split.counts("train")), crt_steps, head_only=True))
        return phases

    def describe(self, experiment: Experiment) -> dict:
        """The arm's record in metrics.json (without its results)."""
        num_classes = len(experiment.split.classes)
        extra = len(self.synthetic.items) if self.synthetic else 0
        counts = self.synthetic.counts(num_classes) if self.synthetic else None
        main_steps, crt_steps = self.steps(experiment)
        settings = self.spec.settings()
        if self.spec.features:  # its synthetic samples are the features each model generates, not images
            settings = feature_settings(experiment, self.spec, crt_steps)
            counts = settings["head"]["generate"]
        elif settings:
            settings["share"] = self.share()
            if settings["logit_adjust"]:
                counts = self.prior_counts(experiment)
                settings["logit_adjust"]["prior"] = [c / sum(counts) for c in counts]
            if self.filter_record:
                settings["filter"] = self.filter_record
            if settings["crt"]:
                settings["crt"]["steps"] = crt_steps
        return {"spec": self.name, "base": self.spec.base, "loss": self.loss_name(experiment.cfg.reweight),
                "sampler": ("class-balanced" if self.spec.base == "oversample"
                            else "share" if self.share() else "shuffle"),
                "synthetic_set": self.synthetic.name if self.synthetic else None,
                "train_images": len(experiment.split.train) + extra,
                "synthetic_images": sum(counts) if self.spec.features else extra, "synthetic_counts": counts,
                "settings": settings or None, "optimizer_steps": main_steps + crt_steps}


def effective_counts(real: list[int], synthetic: list[int], weight: float, share: Optional[float],
                     batch_size: int) -> list[float]:
    """Expected loss-weighted class counts of the training stream (proportional to the prior `+la` uses).

    One pool: real + weight x synthetic. With a batch share: each pool contributes its per-batch draws,
    spread over its classes in proportion to its counts.
    """
    real, synthetic = np.asarray(real, float), np.asarray(synthetic, float)
    if share is None or synthetic.sum() == 0:
        return (real + weight * synthetic).tolist()
    per_batch = min(max(1, round(share * batch_size)), batch_size - 1)
    return ((batch_size - per_batch) * real / real.sum() + weight * per_batch * synthetic / synthetic.sum()).tolist()
