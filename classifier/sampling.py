"""The `oversample` arm's class-balanced sampler: every class drawn equally often, with replacement."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import WeightedRandomSampler


def class_balanced_sampler(labels: Sequence[int], generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """One epoch = len(labels) draws, each sample weighted 1 / (its class's count)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)
