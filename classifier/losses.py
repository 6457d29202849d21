"""Losses of the classic rebalancing arm (`reweight`), the baselines synthetic data has to beat.

- class-balanced (Cui et al., CVPR 2019): cross-entropy weighted by the inverse effective number of samples,
  `w_c = (1 - beta) / (1 - beta ** n_c)`, normalised to mean 1.
- logit-adjusted (Menon et al., ICLR 2021): cross-entropy on `logits + tau * log(prior)`; predictions use the
  plain logits, so rare classes get a larger margin during training only.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("cross-entropy", "class-balanced", "logit-adjusted")


def class_balanced_weights(counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Inverse effective number per class, mean 1."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    weights = (1 - beta) / (1 - beta ** n)
    return (weights / weights.mean()).float()


class LogitAdjustedLoss(nn.Module):
    """Cross-entropy on logits shifted by `tau * log(class prior)`."""

    def __init__(self, counts: Sequence[int], tau: float = 1.0):
        super().__init__()
        prior = torch.as_tensor(counts, dtype=torch.float64) / sum(counts)
        self.register_buffer("shift", (tau * prior.log()).float())

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits + self.shift.to(logits.dtype), target)


def make_loss(kind: str, counts: Sequence[int]) -> nn.Module:
    """The training loss by name (`LOSSES`), given the training class counts."""
    if kind == "cross-entropy":
        return nn.CrossEntropyLoss()
    if kind == "class-balanced":
        return nn.CrossEntropyLoss(weight=class_balanced_weights(counts))
    if kind == "logit-adjusted":
        return LogitAdjustedLoss(counts)
    raise ValueError(f"unknown loss {kind!r}; one of {', '.join(LOSSES)}")
