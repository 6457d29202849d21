"""Training losses: plain cross-entropy and the rebalancing losses synthetic data has to beat, with sample weights.

- class-balanced (Cui et al., CVPR 2019): cross-entropy weighted by the inverse effective number of samples,
  `w_c = (1 - beta) / (1 - beta ** n_c)`, normalised to mean 1.
- logit-adjusted (Menon et al., ICLR 2021): cross-entropy on `logits + tau * log(prior)`; predictions use the
  plain logits, so rare classes get a larger margin during training only. A synthetic arm's `+la` passes the
  *effective* prior (real + omega x synthetic counts) as `counts`.

Every loss takes optional per-sample weights (a synthetic arm's omega) and returns the weighted mean
`sum(w_i c_i l_i) / sum(w_i c_i)` (c: class weight), which is exactly torch's weighted cross-entropy when all
w_i = 1, so the loss scale and the learning rate mean the same thing in every arm.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

LOSSES = ("cross-entropy", "class-balanced", "logit-adjusted")


def class_balanced_weights(counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Inverse effective number per class, mean 1."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    weights = (1 - beta) / (1 - beta ** n)
    return (weights / weights.mean()).float()


class WeightedCrossEntropy(nn.Module):
    """Cross-entropy with optional class weights, logit shift and per-sample weights (weighted mean)."""

    def __init__(self, class_weights: Optional[torch.Tensor] = None, shift: Optional[torch.Tensor] = None):
        super().__init__()
        self.register_buffer("class_weights", class_weights)
        self.register_buffer("shift", shift)

    def forward(self, logits: torch.Tensor, target: torch.Tensor,
                sample_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.shift is not None:
            logits = logits + self.shift.to(logits.dtype)
        losses = F.cross_entropy(logits, target, reduction="none")
        weight = torch.ones_like(losses) if sample_weight is None else sample_weight.to(losses.dtype)
        if self.class_weights is not None:
            weight = weight * self.class_weights.to(losses.dtype)[target]
        return (weight * losses).sum() / weight.sum()


class LogitAdjustedLoss(WeightedCrossEntropy):
    """Cross-entropy on logits shifted by `tau * log(class prior)`, prior = `counts` normalised."""

    def __init__(self, counts: Sequence[float], tau: float = 1.0):
        prior = torch.as_tensor(counts, dtype=torch.float64) / sum(counts)
        super().__init__(shift=(tau * prior.clamp_min(1e-12).log()).float())


def make_loss(kind: str, counts: Sequence[float], tau: float = 1.0) -> nn.Module:
    """The training loss by name (`LOSSES`), given the (effective) training class counts."""
    if kind == "cross-entropy":
        return WeightedCrossEntropy()
    if kind == "class-balanced":
        return WeightedCrossEntropy(class_weights=class_balanced_weights(counts))
    if kind == "logit-adjusted":
        return LogitAdjustedLoss(counts, tau)
    raise ValueError(f"unknown loss {kind!r}; one of {', '.join(LOSSES)}")
