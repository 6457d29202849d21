"""Class-conditional sampling from a (folded) diffusers UNet with diffusers' schedulers.

Every image owns a `torch.Generator` seeded with its own seed, used for its initial noise and for the noise of
stochastic samplers, so image i depends only on (seeds[i], labels[i], settings) and never on the batch it was
drawn in. That is what makes synthesis reproducible and resumable image by image.

Real-anchored sampling (SDEdit, as diffusers' img2img pipelines): an image given a start image and a strength s
runs the last round(s x steps) steps of the sampler's schedule from the start image noised to the first of them
(`scheduler.add_noise` with the image's own noise draw). s = 1 runs every step from pure noise, exactly as
without a start image; a strength that rounds to no step returns the start image itself.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from .edm import edm_sampler, is_edm

SAMPLERS = ("dpmsolver++", "ddim", "ddpm")


def make_sampler(noise_scheduler, sampler: str):
    """A fresh diffusers scheduler for `sampler` on the training noise schedule (schedulers are stateful); an EDM
    model's schedule gets diffusers' EDM schedulers (`edm.edm_sampler`), which precondition inside
    `scale_model_input` and `step`, so the sampling loop is the same for both."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    if is_edm(noise_scheduler):
        return edm_sampler(noise_scheduler, sampler)
    if sampler == "dpmsolver++":
        # Pixel-space models need their x0 predictions kept in range, as DDIM and DDPM do with clip_sample.
        return DPMSolverMultistepScheduler.from_config(noise_scheduler.config, algorithm_type="dpmsolver++",
                                                       thresholding=True, sample_max_value=1.0)
    if sampler == "ddim":
        return DDIMScheduler.from_config(noise_scheduler.config)
    if sampler == "ddpm":
        return DDPMScheduler.from_config(noise_scheduler.config)
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def default_dtype(device: torch.device) -> torch.dtype:
    """bf16 autocast on CUDA, exact fp32 elsewhere (CPU output is bitwise reproducible)."""
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Model space [-1, 1] NCHW -> uint8 NHWC."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def denoising_steps(strength: float, steps: int) -> int:
    """The sampler steps an image of `strength` runs: round(strength x steps), halves up (diffusers' img2img
    `get_timesteps` floors; rounding keeps e.g. 0.29 x 100 at 29)."""
    return min(steps, max(0, math.floor(strength * steps + 0.5)))


def generate(
    unet,
    noise_scheduler,
    labels: Sequence[int],
    seeds: Sequence[int],
    *,
    sampler: str = "dpmsolver++",
    steps: int = 25,
    guidance: float = 1.0,
    null_class: int,
    batch_size: int = 64,
    device=None,
    dtype: torch.dtype | None = None,
    init_images: Optional[np.ndarray] = None,
    strength: Optional[Sequence[float]] = None,
) -> np.ndarray:
    """Sample one image per (label, seed) pair; returns uint8 (N, H, W, C).

    Classifier-free guidance follows diffusers: eps = eps_u + guidance * (eps_c - eps_u), with eps_u the
    prediction for `null_class`; guidance 1 is plain conditional sampling and skips the unconditional pass.
    `init_images` (uint8 (N, H, W, C) at the model's resolution and channels) with one `strength` in (0, 1] per
    image starts image i from init_images[i] (module docstring); images are batched by their first step.
    """
    if len(labels) != len(seeds):
        raise ValueError(f"{len(labels)} labels but {len(seeds)} seeds")
    channels, size = unet.config.out_channels, unet.config.sample_size
    first = [0] * len(seeds)
    if init_images is not None:
        if strength is None or len(strength) != len(seeds) or init_images.shape != (len(seeds), size, size, channels):
            raise ValueError(f"init_images must be uint8 ({len(seeds)}, {size}, {size}, {channels}) with one strength each")
        first = [steps - denoising_steps(s, steps) for s in strength]
    device = torch.device(device) if device is not None else next(unet.parameters()).device
    dtype = dtype or default_dtype(device)
    out = np.zeros((len(seeds), size, size, channels), np.uint8)
    was_training = unet.training
    unet.eval()
    try:
        for start in sorted(set(first)):
            group = [i for i, f in enumerate(first) if f == start]
            for chunk in (group[i : i + batch_size] for i in range(0, len(group), batch_size)):
                if start == steps:  # no step to run: the start image is the result
                    out[chunk] = init_images[chunk]
                    continue
                init = None
                if start > 0:
                    init = torch.from_numpy(init_images[chunk]).permute(0, 3, 1, 2).to(device).float() / 127.5 - 1.0
                out[chunk] = _sample_batch(
                    unet, noise_scheduler, [labels[i] for i in chunk], [seeds[i] for i in chunk], sampler=sampler,
                    steps=steps, guidance=guidance, null_class=null_class, device=device, dtype=dtype,
                    init=init, start=start,
                )
    finally:
        unet.train(was_training)
    return out


@torch.no_grad()
def _sample_batch(unet, noise_scheduler, labels, seeds, *, sampler, steps, guidance, null_class, device, dtype,
                  init=None, start=0):
    """One batch from step `start` of the schedule: pure noise at 0, else `init` noised to timesteps[start]."""
    from diffusers.utils.torch_utils import randn_tensor

    scheduler = make_sampler(noise_scheduler, sampler)
    scheduler.set_timesteps(steps, device=device)
    generators = [torch.Generator().manual_seed(int(s)) for s in seeds]
    size = unet.config.sample_size
    shape = (len(seeds), unet.config.in_channels, size, size)
    noise = randn_tensor(shape, generator=generators, device=device, dtype=torch.float32)
    timesteps = scheduler.timesteps[start * scheduler.order :]
    if start == 0:
        x = noise * scheduler.init_noise_sigma
    else:
        if hasattr(scheduler, "set_begin_index"):
            scheduler.set_begin_index(start * scheduler.order)
        x = scheduler.add_noise(init, noise, timesteps[:1].repeat(len(seeds)))
    cond = torch.as_tensor(list(labels), device=device, dtype=torch.long)
    guided = guidance != 1.0
    class_labels = torch.cat([cond, torch.full_like(cond, null_class)]) if guided else cond
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    for t in timesteps:
        model_in = scheduler.scale_model_input(x, t)
        if guided:
            model_in = torch.cat([model_in, model_in])
        with autocast:
            eps = unet(model_in, t, class_labels=class_labels).sample.float()
        if guided:
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + guidance * (eps_c - eps_u)
        x = scheduler.step(eps, t, x, generator=generators).prev_sample
    return to_uint8(x)
