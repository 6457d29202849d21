"""Capacity reservation: low-rank terms theta_e = (A, B) next to chosen conv / linear weights W (theta_g).

A targeted layer computes `W x + B A x` (DESIGN.md, The CM method): A maps c_in -> r with W's kernel, stride,
padding and dilation (Kaiming-uniform), B maps r -> c_out (1x1, zero), r = max(1, floor(rho * min(c_in, c_out))),
no scaling. Because B is 1x1 the term is a change of weight, `B A x = conv(x, reshape(B A))`, so a layer runs one
conv with `W + reshape(B A)` (no extra small convs) and `fold_capacity` writes that weight back into a plain module.
Under autocast the terms run apart from W and in float32 instead (a bf16 `W + B A` rounds a small B A away).

Sets: `expert` is gated (on = theta_g + theta_e, off = theta_g alone); in the LoRA variant a `general` set is
always on. The gate is a float for the whole batch, an (N,) tensor per sample, or `SplitGate(n)` (rows [:n] on,
the rest off: the CM fast path's doubled batch, with no low-rank work on the off rows).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from fnmatch import fnmatch

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CapaugError

EXPERT = "expert"
CAPACITY_METHODS = ("cm", "lowrank")  # training methods whose UNet carries the terms; lowrank trains them without L_CM
TARGET_GROUPS = {
    "up": ("up_blocks.*.resnets.*.conv1", "up_blocks.*.resnets.*.conv2", "up_blocks.*.upsamplers.*.conv"),
    "mid": ("mid_block.resnets.*.conv1", "mid_block.resnets.*.conv2"),
    "down": ("down_blocks.*.resnets.*.conv1", "down_blocks.*.resnets.*.conv2", "down_blocks.*.downsamplers.*.conv"),
    "attention": ("*attentions.*.to_q", "*attentions.*.to_k", "*attentions.*.to_v", "*attentions.*.to_out.0"),
}


def capacity_rank(c_in: int, c_out: int, rho: float) -> int:
    """r = max(1, floor(rho * min(c_in, c_out)))."""
    return max(1, math.floor(rho * min(c_in, c_out)))


@dataclass(frozen=True)
class SplitGate:
    """Rows [:on] of the batch with the expert set, rows [on:] without it."""

    on: int


class LowRank(nn.Module):
    """One term B A of a weight W (conv or linear)."""

    def __init__(self, base: nn.Conv2d | nn.Linear, rank: int):
        super().__init__()
        kw = dict(bias=False, device=base.weight.device, dtype=base.weight.dtype)
        if isinstance(base, nn.Conv2d):
            self.A = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, base.dilation, **kw)
            self.B = nn.Conv2d(rank, base.out_channels, 1, **kw)
        else:
            self.A = nn.Linear(base.in_features, rank, **kw)
            self.B = nn.Linear(rank, base.out_features, **kw)
        nn.init.kaiming_uniform_(self.A.weight, a=math.sqrt(5))
        nn.init.zeros_(self.B.weight)

    def forward(self, x):
        return self.B(self.A(x))

    def delta(self) -> torch.Tensor:
        """reshape(B A): the term as a change of W, shape of W."""
        a = self.A.weight
        return (self.B.weight.flatten(1) @ a.flatten(1)).view(-1, *a.shape[1:])


class CapacityLayer(nn.Module):
    """A conv or linear `base` (theta_g) plus low-rank terms, one per set; `gate` scales the expert set."""

    def __init__(self, base: nn.Conv2d | nn.Linear, rank: int, sets: tuple[str, ...]):
        super().__init__()
        self.base = base
        self.terms = nn.ModuleDict({name: LowRank(base, rank) for name in sets})
        self.gate: float | torch.Tensor | SplitGate = 1.0

    def _run(self, x, weight):
        b = self.base
        if isinstance(b, nn.Linear):
            return F.linear(x, weight, b.bias)
        return F.conv2d(x, weight, b.bias, b.stride, b.padding, b.dilation)

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type):
            return self._forward_separate(x)
        weight = self.base.weight
        for name, term in self.terms.items():
            if name != EXPERT:
                weight = weight + term.delta()
        if EXPERT not in self.terms:
            return self._run(x, weight)
        gate, expert = self.gate, self.terms[EXPERT]
        if isinstance(gate, SplitGate):
            on, off = x.split([gate.on, len(x) - gate.on])  # split, not slicing: its backward is one cat
            return torch.cat([self._run(on, weight + expert.delta()), self._run(off, weight)])
        if isinstance(gate, torch.Tensor):
            out = self._run(x, weight)
            return out + gate.view(-1, *[1] * (x.dim() - 1)).to(out.dtype) * expert(x)
        return self._run(x, weight + gate * expert.delta() if gate else weight)

    def _forward_separate(self, x):
        """Under autocast: W x in low precision, each B A x in float32, summed in float32. A merged low-precision
        `W + B A` would round away a small B A (bf16 keeps 8 bits), and with it theta_e's effect."""
        out = self._run(x, self.base.weight).float()
        with torch.autocast(x.device.type, enabled=False):
            x32 = x.float()
            for name, term in self.terms.items():
                gate = 1.0 if name != EXPERT else self.gate
                if isinstance(gate, SplitGate):
                    on, off = out.split([gate.on, len(x) - gate.on])
                    out = torch.cat([on + term(x32[: gate.on]), off])
                elif isinstance(gate, torch.Tensor):
                    out = out + gate.view(-1, *[1] * (x.dim() - 1)).float() * term(x32)
                elif gate:
                    out = out + gate * term(x32)
        return out


def capacity_layers(unet: nn.Module) -> dict[str, CapacityLayer]:
    return {name: m for name, m in unet.named_modules() if isinstance(m, CapacityLayer)}


def _targeted(unet: nn.Module, targets) -> list[str]:
    names = []
    for target in targets:
        group = TARGET_GROUPS.get(target, (target,))
        found = [
            name
            for name, m in unet.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and any(fnmatch(name, p) for p in group)
        ]
        if not found:
            raise CapaugError(f"capacity target {target!r} matches no conv or linear layer of the "
                              f"{type(unet).__name__}")
        names += found
    return list(dict.fromkeys(names))


def add_capacity(unet: nn.Module, rho: float = 0.1, targets=("up",), sets=(EXPERT,)) -> list[str]:
    """Wrap the targeted layers in place (groups: up, mid, down, attention; anything else is an fnmatch pattern on
    module names) and return their names."""
    if capacity_layers(unet):
        raise ValueError("this UNet already has capacity terms")
    names = _targeted(unet, targets)
    for name in names:
        base = unet.get_submodule(name)
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or base.padding_mode != "zeros"):
            raise CapaugError(f"capacity target {name} is a grouped or non-zero-padded conv; pick another layer")
        c_in, c_out = base.weight.shape[1], base.weight.shape[0]
        unet.set_submodule(name, CapacityLayer(base, capacity_rank(c_in, c_out, rho), tuple(sets)))
    return names


@contextmanager
def capacity_gate(unet: nn.Module, gate: float | torch.Tensor | SplitGate):
    """Within the block the expert set is scaled by `gate`: 1 on, 0 off, an (N,) tensor per sample."""
    layers = list(capacity_layers(unet).values())
    previous = [layer.gate for layer in layers]
    for layer in layers:
        layer.gate = gate
    try:
        yield
    finally:
        for layer, g in zip(layers, previous):
            layer.gate = g


def capacity_parameters(unet: nn.Module, set_name: str | None = None) -> list[nn.Parameter]:
    """theta_e: the A and B weights of every set, or of one set."""
    return [
        p
        for layer in capacity_layers(unet).values()
        for name, term in layer.terms.items()
        if set_name in (None, name)
        for p in term.parameters()
    ]


def freeze_base(unet: nn.Module, train_class_embedding: bool = False) -> None:
    """LoRA variant: only the low-rank sets train (and the class embedding when it was re-created for K + 1)."""
    unet.requires_grad_(False)
    for p in capacity_parameters(unet):
        p.requires_grad_(True)
    if train_class_embedding:
        unet.class_embedding.requires_grad_(True)


def capacity_outside_up(unet: nn.Module) -> bool:
    """True when a low-rank term sits before the up path, so on and off branches differ there too."""
    return any(not (name.startswith("up_blocks.") or name == "conv_out") for name in capacity_layers(unet))


@torch.no_grad()
def fold_capacity(unet: nn.Module) -> nn.Module:
    """W <- W + reshape(B A) for every set, in place; the result is a plain module (e.g. a plain UNet2DModel)."""
    for name, layer in capacity_layers(unet).items():
        base = layer.base
        for term in layer.terms.values():
            base.weight += term.delta().to(base.weight.dtype)
        unet.set_submodule(name, base)
    return unet
