"""EDM: Karras et al. 2022, "Elucidating the Design Space of Diffusion-Based Generative Models" (arXiv 2206.00364).

The network F (a plain diffusers UNet2DModel) is wrapped by the preconditioned denoiser of the paper's eq. 7,
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), y),
with the coefficients of Table 1 ("Preconditioning") and sigma_data = 0.5:
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)      c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)              c_noise = ln(sigma) / 4
Training (eq. 8 and Table 1, "Training"): ln sigma ~ N(P_mean, P_std^2) with P_mean = -1.2, P_std = 1.2, and
    L = E lambda(sigma) |D(x0 + sigma n; sigma) - x0|^2,   lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
lambda c_out^2 = 1, so this is a unit-weight regression of F on a unit-variance target at every noise level: F's
outputs have the scale of an epsilon prediction, which is why CM's d is measured on F (docs/train.md).

Sampling uses diffusers' EDM schedulers, which apply the same c_in (`scale_model_input`), pass c_noise as the
timestep, and form D inside `step` (`precondition_outputs`; their prediction_type "epsilon" is this F).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

SIGMA_DATA = 0.5  # the data's standard deviation (pixels in [-1, 1])
P_MEAN, P_STD = -1.2, 1.2  # training noise levels: ln sigma ~ N(P_MEAN, P_STD^2)
SIGMA_MIN, SIGMA_MAX = 0.002, 80.0  # the sampling range (the paper's CIFAR-10 setting)


@dataclass
class Noised:
    """One training batch after the forward process: what the network sees and what its output is scored on."""

    model_in: torch.Tensor  # the network's input: x_t (eps) or c_in(sigma) (x0 + sigma n) (edm)
    timestep: torch.Tensor  # (N,) the network's noise input: t (eps) or c_noise(sigma) (edm)
    x0: torch.Tensor
    noise: torch.Tensor  # n ~ N(0, I)
    noisy: torch.Tensor  # x_t (eps) or x0 + sigma n (edm)
    level: torch.Tensor  # (N,) t (eps) or sigma (edm)


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, 1, 1) in float32, to scale each sample of an image batch."""
    return values.float().view(-1, *[1] * (like.dim() - 1))


class EDMParameterization(nn.Module):
    """The EDM preconditioning, noise-level distribution and loss; `noise` and `loss` are what
    `objective.DiffusionObjective` calls, the same two methods as `objective.EpsParameterization`."""

    name = "edm"

    def __init__(self, sigma_data: float = SIGMA_DATA, p_mean: float = P_MEAN, p_std: float = P_STD):
        super().__init__()
        self.sigma_data, self.p_mean, self.p_std = sigma_data, p_mean, p_std

    @classmethod
    def from_scheduler(cls, scheduler) -> "EDMParameterization":
        """The parameterization a saved EDM scheduler describes (its sigma_data)."""
        if not is_edm(scheduler) or scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"{type(scheduler).__name__} is not an EDM schedule with F-prediction (prediction_type epsilon)")
        return cls(sigma_data=scheduler.config.sigma_data)

    # Table 1, "Preconditioning"
    def c_skip(self, sigma):
        return self.sigma_data**2 / (sigma**2 + self.sigma_data**2)

    def c_out(self, sigma):
        return sigma * self.sigma_data / (sigma**2 + self.sigma_data**2) ** 0.5

    def c_in(self, sigma):
        return 1 / (sigma**2 + self.sigma_data**2) ** 0.5

    def c_noise(self, sigma):
        return torch.log(torch.as_tensor(sigma)) / 4

    # Table 1, "Training"
    def loss_weight(self, sigma):
        return (sigma**2 + self.sigma_data**2) / (sigma * self.sigma_data) ** 2

    def sample_sigma(self, n: int, device) -> torch.Tensor:
        """ln sigma ~ N(P_mean, P_std^2), from torch's global RNG."""
        return (self.p_mean + self.p_std * torch.randn(n, device=device)).exp()

    def noise(self, x0: torch.Tensor) -> Noised:
        sigma = self.sample_sigma(len(x0), x0.device)
        n = torch.randn_like(x0)
        noisy = x0 + per_sample(sigma, x0) * n
        return Noised(model_in=per_sample(self.c_in(sigma), x0) * noisy, timestep=self.c_noise(sigma), x0=x0,
                      noise=n, noisy=noisy, level=sigma)

    def denoise(self, out: torch.Tensor, noised: Noised) -> torch.Tensor:
        """D = c_skip x + c_out F (eq. 7), in float32."""
        sigma = per_sample(noised.level, out)
        return self.c_skip(sigma) * noised.noisy.float() + self.c_out(sigma) * out.float()

    def loss(self, out: torch.Tensor, noised: Noised) -> torch.Tensor:
        """L_base = mean_i lambda(sigma_i) mean over pixels (D_i - x0_i)^2 (eq. 8)."""
        error = (self.denoise(out, noised) - noised.x0.float()) ** 2
        return (self.loss_weight(noised.level.float()) * error.flatten(1).mean(1)).mean()


def is_edm(scheduler) -> bool:
    """True for diffusers' EDM schedulers (their config carries sigma_data)."""
    return "sigma_data" in scheduler.config


def edm_schedule(sigma_data: float = SIGMA_DATA):
    """The schedule saved with an EDM model (`RUN/diffusion/model/scheduler/`): diffusers' EDMEulerScheduler,
    from whose config either EDM sampler is built."""
    from diffusers import EDMEulerScheduler

    return EDMEulerScheduler(sigma_min=SIGMA_MIN, sigma_max=SIGMA_MAX, sigma_data=sigma_data, prediction_type="epsilon")


def edm_sampler(schedule, sampler: str):
    """A fresh diffusers EDM scheduler for `sampler` on the model's sigma range (schedulers are stateful).

    dpmsolver++: EDMDPMSolverMultistepScheduler (2nd order, x0 thresholded as for the eps models); ddim: the
    deterministic Euler step, which is DDIM's update in EDM's variables (the paper, Table 1); ddpm: the stochastic
    SDE-DPM-Solver++ (EDM has no ancestral DDPM chain), noise from each image's own generator."""
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler

    keep_in_range = dict(thresholding=True, sample_max_value=1.0)
    if sampler == "dpmsolver++":
        return EDMDPMSolverMultistepScheduler.from_config(schedule.config, algorithm_type="dpmsolver++", **keep_in_range)
    if sampler == "ddim":
        return EDMEulerScheduler.from_config(schedule.config)
    if sampler == "ddpm":
        return EDMDPMSolverMultistepScheduler.from_config(schedule.config, algorithm_type="sde-dpmsolver++",
                                                          **keep_in_range)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of dpmsolver++, ddim, ddpm")
