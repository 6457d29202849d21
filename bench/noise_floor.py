"""The noise floor of a downstream benchmark: how small a balanced-accuracy difference it can see.

Trains only the classic arms (real, reweight, oversample) over `--seeds` S classifier seeds on the benchmark's
split, in one `run_downstream` call (the machinery every verdict uses), and reports:

- the seed spread: each arm's standard deviation of test balanced accuracy over the S seeds;
- for every pair of arms (reweight - real, oversample - real, and the other classic arm - the best one):
  the standard deviation sd of the per-seed paired differences, the 95% t-interval half-width for S seeds
  (t_{S-1,0.975} sd / sqrt(S)), the paired test-image bootstrap's 95% half-width (of the S-seed mean, class-
  stratified, `downstream.bootstrap` resamples), and the seeds a half-width <= `--target` needs: the smallest n
  with t_{n-1,0.975} sd / sqrt(n) <= target, taking the measured sd as the truth.

Writes OUT/noise_floor.json (OUT/downstream/ holds the classifier report) and prints the figures.

    python bench/noise_floor.py --preset cifar10-lt-small --size 16 --seeds 10 --out runs/noise-floor-16
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from scipy import stats

from capaug.augment.errors import CapaugError
from capaug.augment.io import write_json, write_text
from capaug.augment.split import prepare_split
from capaug.classifier.downstream import run_downstream
from capaug.recipes import load_recipe, parse_assignment

from protocol import add_data_options, apply_preset, print_progress

CLASSIC = ["real", "reweight", "oversample"]
METRIC = "balanced_accuracy"
MOST_SEEDS = 10_000


def t_half_width(sd: float, n: int) -> float:
    """95% t-interval half-width of a mean of n paired differences with standard deviation sd."""
    return float(stats.t.ppf(0.975, n - 1) * sd / math.sqrt(n))


def seeds_needed(sd: float, target: float) -> int | None:
    """The smallest n >= 2 with t_half_width(sd, n) <= target (None beyond MOST_SEEDS)."""
    return next((n for n in range(2, MOST_SEEDS + 1) if t_half_width(sd, n) <= target), None)


def pairs(metrics: dict) -> dict[str, dict]:
    """'arm - baseline' -> that paired difference of balanced accuracy, from metrics.json: each arm against real
    and the non-best classic arm against the best (together every pair of the three)."""
    found, seen = {}, set()
    for key, baseline in (("vs_real", "real"), ("vs_best_classic", metrics["best_classic"])):
        for arm, row in metrics["arms"].items():
            if row.get(key) and frozenset((arm, baseline)) not in seen:  # real - best classic = -(best - real)
                seen.add(frozenset((arm, baseline)))
                found[f"{arm} - {baseline}"] = row[key][METRIC]
    return found


def noise_floor(metrics: dict, target: float) -> dict:
    """The figures of one classic-arms downstream run (its metrics.json content)."""
    seeds = metrics["settings"]["seeds"]
    arms = {arm: {k: row["summary"][METRIC][k] for k in ("mean", "std", "n")} for arm, row in metrics["arms"].items()}
    rows = {}
    for name, diff in pairs(metrics).items():
        sd, boot = diff["std"], diff.get("bootstrap95")
        rows[name] = {"mean": diff["mean"], "sd": sd, "per_seed": diff["per_seed"],
                      "t_half_width": (diff["interval95"][1] - diff["interval95"][0]) / 2 if diff["interval95"] else None,
                      "bootstrap_half_width": (boot[1] - boot[0]) / 2 if boot else None,
                      "seeds_needed": seeds_needed(sd, target) if seeds > 1 else None}
    needed = [r["seeds_needed"] for r in rows.values()]
    return {"seeds": seeds, "target": target, "test_images": sum(metrics["counts"]["test"]),
            "train_images": sum(metrics["counts"]["train"]), "val_images": sum(metrics["counts"]["val"]),
            "budget": metrics["settings"]["budget"], "model": metrics["settings"]["model"], "arms": arms,
            "pairs": rows, "seeds_needed_max": None if None in needed or not needed else max(needed)}


def report(result: dict) -> str:
    lines = [f"{result['data']}: classic arms, {result['seeds']} seeds, {result['model']}, "
             f"{result['budget']['optimizer_steps']} optimizer steps per model; {result['train_images']} train / "
             f"{result['val_images']} val / {result['test_images']} test images", "",
             "| arm | balanced acc. mean | std over seeds |", "|---|---:|---:|"]
    lines += [f"| {arm} | {a['mean']:.4f} | {a['std']:.4f} |" for arm, a in result["arms"].items()]
    lines += ["", f"| paired difference | mean | sd over seeds | t half-width ({result['seeds']} seeds) "
                  f"| bootstrap half-width | seeds for a t half-width <= {result['target']:g} |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in result["pairs"].items():
        cells = [_f(r["mean"], "+.4f"), _f(r["sd"], ".4f"), _f(r["t_half_width"], ".4f"),
                 _f(r["bootstrap_half_width"], ".4f"), _f(r["seeds_needed"], "d", f"> {MOST_SEEDS}")]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"seeds needed (the largest over the pairs): {_f(result['seeds_needed_max'], 'd', 'n/a')}"]
    return "\n".join(lines) + "\n"


def _f(x, spec: str, missing: str = "-") -> str:
    return missing if x is None else format(x, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=10, help="classifier seeds S (default 10)")
    parser.add_argument("--target", type=float, default=0.01, help="the half-width to reach (default 0.01)")
    parser.add_argument("--out", required=True, help="a new run folder (its split.json is made here)")
    add_data_options(parser)
    args = parser.parse_args()
    apply_preset(args, parser)
    if args.seeds < 2:
        parser.error("--seeds must be at least 2 (a spread needs two)")
    if args.target <= 0:
        parser.error("--target must be above 0")
    recipe = load_recipe(args.recipe, {**dict(parse_assignment(s) for s in args.set or []), "downstream.seeds": args.seeds})
    data = args.data or recipe.dataset
    out = Path(args.out)
    try:
        prepare_split(data, out, recipe.data)
        metrics = run_downstream(out, recipe.downstream, arms=CLASSIC, data_cfg=recipe.data, tune=False,
                                 on_model=print_progress)
    except CapaugError as e:
        raise SystemExit(f"error: {e}")
    result = {"data": data, "recipe": args.recipe, "set": args.set or [], **noise_floor(metrics, args.target)}
    write_json(out / "noise_floor.json", result)
    write_text(out / "noise_floor.md", report(result))
    print(report(result))


if __name__ == "__main__":
    main()
