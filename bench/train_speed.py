"""Training-step cost of CM against a plain DDPM step on the same UNet and batch (DESIGN.md, Performance contract).

Variants, one optimizer step each (forward + backward + AdamW), interleaved A B C D A B C D ... so machine noise
hits all of them alike; the median step time is reported with its ratio to plain. On CUDA a step is wall time
(synchronised); on CPU it is the process's CPU time with one intra-op thread (--threads), which a machine shared
with other jobs disturbs far less than wall time does.
  plain          L_ddpm, no capacity terms
  cm F=1         fast path (down/mid once, up path once on the doubled batch)
  cm F=0.25      fast path, off branch on a quarter of the batch
  cm two-pass    two full UNet passes, F=1

Memory: on CUDA the peak of torch.cuda.max_memory_allocated over the variant's steps; on every device also the
bytes autograd saves for backward in one step (unique storages seen by saved_tensors_hooks: activations plus the
weights they reference), which is what the CM branches add.

  python bench/train_speed.py --device cpu --channels quickstart --batch 32 --iters 20
  python bench/train_speed.py --device cuda --channels cifar10-lt --batch 128 --iters 50
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
from diffusers import DDPMScheduler

from capaug.augment.capacity import add_capacity
from capaug.augment.objective import DiffusionObjective, encode
from capaug.augment.unet import build_unet
from capaug.recipes import load_recipe

COUNTS = [500, 200, 80, 30, 10]


def variants(cfg, channels, device, channels_last):
    """name -> (objective, optimizer), every UNet initialised from the same seed."""
    settings = {
        "plain": dict(method="plain"),
        "cm F=1": dict(method="cm", cm_fraction=1.0),
        "cm F=0.25": dict(method="cm", cm_fraction=0.25),
        "cm two-pass": dict(method="cm", cm_fraction=1.0),
    }
    out = {}
    for name, update in settings.items():
        run_cfg = cfg.model_copy(update=update)
        torch.manual_seed(0)
        unet = build_unet(run_cfg, len(COUNTS), channels)
        if run_cfg.method == "cm":
            add_capacity(unet, run_cfg.rho, run_cfg.targets)
        unet = unet.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        objective = DiffusionObjective(unet, DDPMScheduler(num_train_timesteps=1000), run_cfg, COUNTS).to(device)
        objective.fast_path = objective.fast_path and name != "cm two-pass"
        out[name] = objective, torch.optim.AdamW(objective.parameters(), lr=1e-4)
    return out


def train_step(objective, optimizer, x0, labels, autocast):
    with autocast:
        loss = objective(x0, labels)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def encoder_step(objective, optimizer, x0, labels, autocast):
    """Forward + backward of the shared part only (embeddings, down, mid): what the fast path does not repeat."""
    t = torch.randint(0, 1000, (len(x0),), device=x0.device)
    with autocast:
        h, skips, _ = encode(objective.unet, x0, t, labels)
        loss = h.float().square().mean() + sum(s.float().square().mean() for s in skips)
    loss.backward()
    optimizer.zero_grad(set_to_none=True)


def saved_for_backward_bytes(objective, x0, labels, autocast) -> int:
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), autocast:
        objective(x0, labels)["loss"].backward()
    objective.zero_grad(set_to_none=True)
    return sum(storages.values())


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--channels", default="quickstart", help="recipe whose UNet shape to use (cifar10-lt: 35M)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--image-channels", type=int, default=3)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="CPU intra-op threads")
    args = parser.parse_args()

    cfg = load_recipe(args.channels).train
    if args.image_size:
        cfg = cfg.model_copy(update=dict(image_size=args.image_size))
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    clock = time.perf_counter if cuda else time.process_time
    if not cuda:
        torch.set_num_threads(args.threads)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else nullcontext()
    runs = variants(cfg, args.image_channels, device, channels_last=cuda)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.batch, args.image_channels, cfg.image_size, cfg.image_size, generator=g).to(device)
    if cuda:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    labels = torch.multinomial(torch.tensor(COUNTS, dtype=torch.float), args.batch, True, generator=g).to(device)

    saved = {name: saved_for_backward_bytes(obj, x0, labels, autocast) for name, (obj, _) in runs.items()}
    times, peaks = {name: [] for name in runs}, {name: 0 for name in runs}
    shared = []
    for i in range(args.warmup + args.iters):
        start = clock()
        encoder_step(*runs["plain"], x0, labels, autocast)
        if cuda:
            torch.cuda.synchronize()
        if i >= args.warmup:
            shared.append(clock() - start)
        for name, (objective, optimizer) in runs.items():
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = clock()
            train_step(objective, optimizer, x0, labels, autocast)
            if cuda:
                torch.cuda.synchronize()
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated())
            if i >= args.warmup:
                times[name].append(clock() - start)

    params = sum(p.numel() for p in runs["plain"][0].unet.parameters())
    print(f"{args.channels} UNet ({params / 1e6:.1f}M params), batch {args.batch}, {cfg.image_size}px, "
          f"{args.device}, {args.iters} interleaved iterations after {args.warmup} warm-up"
          + (", bf16 autocast, channels_last, wall time" if cuda else f", fp32, CPU time, {args.threads} thread(s)"))
    plain = statistics.median(times["plain"])
    print(f"{'variant':<12} {'median ms':>10} {'x plain':>8} {'saved MiB':>10}" + (f" {'peak MiB':>9}" if cuda else ""))
    for name in runs:
        median = statistics.median(times[name])
        row = f"{name:<12} {median * 1e3:>10.1f} {median / plain:>8.2f} {saved[name] / 2**20:>10.1f}"
        print(row + (f" {peaks[name] / 2**20:>9.0f}" if cuda else ""))
    up_share = 1 - statistics.median(shared) / plain
    print(f"up path + head (and the optimizer update) = {up_share:.0%} of a plain step, so an exact CM step costs about "
          f"{1 + up_share:.2f}x plain (the up path runs twice) and F=0.25 at least {1 + up_share / 4:.2f}x")


if __name__ == "__main__":
    main()
