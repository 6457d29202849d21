"""Samplers: the `oversample` arm's (and cRT's) class-balanced sampler, and a synthetic arm's fixed batch share."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Sampler, WeightedRandomSampler


def class_balanced_sampler(labels: Sequence[int], generator: torch.Generator | None = None) -> WeightedRandomSampler:
    """One epoch = len(labels) draws, each sample weighted 1 / (its class's count)."""
    labels = np.asarray(labels)
    counts = np.bincount(labels)
    weights = torch.as_tensor(1.0 / counts[labels], dtype=torch.double)
    return WeightedRandomSampler(weights, num_samples=len(labels), replacement=True, generator=generator)


class MixedBatchSampler(Sampler[list[int]]):
    """`batches` batches of indices into ConcatDataset([real, synthetic]): round(share x batch_size) synthetic
    (at least 1, at most batch_size - 1), the rest real; each pool is drawn without replacement and reshuffled
    when used up, so every image is seen equally often within its pool."""

    def __init__(self, n_real: int, n_synthetic: int, batch_size: int, share: float, batches: int,
                 generator: torch.Generator):
        self.n_real, self.n_synthetic, self.batches, self.generator = n_real, n_synthetic, batches, generator
        self.synthetic_per_batch = min(max(1, round(share * batch_size)), batch_size - 1)
        self.real_per_batch = batch_size - self.synthetic_per_batch

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        real = _pool(self.n_real, 0, self.generator)
        synthetic = _pool(self.n_synthetic, self.n_real, self.generator)
        for _ in range(self.batches):
            yield ([next(real) for _ in range(self.real_per_batch)]
                   + [next(synthetic) for _ in range(self.synthetic_per_batch)])


def _pool(n: int, offset: int, generator: torch.Generator) -> Iterator[int]:
    while True:
        yield from (offset + torch.randperm(n, generator=generator)).tolist()
