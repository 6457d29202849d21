"""The benchmark protocol: same data, seed and step budget for every method; one comparison table.

For each method (plain, cm, cbdm, oc, cm+oc): train, synthesize to balance (the downstream set) and a fixed
number of images per class (the evaluation set, so every class, the largest too, gets FID), evaluate in one
shared in-domain feature space; then one downstream run compares real / reweight / oversample with every
method's synthetic set on the same classifier and seeds. Rerunning continues where it stopped.

    python bench/protocol.py --data builtin:digits-lt --recipe quickstart --steps 300 --out runs/protocol-digits
See bench/README.md for the budgets used and bench/RESULTS.md for results.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import time
from pathlib import Path

from capaug.augment.config import Recipe
from capaug.augment.evaluate import evaluate_run
from capaug.classifier.reference import REFERENCE
from capaug.augment.io import write_json, write_text
from capaug.augment.pipeline import run_training
from capaug.augment.split import load_split
from capaug.augment.synthesize import synthesize
from capaug.augment.train import checkpoint_dirs
from capaug.classifier.downstream import run_downstream
from capaug.recipes import load_recipe, parse_assignment

METHODS = {"plain": ("plain", "ddpm"), "cm": ("cm", "ddpm"), "cbdm": ("plain", "cbdm"), "oc": ("plain", "oc"),
           "cm+oc": ("cm", "oc"), "cm+cbdm": ("cm", "cbdm")}
GROUPS = ("many", "medium", "few")


def method_recipe(base: Recipe, name: str, steps: int) -> Recipe:
    method, base_loss = METHODS[name]
    recipe = base.model_copy(deep=True)
    recipe.train.method, recipe.train.base_loss, recipe.train.steps = method, base_loss, steps
    return recipe


def train_method(data: str, run: Path, recipe: Recipe) -> dict:
    """Train (or finish training) one method; return its mean training speed and wall time."""
    seconds_file = run / "protocol_train_seconds.json"
    if not (run / "diffusion" / "model" / "capaug.json").is_file():
        start = time.time()
        run_training(data, run, recipe, resume=bool(checkpoint_dirs(run)))
        previous = json.loads(seconds_file.read_text())["seconds"] if seconds_file.is_file() else 0.0
        write_json(seconds_file, {"seconds": previous + time.time() - start})
    with open(run / "diffusion" / "train_log.csv") as f:
        speeds = [float(r["images_per_s"]) for r in csv.DictReader(f)]
    return {"train_images_per_s": sum(speeds) / len(speeds), "train_seconds": json.loads(seconds_file.read_text())["seconds"]}


def eval_samples(run: Path, recipe: Recipe, per_class: int) -> Path:
    """`per_class` fresh images of every class (a target file real + per_class), for per-class FID."""
    split = load_split(run)
    targets = {name: n + per_class for name, n in zip(split.classes, split.counts("train"))}
    target_file = run / "eval-targets.json"
    write_json(target_file, targets)
    cfg = recipe.synthesize.model_copy(update={"target": str(target_file), "seed": recipe.synthesize.seed + 1})
    out = run / "eval-samples"
    synthesize(run / "diffusion" / "model", out, cfg, split=split)
    return out


def run_protocol(args) -> dict:
    out = Path(args.out)
    base = load_recipe(args.recipe, dict(parse_assignment(s) for s in args.set or []))
    data = args.data or base.dataset
    rows, reference = {}, None
    for name in args.methods:
        run = out / name
        recipe = method_recipe(base, name, args.steps)
        row = train_method(data, run, recipe)
        start = time.time()
        synthesize(run / "diffusion" / "model", run / "synthetic", recipe.synthesize, split=load_split(run))
        row["synthesis_seconds"] = time.time() - start
        samples = eval_samples(run, recipe, args.eval_per_class)
        if reference is not None:  # one shared feature space: the first run's reference classifier
            (run / "eval").mkdir(parents=True, exist_ok=True)
            shutil.copy(reference, run / "eval" / REFERENCE)
        metrics = evaluate_run(run, synthetic_dir=samples, downstream=base.downstream, data_cfg=base.data,
                               cas=args.cas)
        reference = run / "eval" / REFERENCE
        row["fid"] = {g: metrics["generative"]["per_group"].get(g, {}).get("fid") for g in GROUPS}
        row["fid"]["overall"] = metrics["generative"]["overall"]["fid"]
        row["fid_class_mean"] = metrics["generative"]["overall"]["class_mean"]["fid"]
        rows[name] = row

    compare = out / "downstream-compare"
    compare.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / args.methods[0] / "split.json", compare / "split.json")
    downstream = run_downstream(compare, base.downstream, {m: out / m / "synthetic" for m in args.methods},
                                ["real", "reweight", "oversample"], data_cfg=base.data)
    result = {"data": data, "recipe": args.recipe, "steps": args.steps, "methods": rows,
              "downstream": {arm: v["summary"] for arm, v in downstream["arms"].items()},
              "verdict": downstream["verdict"]["text"]}
    write_json(out / "protocol.json", result)
    write_text(out / "protocol.md", table(result))
    return result


def _pm(summary: dict | None, key: str) -> str:
    if not summary or summary.get(key) is None:
        return "-"
    s = summary[key]
    return f"{s['mean']:.3f} ± {s['std']:.3f}"


def _num(x, spec=".1f") -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    head = ("| arm | FID many | FID medium | FID few | FID overall | FID class-mean | balanced acc. | Few recall "
            "| train img/s | wall time (min) |\n|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for arm, summary in result["downstream"].items():
        m = result["methods"].get(arm)
        fid = m["fid"] if m else {}
        wall = (m["train_seconds"] + m["synthesis_seconds"]) / 60 if m else None
        lines.append(f"| {arm} | " + " | ".join(_num(fid.get(k)) for k in (*GROUPS, "overall"))
                     + f" | {_num(m and m['fid_class_mean'])} | {_pm(summary, 'balanced_accuracy')} | "
                     f"{_pm(summary, 'recall_few')} | {_num(m and m['train_images_per_s'])} | {_num(wall)} |")
    return (f"data {result['data']}, recipe {result['recipe']}, {result['steps']} steps per method\n\n" + head
            + "\n".join(lines) + f"\n\nverdict: {result['verdict']}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", help="data spec (default: the recipe's dataset)")
    parser.add_argument("--recipe", default="quickstart")
    parser.add_argument("--steps", type=int, required=True, help="training steps per method (the budget)")
    parser.add_argument("--methods", default="plain,cm", type=lambda s: s.split(","),
                        help=f"comma list of {', '.join(METHODS)}")
    parser.add_argument("--eval-per-class", type=int, default=100, help="images per class for FID")
    parser.add_argument("--cas", action="store_true", help="also the classification accuracy score")
    parser.add_argument("--out", required=True)
    parser.add_argument("--set", action="append", help="recipe override KEY=VALUE (repeatable)")
    args = parser.parse_args()
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    print(table(run_protocol(args)))


if __name__ == "__main__":
    main()
