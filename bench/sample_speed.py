"""Sampling speed of the folded CM model against a plain UNet of the same shape and the unfolded CM model
(DESIGN.md, Performance contract: folded / plain = 1.00 +- 0.05, i.e. CM costs nothing at inference).

  plain      build_unet, no capacity terms
  folded     the same shape with capacity terms (random B, so folding really changes W), folded, saved with
             model_io and loaded back: exactly what `capaug synthesize` runs
  unfolded   that model before folding (W + reshape(B A) rebuilt in every forward)

Each measurement is one `sampling.generate` call (one batch, all steps); models are interleaved
plain folded unfolded plain folded ... so machine noise hits all alike, and medians are reported. On CUDA a
measurement is wall time (generate returns host arrays, so it is synchronised; bf16 autocast as in synthesis);
on CPU it is the process's CPU time with --threads intra-op threads, which other jobs on a shared machine
disturb far less than wall time.

  python bench/sample_speed.py --device cpu --recipe quickstart --batch 16 --repeats 5
  python bench/sample_speed.py --device cuda --recipe cifar10-lt --batch 256 --repeats 10
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import torch
from diffusers import DDPMScheduler

from capaug.augment.capacity import add_capacity, capacity_parameters, fold_capacity
from capaug.augment.model_io import ModelInfo, load_diffusion_model, save_diffusion_model
from capaug.augment.sampling import SAMPLERS, generate
from capaug.augment.unet import build_unet
from capaug.recipes import load_recipe

NUM_CLASSES = 10
TOLERANCE = 0.05


def models(cfg, channels, device, folder):
    """name -> UNet2DModel (eval), every one initialised from the same seed; plus folded-vs-unfolded max abs diff."""
    torch.manual_seed(0)
    plain = build_unet(cfg, NUM_CLASSES, channels)
    unfolded = copy.deepcopy(plain)
    add_capacity(unfolded, cfg.rho, cfg.targets)
    with torch.no_grad():
        for p in capacity_parameters(unfolded):
            p.normal_(0, 0.02)
    scheduler = DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps)
    info = ModelInfo(classes=[str(k) for k in range(NUM_CLASSES)], train_counts=[1] * NUM_CLASSES, split_hash="bench",
                     image_size=cfg.image_size, channels=channels)
    save_diffusion_model(fold_capacity(copy.deepcopy(unfolded)), scheduler, info, folder)
    folded, scheduler, _ = load_diffusion_model(folder)
    nets = {"plain": plain, "folded": folded, "unfolded": unfolded}
    nets = {name: net.to(device).eval() for name, net in nets.items()}
    x = torch.randn(2, channels, cfg.image_size, cfg.image_size, device=device)
    t, y = torch.tensor([10, 500], device=device), torch.tensor([0, 1], device=device)
    with torch.no_grad():
        diff = (nets["folded"](x, t, class_labels=y).sample - nets["unfolded"](x, t, class_labels=y).sample).abs().max()
    return nets, scheduler, float(diff)


def measure(net, scheduler, sampler, args, device, labels, seeds) -> float:
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    start = clock()
    generate(net, scheduler, labels, seeds, sampler=sampler, steps=args.steps, guidance=args.guidance,
             null_class=NUM_CLASSES, batch_size=args.batch, device=device)
    return clock() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--recipe", default="quickstart", help="recipe whose train.unet shape and image size to use")
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samplers", default=",".join(SAMPLERS))
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    cfg = load_recipe(args.recipe).train
    with tempfile.TemporaryDirectory() as folder:
        nets, scheduler, diff = models(cfg, args.channels, device, folder)
    labels = [k % NUM_CLASSES for k in range(args.batch)]
    seeds = list(range(args.batch))
    print(f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else f'{args.threads} thread(s), CPU time'}); "
          f"recipe {args.recipe}: {cfg.image_size}px, channels {cfg.unet.block_out_channels}; batch {args.batch}, "
          f"{args.steps} steps, guidance {args.guidance}; folded vs unfolded max abs diff {diff:.2e}")
    ratios = []
    for sampler in args.samplers.split(","):
        times = {name: [] for name in nets}
        for name, net in nets.items():  # warm-up (kernels, allocator, cudnn autotuning)
            measure(net, scheduler, sampler, args, device, labels, seeds)
        for _ in range(args.repeats):
            for name, net in nets.items():
                times[name].append(measure(net, scheduler, sampler, args, device, labels, seeds))
        median = {name: statistics.median(t) for name, t in times.items()}
        ratios.append(median["folded"] / median["plain"])
        print(f"\n{sampler}")
        print(f"  {'model':<9} {'s/batch':>9} {'images/s':>9} {'x plain':>8}")
        for name in nets:
            print(f"  {name:<9} {median[name]:9.3f} {args.batch / median[name]:9.1f} {median[name] / median['plain']:8.3f}")
    ratio = statistics.median(ratios)
    verdict = "PASS" if abs(ratio - 1) <= TOLERANCE else "FAIL"
    print(f"\nfolded / plain (median over samplers) = {ratio:.3f}  target 1.00 +- {TOLERANCE:.2f}: {verdict}")


if __name__ == "__main__":
    main()
