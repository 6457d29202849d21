"""Dropout masks shared by the on and off branches of the CM step.

`d_i = mean (eps_on_i - eps_off_i)^2` should measure what theta_e changes. With dropout active (the paper's
CIFAR setting uses 0.1) two independent masks make the branches differ even when B A = 0, and L_CM would then
train dropout sensitivity (up for minority classes, down for majority ones) instead of placing minority
knowledge in theta_e. So the off branch of sample i reuses the masks of its on branch.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial

import torch
from torch import nn


class PairedDropout:
    """Patches a model's active dropout layers for one CM step; outside its contexts dropout is untouched."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.Dropout) and m.p > 0]
        self.masks: dict[nn.Module, torch.Tensor] = {}

    @staticmethod
    def _mask(layer: nn.Dropout, x: torch.Tensor) -> torch.Tensor:
        keep = 1.0 - layer.p
        return torch.empty_like(x).bernoulli_(keep).div_(keep)

    @contextmanager
    def _patched(self, forward):
        active = [m for m in self.layers if m.training]
        for layer in active:
            layer.forward = partial(forward, layer)  # the instance attribute shadows nn.Dropout.forward
        try:
            yield
        finally:
            for layer in active:
                del layer.forward

    def record(self):
        """On branch of the two-pass route: draw masks as usual and keep them."""

        def forward(layer, x):
            self.masks[layer] = self._mask(layer, x)
            return x * self.masks[layer]

        return self._patched(forward)

    def replay(self, off: torch.Tensor):
        """Off branch of the two-pass route (rows `off` of the on batch): the recorded masks' rows."""
        return self._patched(lambda layer, x: x * self.masks[layer][off])

    def doubled(self, n: int, off: torch.Tensor):
        """Fast path's doubled batch [n on rows ; the rows `off` again, off]: one mask, its `off` rows repeated."""

        def forward(layer, x):
            mask = self._mask(layer, x[:n])
            return x * torch.cat([mask, mask[off]])

        return self._patched(forward)
