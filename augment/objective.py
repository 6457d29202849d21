"""One training step's loss: L = L_base(eps_on) + L_CM (DESIGN.md, The CM method), as an nn.Module for DDP.

The efficient CM step: with low-rank terms only in the up path, the on and off branches share everything before
it, so `encode` (embeddings, conv_in, down, mid) runs once and `decode` (up path, conv_norm_out/act, conv_out) runs
once on the doubled batch [every sample, gate on ; the cm_fraction subset, gate off]. Otherwise two full passes.

Precision: d is a difference of two nearly equal predictions (|eps_on - eps_off| ~ 1e-3), and rounding both to
bf16 near 1 makes d rounding noise (about ulp x |eps_on - eps_off| instead of its square). So under autocast the
part where the branches differ (the up path on the fast path, the whole UNet otherwise) runs in float32; the
shared down/mid path keeps the autocast precision.
`encode` + `decode` follow `diffusers.UNet2DModel.forward` for the UNets `unet.build_unet` makes.

The parameterization (`cfg.parameterization`) decides how x0 is noised and what L_base scores the network's output
on: `EpsParameterization` (DDPM epsilon prediction) or `edm.EDMParameterization` (Karras et al. 2022). Either way
the UNet's raw outputs of the on and off branches give d: eps under eps, F under edm (the same unit scale).
"""

from __future__ import annotations

import torch
from torch import nn

from .capacity import CAPACITY_METHODS, SplitGate, capacity_gate, capacity_layers, capacity_outside_up
from .config import TrainConfig
from .edm import EDMParameterization, Noised
from .paired_dropout import PairedDropout
from .losses import (
    auto_lambda_div,
    cbdm_loss,
    cbdm_pairs,
    class_weights,
    cm_loss,
    ddpm_loss,
    min_snr_weights,
    oc_loss,
    pixel_mean,
)
from .stats import class_stats


def resolve_lambda_div(cfg: TrainConfig, train_counts, groups=None) -> float:
    """The number `lambda_div: auto` stands for (losses.auto_lambda_div), or the configured value.
    `groups`: the split's Many/Medium/Few per class (default: stats.class_stats with its default thresholds)."""
    if cfg.lambda_div != "auto":
        return float(cfg.lambda_div)
    if groups is None:
        groups = class_stats([str(k) for k in range(len(train_counts))], list(train_counts)).groups
    return auto_lambda_div(train_counts, groups, cfg.lambda_con)


def full_precision(device_type: str):
    """Autocast off: what runs inside computes in the tensors' own (float32) precision."""
    return torch.autocast(device_type, enabled=False)


def shares_encoder(unet) -> bool:
    """True when the on and off branches agree up to the up path (low-rank terms only there) and `encode`/`decode`
    cover the UNet (positional time embedding, label embedding, no skip-conv blocks)."""
    c = unet.config
    return (
        c.time_embedding_type == "positional"
        and c.class_embed_type is None
        and not c.center_input_sample
        and not any(hasattr(b, "skip_conv") for b in [*unet.down_blocks, *unet.up_blocks])
        and not capacity_outside_up(unet)
    )


def encode(unet, x_t, t, labels):
    """UNet2DModel.forward steps 1-4: (mid-block output, down-path residuals, time + class embedding)."""
    emb = unet.time_embedding(unet.time_proj(t).to(unet.dtype))
    emb = emb + unet.class_embedding(labels).to(unet.dtype)
    h = unet.conv_in(x_t)
    skips = (h,)
    for block in unet.down_blocks:
        h, res = block(hidden_states=h, temb=emb)
        skips += res
    if unet.mid_block is not None:
        h = unet.mid_block(h, emb)
    return h, skips, emb


def decode(unet, h, skips, emb):
    """UNet2DModel.forward steps 5-6: up path and output head."""
    for block in unet.up_blocks:
        n = len(block.resnets)
        h, skips = block(h, skips[-n:], emb), skips[:-n]
    return unet.conv_out(unet.conv_act(unet.conv_norm_out(h)))


class EpsParameterization(nn.Module):
    """DDPM epsilon prediction (DESIGN.md): t ~ U{0..T-1}, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) n, the network
    predicts n; L_base (ddpm) = mean (eps - n)^2, each sample times its min-SNR weight with loss_weighting min_snr."""

    name = "eps"

    def __init__(self, noise_scheduler, cfg: TrainConfig):
        super().__init__()
        if noise_scheduler.config.prediction_type != "epsilon":
            raise ValueError("DiffusionObjective trains epsilon prediction")
        self.noise_scheduler = noise_scheduler
        self.snr_gamma = cfg.snr_gamma if cfg.loss_weighting == "min_snr" else None
        self.register_buffer("alphas_cumprod", noise_scheduler.alphas_cumprod.clone(), persistent=False)

    def noise(self, x0) -> Noised:
        t = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (len(x0),), device=x0.device)
        n = torch.randn_like(x0)
        x_t = self.noise_scheduler.add_noise(x0, n, t)
        return Noised(model_in=x_t, timestep=t, x0=x0, noise=n, noisy=x_t, level=t)

    def weights(self, noised: Noised):
        """Min-SNR-gamma weights per sample (diffusers' compute_snr), or None."""
        if self.snr_gamma is None:
            return None
        from diffusers.training_utils import compute_snr

        return min_snr_weights(compute_snr(self.noise_scheduler, noised.level), self.snr_gamma)

    def loss(self, eps, noised: Noised):
        return ddpm_loss(eps, noised.noise, self.weights(noised))


def make_parameterization(noise_scheduler, cfg: TrainConfig) -> nn.Module:
    """The noising and L_base of `cfg.parameterization`, on the model's noise schedule."""
    if cfg.parameterization == "edm":
        return EDMParameterization.from_scheduler(noise_scheduler)
    return EpsParameterization(noise_scheduler, cfg)


class DiffusionObjective(nn.Module):
    """forward(x0, labels) -> dict(loss, loss_base, loss_cm, d); t, noise, label dropout and the cm_fraction subset
    come from torch's global RNG on x0's device. `fast_path` says whether the CM step shares the down/mid path;
    `lambda_div` is the resolved number (`auto` -> resolve_lambda_div with the split's `groups`)."""

    def __init__(self, unet, noise_scheduler, cfg: TrainConfig, train_counts, groups=None):
        super().__init__()
        if cfg.method in CAPACITY_METHODS and not capacity_layers(unet):
            raise ValueError(f"method {cfg.method!r} needs capacity terms: call capacity.add_capacity(unet, ...) first")
        self.unet, self.noise_scheduler, self.cfg = unet, noise_scheduler, cfg
        self.lambda_div = resolve_lambda_div(cfg, train_counts, groups)
        self.num_classes = len(train_counts)
        w_con, w_div = class_weights(train_counts)
        counts = torch.as_tensor(train_counts, dtype=torch.float32)
        self.register_buffer("w_con", w_con, persistent=False)
        self.register_buffer("w_div", w_div, persistent=False)
        self.register_buffer("label_prob", counts / counts.sum(), persistent=False)
        self.parameterization = make_parameterization(noise_scheduler, cfg)
        self.fast_path = cfg.method == "cm" and shares_encoder(unet)  # lowrank trains the on branch only
        self.dropout = PairedDropout(unet)

    def predict(self, x_t, t, labels, off, fast: bool | None = None):
        """(network output on for every row, off for the rows `off`), by the fast path or by two full passes."""
        fast = self.fast_path if fast is None else fast
        if fast:
            if not shares_encoder(self.unet):
                raise ValueError("the fast CM path needs capacity terms in the up path only")
            h, skips, emb = encode(self.unet, x_t, t, labels)

            def doubled(z):  # float32 copies: the up path runs in full precision
                return torch.cat([z, z[off]]).float()

            with capacity_gate(self.unet, SplitGate(len(x_t))), self.dropout.doubled(len(x_t), off), \
                    full_precision(x_t.device.type):
                eps = decode(self.unet, doubled(h), tuple(map(doubled, skips)), doubled(emb))
            return eps.split([len(x_t), len(off)])
        with full_precision(x_t.device.type):
            with capacity_gate(self.unet, 1.0), self.dropout.record():
                eps_on = self.unet(x_t, t, labels).sample
            with capacity_gate(self.unet, 0.0), self.dropout.replay(off):
                eps_off = self.unet(x_t[off], t[off], labels[off]).sample
        return eps_on, eps_off

    def forward(self, x0, labels):
        cfg, n, device = self.cfg, len(x0), x0.device
        noised = self.parameterization.noise(x0)
        x_t, t = noised.model_in, noised.timestep
        cond = labels.masked_fill(torch.rand(n, device=device) < cfg.p_uncond, self.num_classes)

        # the on-branch batch: every sample, plus (cbdm) the labelled ones again with a second label y'
        x_in, t_in, y_in, labelled = x_t, t, cond, None
        if cfg.base_loss == "cbdm":
            labelled, y_other = cbdm_pairs(cond, self.num_classes, self.label_prob)
            x_in, t_in, y_in = torch.cat([x_t, x_t[labelled]]), torch.cat([t, t[labelled]]), torch.cat([cond, y_other])

        d = torch.full((n,), float("nan"), device=device)
        if cfg.method == "cm":
            off = torch.randperm(n, device=device)[: max(1, round(cfg.cm_fraction * n))]
            eps_in, eps_off = self.predict(x_in, t_in, y_in, off)
            d_off = pixel_mean((eps_in[off].float() - eps_off.float()) ** 2)
            loss_cm = cm_loss(d_off, labels[off], self.w_con, self.w_div, cfg.lambda_con, self.lambda_div,
                              cfg.diversity_cap)
            d[off] = d_off.detach()
        else:
            eps_in = self.unet(x_in, t_in, y_in).sample
            loss_cm = torch.zeros((), device=device)
        loss_base = self.base_loss(eps_in[:n], eps_in[n:], labelled, noised, labels)
        loss = loss_base + loss_cm
        return dict(loss=loss, loss_base=loss_base.detach(), loss_cm=loss_cm.detach(), d=d)

    def base_loss(self, eps_on, eps_other, labelled, noised: Noised, labels):
        """L_base on the on branch: the parameterization's denoising loss (ddpm), or CBDM / OC (eps only: the
        config refuses them with edm). `eps_other`: CBDM's predictions for the rows `labelled` with label y'."""
        cfg, param = self.cfg, self.parameterization
        if cfg.base_loss == "ddpm":
            return param.loss(eps_on, noised)
        if cfg.base_loss == "cbdm":
            T = self.noise_scheduler.config.num_train_timesteps
            return cbdm_loss(eps_on, noised.noise, eps_other, labelled, noised.level, T, cfg.cbdm_tau, cfg.cbdm_gamma,
                             param.weights(noised))
        return oc_loss(eps_on, noised.noisy, noised.x0, param.alphas_cumprod[noised.level], self.label_prob[labels],
                       param.weights(noised))
