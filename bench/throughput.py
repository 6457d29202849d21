"""CPU training throughput of one recipe's training step under execution settings, as ratios to the default.

Variants, one optimizer step each (the recipe's objective: forward + backward + AdamW), interleaved and rotated
(A B C .., B C .. A, ...) so machine noise hits all of them alike; wall time per step, median over iterations,
reported as training images/s and as the speed ratio to `default` (> 1: faster), with the process CPU time
per step beside it (all threads; at equal thread counts it is less disturbed by other jobs than wall time):
  default          torch's default intra-op threads (the machine's cores), contiguous memory
  channels_last    the UNet and the batch in channels_last (what `train.channels_last: yes` does)
  compile          torch.compile of the objective (CPU inductor; its compile time is printed separately)
  threads=N        torch.set_num_threads(N) around the step, for each N of --threads other than the default
Inter-op threads (`torch.set_num_interop_threads`) can be set only once per process, before any parallel work,
so they cannot be interleaved: `--interop N` sets them for the whole run (compare two runs' `default` rows).

  python bench/throughput.py --recipe small --batch 32 --iters 5
  python bench/throughput.py --recipe small --batch 32 --iters 5 --no-compile --interop 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

COUNTS = [500, 200, 80, 30, 10]  # class counts of a long-tailed split (the objective's CM weights)


def build(cfg, channels_last: bool, compiled: bool):
    """(objective, optimizer) of the recipe's method on random class counts; the same seed for every variant."""
    from capaug.augment.model_build import build_model, noise_schedule
    from capaug.augment.objective import DiffusionObjective

    torch.manual_seed(0)
    unet = build_model(cfg, len(COUNTS), 3)
    if channels_last:
        unet = unet.to(memory_format=torch.channels_last)
    objective = DiffusionObjective(unet, noise_schedule(cfg), cfg, COUNTS)
    optimizer = torch.optim.AdamW([p for p in unet.parameters() if p.requires_grad], lr=cfg.lr)
    return (torch.compile(objective) if compiled else objective), optimizer


def step(objective, optimizer, x0, labels) -> None:
    loss = objective(x0, labels)["loss"]
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--iters", type=int, default=5, help="measured interleaved iterations")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", default="1,2", help="comma list of intra-op thread counts to compare")
    parser.add_argument("--interop", type=int, default=None, help="inter-op threads for the whole run")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--set", action="append", default=[], help="recipe override KEY=VALUE (train.method=plain)")
    args = parser.parse_args()

    from capaug.recipes import load_recipe, parse_assignment

    if args.interop:
        torch.set_num_interop_threads(args.interop)
    cfg = load_recipe(args.recipe, dict(parse_assignment(s) for s in args.set)).train
    cfg = cfg.model_copy(update=dict(image_size=args.image_size))
    default_threads = torch.get_num_threads()
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(args.batch, 3, args.image_size, args.image_size, generator=g) * 2 - 1
    labels = torch.multinomial(torch.tensor(COUNTS, dtype=torch.float), args.batch, True, generator=g)

    variants = {"default": (build(cfg, False, False), default_threads, x0),
                "channels_last": (build(cfg, True, False), default_threads,
                                  x0.contiguous(memory_format=torch.channels_last))}
    compile_note = "skipped (--no-compile)"
    if args.compile:
        compiled = build(cfg, False, True)
        start = time.perf_counter()
        try:
            step(*compiled, x0, labels)
            compile_note = f"first step (compilation) {time.perf_counter() - start:.0f} s"
            variants["compile"] = (compiled, default_threads, x0)
        except Exception as e:  # a missing compiler or an unsupported op: say so, measure the rest
            compile_note = f"failed after {time.perf_counter() - start:.0f} s: {type(e).__name__}: {str(e)[:200]}"
    for n in (int(t) for t in args.threads.split(",") if t and int(t) != default_threads):  # default: itself
        variants[f"threads={n}"] = (build(cfg, False, False), n, x0)

    names = list(variants)
    times, cpu = {name: [] for name in names}, {name: [] for name in names}
    for i in range(args.warmup + args.iters):
        order = names[i % len(names):] + names[: i % len(names)]
        for name in order:
            (objective, optimizer), threads, x = variants[name]
            torch.set_num_threads(threads)
            start, start_cpu = time.perf_counter(), time.process_time()
            step(objective, optimizer, x, labels)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
        torch.set_num_threads(default_threads)
        print(f"iteration {i + 1}/{args.warmup + args.iters} done", file=sys.stderr, flush=True)

    params = sum(p.numel() for p in variants["default"][0][0].unet.parameters())
    print(f"recipe {args.recipe} (method {cfg.method}, parameterization {cfg.parameterization}), UNet "
          f"{params / 1e6:.2f}M params, batch {args.batch}, {args.image_size} px, fp32 CPU, default threads "
          f"{default_threads}, inter-op threads {torch.get_num_interop_threads()}, torch {torch.__version__}")
    print(f"{args.iters} interleaved iterations after {args.warmup} warm-up; wall time (a shared machine: ratios, "
          f"not absolute numbers); compile: {compile_note}")
    base = statistics.median(times["default"])
    base_cpu = statistics.median(cpu["default"])
    print(f"{'variant':<14} {'median s':>9} {'images/s':>9} {'x default':>10} {'min s':>7} {'max s':>7} "
          f"{'CPU s':>7} {'CPU speed x':>12}")
    for name in names:
        median, median_cpu = statistics.median(times[name]), statistics.median(cpu[name])
        print(f"{name:<14} {median:>9.3f} {args.batch / median:>9.1f} {base / median:>10.2f} "
              f"{min(times[name]):>7.3f} {max(times[name]):>7.3f} {median_cpu:>7.2f} {base_cpu / median_cpu:>12.2f}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
