"""A class-conditional diffusion model on feature vectors (LDMLR, Han et al. 2024), trained with the CM method.

The `synthetic-features` arm (classifier/feature_synthesis.py) fits it to a classifier's pooled features and
samples features of the rarer classes for the classifier's head. The denoiser is an MLP (residual blocks, a
sinusoidal time embedding, K + 1 class embeddings, the last one null for classifier-free guidance); the method is
the image model's (DESIGN.md, The CM method) on vectors instead of pixels: low-rank terms on the targeted linear
layers (`capacity.add_capacity`), `L = L_ddpm(eps_on) + L_CM` with d the per-sample mean of (eps_on - eps_off)^2,
folded (`capacity.fold_capacity`) before sampling. Features are standardized per dimension on the training
features and mapped back after sampling. Everything random comes from the seed, so a CPU run is bitwise
reproducible and leaves the caller's global RNG as it was.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .capacity import add_capacity, capacity_gate, fold_capacity
from .config import FeatureSynthesisConfig
from .errors import CapaugError
from .losses import auto_lambda_div, class_weights, cm_loss
from .stats import class_stats

SAMPLE_CHUNK = 4096  # features denoised at once; fixed, so the noise stream (and the result) never depends on memory


class ResidualBlock(nn.Module):
    """h + W2 silu(W1 silu(norm(h)))."""

    def __init__(self, width: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.linear1 = nn.Linear(width, width)
        self.linear2 = nn.Linear(width, width)

    def forward(self, h):
        return h + self.linear2(F.silu(self.linear1(F.silu(self.norm(h)))))


class FeatureDenoiser(nn.Module):
    """eps_theta(x_t, t, y) = sqrt(1 - abar_t) x_t + MLP(x_t, t, y) for D-dimensional x; y = `num_classes` is the
    null class. The fixed first term is E[eps | x_t] for unit-Gaussian data (standardized features, to first
    order), so the MLP (output zero at the start) learns only the data's departure from it: an MLP alone has to
    learn eps ~ x_t at high noise first, and a D-wide identity through a narrower MLP never quite comes (its
    samples drift far off the data)."""

    def __init__(self, dim: int, num_classes: int, alphas_cumprod: torch.Tensor, hidden: int = 256, depth: int = 2):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.time_proj = Timesteps(hidden, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(hidden, hidden)
        self.class_embedding = nn.Embedding(num_classes + 1, hidden)
        self.input = nn.Linear(dim, hidden)
        self.blocks = nn.ModuleList(ResidualBlock(hidden) for _ in range(depth))
        self.norm = nn.LayerNorm(hidden)
        self.output = nn.Linear(hidden, dim)
        nn.init.zeros_(self.output.weight)
        nn.init.zeros_(self.output.bias)
        self.register_buffer("skip", (1 - alphas_cumprod.float()).sqrt(), persistent=False)
        self.null_class = num_classes

    def forward(self, x, t, y):
        h = self.input(x) + self.time_embedding(self.time_proj(t).to(x.dtype)) + self.class_embedding(y)
        for block in self.blocks:
            h = block(h)
        return self.skip[t].unsqueeze(1).to(x.dtype) * x + self.output(F.silu(self.norm(h)))


@dataclass
class FittedDenoiser:
    """A trained denoiser (capacity terms still separate for method cm) and what sampling needs."""

    model: FeatureDenoiser
    noise_scheduler: object  # diffusers DDPMScheduler
    mean: torch.Tensor  # (D,) the training features' per-dimension mean and std (standardization)
    std: torch.Tensor
    steps: int
    seconds: float
    final_loss: float  # mean over the last tenth of the steps
    lambda_div: Optional[float]  # resolved (method cm), else None
    d_by_class: Optional[list]  # method cm: mean d per class over the last tenth of the steps (None: not drawn)


def noise_schedule(cfg: FeatureSynthesisConfig):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_schedule=cfg.beta_schedule,
                         clip_sample=False, prediction_type="epsilon")


def train_denoiser(features: torch.Tensor, labels: torch.Tensor, num_classes: int, cfg: FeatureSynthesisConfig, *,
                   seed: int, groups: Optional[Sequence[str]] = None, device="cpu") -> FittedDenoiser:
    """Fit eps_theta to `features` (N, D) of classes `labels` (N,) for `cfg.steps` AdamW steps (cosine schedule).
    `groups` (Many/Medium/Few per class) place `lambda_div: auto`'s N*; default: `stats.class_stats`'s thresholds."""
    start = time.perf_counter()
    device = torch.device(device)
    features, labels = features.float().cpu(), labels.long().cpu()
    mean, std = features.mean(0), features.std(0, unbiased=False).clamp_min(1e-6)
    data = ((features - mean) / std).to(device)
    labels_dev = labels.to(device)
    counts = torch.bincount(labels, minlength=num_classes).clamp_min(1).tolist()
    cm = cfg.method == "cm"
    lambda_div = None
    if cm:
        if cfg.lambda_div == "auto":
            groups = groups or class_stats([str(k) for k in range(num_classes)], counts).groups
            lambda_div = auto_lambda_div(counts, groups, cfg.lambda_con)
        else:
            lambda_div = float(cfg.lambda_div)
        w_con, w_div = (w.to(device) for w in class_weights(counts))
    generator = torch.Generator().manual_seed(seed)
    scheduler = noise_schedule(cfg)
    alphas = scheduler.alphas_cumprod.to(device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureDenoiser(data.shape[1], num_classes, scheduler.alphas_cumprod, cfg.hidden, cfg.depth)
        if cm:
            add_capacity(model, cfg.rho, cfg.targets)
    model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.steps)
    tail = max(1, cfg.steps // 10)
    loss_sum, d_sum, d_n = 0.0, torch.zeros(num_classes, dtype=torch.float64), torch.zeros(num_classes)
    for step in range(cfg.steps):
        index = torch.randint(len(data), (cfg.batch_size,), generator=generator).to(device)
        t = torch.randint(cfg.num_train_timesteps, (cfg.batch_size,), generator=generator).to(device)
        noise = torch.randn((cfg.batch_size, data.shape[1]), generator=generator).to(device)
        drop = (torch.rand(cfg.batch_size, generator=generator) < cfg.p_uncond).to(device)
        x0, y = data[index], labels_dev[index]
        a = alphas[t].unsqueeze(1)
        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
        cond = torch.where(drop, torch.full_like(y, model.null_class), y)
        eps_on = model(x_t, t, cond)
        loss = F.mse_loss(eps_on, noise)
        if cm:
            with capacity_gate(model, 0.0):
                eps_off = model(x_t, t, cond)
            d = (eps_on - eps_off).pow(2).mean(1)
            loss = loss + cm_loss(d, y, w_con, w_div, cfg.lambda_con, lambda_div, cfg.diversity_cap)
            if step >= cfg.steps - tail:
                d_sum.index_add_(0, y.cpu(), d.detach().double().cpu())
                d_n.index_add_(0, y.cpu(), torch.ones(len(y)))
        if not math.isfinite(loss.item()):
            raise CapaugError(f"the feature diffusion loss became {loss.item()}; lower downstream.features.lr")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        if step >= cfg.steps - tail:
            loss_sum += loss.item()
    d_by_class = [float(s / n) if n else None for s, n in zip(d_sum, d_n)] if cm else None
    return FittedDenoiser(model.eval(), scheduler, mean, std, cfg.steps, time.perf_counter() - start,
                          loss_sum / tail, lambda_div, d_by_class)


@torch.no_grad()
def sample_features(fitted: FittedDenoiser, labels: Sequence[int], *, seed: int, steps: int = 100,
                    guidance: float = 1.0) -> torch.Tensor:
    """Features (N, D) float32 on the CPU, in the original feature space, for the classes `labels`; a pure
    function of (the fitted model, labels, seed, steps, guidance). DDPM ancestral sampling with diffusers'
    DDPMScheduler on the training schedule; guidance != 1 mixes in the null-class prediction (CFG)."""
    from diffusers import DDPMScheduler

    model = fitted.model.eval()
    device = next(model.parameters()).device
    dim = fitted.mean.numel()
    generator = torch.Generator().manual_seed(seed)
    out = []
    for chunk in torch.as_tensor(list(labels), dtype=torch.long).split(SAMPLE_CHUNK):
        sampler = DDPMScheduler.from_config(fitted.noise_scheduler.config)
        sampler.set_timesteps(steps)
        y = chunk.to(device)
        x = torch.randn((len(y), dim), generator=generator).to(device)
        for t in sampler.timesteps:
            tt = t.to(device).expand(len(y))
            if guidance == 1.0:
                eps = model(x, tt, y)
            else:
                null = torch.full_like(y, model.null_class)
                cond, uncond = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null])).chunk(2)
                eps = uncond + guidance * (cond - uncond)
            x = sampler.step(eps, t, x, generator=generator).prev_sample  # noise drawn on the CPU, then moved
        out.append(x.float().cpu())
    samples = torch.cat(out) if out else torch.zeros((0, dim))
    return samples * fitted.std + fitted.mean


def synthesize_features(features: torch.Tensor, labels: torch.Tensor, generate: Sequence[int],
                        cfg: FeatureSynthesisConfig, *, seed: int, groups: Optional[Sequence[str]] = None,
                        device="cpu") -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Train on (`features`, `labels`), fold the terms, sample `generate[k]` features of class k.
    Returns (features (M, D), labels (M,), record: the generator's steps, seconds, final loss, lambda_div,
    d per class, sampling seconds, generated per class)."""
    fitted = train_denoiser(features, labels, len(generate), cfg, seed=seed, groups=groups, device=device)
    fold_capacity(fitted.model)
    start = time.perf_counter()
    wanted = [k for k, n in enumerate(generate) for _ in range(n)]
    synthetic = sample_features(fitted, wanted, seed=seed + 1, steps=cfg.sample_steps, guidance=cfg.guidance)
    record = {"steps": fitted.steps, "seconds": fitted.seconds, "final_loss": fitted.final_loss,
              "lambda_div": fitted.lambda_div, "d_by_class": fitted.d_by_class,
              "sampling_seconds": time.perf_counter() - start, "generated": list(map(int, generate))}
    return synthetic, torch.as_tensor(wanted, dtype=torch.long), record
