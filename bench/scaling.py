"""The scaling curve of one generator: what more training buys, measured at stage boundaries.

One generator (the recipe's method) is trained in stages (`--stages`, default 250,500,1000,2000,4000,8000 steps),
each stage resuming the last one's checkpoint (`run_training(..., resume=True)`, what `capaug train --resume`
does; `steps` is a recovery setting). At each boundary the folded model and the checkpoint are copied to
OUT/stage-<steps>/ (the run's model folder is overwritten when the next stage ends), and that stage is measured:

  (a) recognition share: of `--per-class` fresh samples of every class, the share the reference classifier
      (trained once on the real training split, OUT/run/eval/reference_classifier.safetensors, the same for every
      stage) assigns to the class they were drawn for;
  (b) FID per class, group and overall in that classifier's features (`evaluate_run` on the same samples);
  (c) downstream gain: `run_downstream` with tune=True on the stage's balanced synthetic set beside real,
      reweight and oversample: the setting chosen on val from `downstream.tune_grid` (set the grid with --set)
      against the best classic arm, with its paired 95% t-interval over seeds and test-image bootstrap. Every
      stage shares one model cache, OUT/classifier-cache/ (classifier/model_cache.py): the classic arms read no
      synthetic image, so they train at the first stage only and every later stage reuses their results.

After each stage OUT/scaling.csv, OUT/scaling.json and OUT/scaling.png (gain with its interval, recognition share
and FID against images seen = steps x batch size) are rewritten and the table printed. A rerun reads the stages
already in scaling.json and trains on from the run's last checkpoint: add stages to extend the curve.

    python bench/scaling.py --preset cifar10-lt-small --size 16 --out runs/scaling-16
    python bench/scaling.py --data builtin:digits-lt --recipe quickstart --stages 250,500,750 --out runs/scaling-digits
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from capaug.augment.checkpoints import checkpoint_dirs
from capaug.augment.config import Recipe
from capaug.augment.errors import CapaugError
from capaug.augment.evaluate import evaluate_run
from capaug.augment.io import atomic_dir, save_figure, write_json, write_text
from capaug.augment.model_io import read_model_info
from capaug.augment.pipeline import run_training
from capaug.augment.split import load_split
from capaug.augment.synthesize import synthesize
from capaug.classifier.data import FolderReader, load_synthetic_set
from capaug.classifier.downstream import run_downstream
from capaug.classifier.reference import REFERENCE, reference_for_run
from capaug.recipes import load_recipe, parse_assignment

from protocol import GROUPS, add_data_options, apply_preset, eval_samples, print_progress

DEFAULT_STAGES = "250,500,1000,2000,4000,8000"
CLASSIC = ["real", "reweight", "oversample"]
COLUMNS = ["steps", "images_seen", "recognised", "recognised_few", "fid_overall", "fid_few", "fid_class_mean",
           "gain", "gain_low", "gain_high", "bootstrap_low", "bootstrap_high", "chosen", "baseline", "status",
           "train_minutes", "stage_minutes"]


def parse_stages(text: str) -> list[int]:
    """'250,500,1000' -> [250, 500, 1000]: whole step counts, increasing."""
    try:
        stages = [int(s) for s in text.split(",")]
    except ValueError:
        raise ValueError(f"--stages {text!r}: expected whole step counts joined by commas") from None
    if not stages or stages[0] < 1 or any(b <= a for a, b in zip(stages, stages[1:])):
        raise ValueError(f"--stages {text!r}: step counts must be at least 1 and increase")
    return stages


def last_checkpoint_step(run: Path) -> int:
    found = checkpoint_dirs(run)
    return int(json.loads((found[-1] / "state.json").read_text())["step"]) if found else 0


def train_to(data: str, run: Path, recipe: Recipe, steps: int) -> float:
    """Train (or resume) the run to `steps`; its wall time in seconds (0 when the run is there already)."""
    done = last_checkpoint_step(run)
    if done > steps:
        raise CapaugError(f"stage {steps} lies below the run's last checkpoint (step {done}): a stage can only be "
                          "added beyond the steps already trained")
    model = run / "diffusion" / "model"
    if done == steps and (model / "capaug.json").is_file() and read_model_info(model).step == steps:
        return 0.0
    start = time.time()
    run_training(data, run, recipe.model_copy(update={"train": recipe.train.model_copy(update={"steps": steps})}),
                 resume=done > 0)
    return time.time() - start


def snapshot(run: Path, stage: Path, steps: int) -> None:
    """Copy what this stage is measured on into OUT/stage-<steps>/: the split, the folded model (as
    diffusion/model, so the stage folder is a run folder for synthesis and evaluation) and the checkpoint."""
    stage.mkdir(parents=True, exist_ok=True)
    if not (stage / "split.json").is_file():
        write_text(stage / "split.json", (run / "split.json").read_text())
    copies = {stage / "diffusion" / "model": run / "diffusion" / "model",
              stage / "checkpoint": run / "diffusion" / "checkpoints" / f"step-{steps}"}
    for target, source in copies.items():
        if not target.is_dir():
            with atomic_dir(target, "bench/scaling.py snapshot") as tmp:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
    if read_model_info(stage / "diffusion" / "model").step != steps:
        raise CapaugError(f"{stage / 'diffusion' / 'model'} is not the model of step {steps}; remove {stage} and rerun")


def recognition(bundle, samples: Path, split) -> dict[str, float]:
    """Per class, the share of the class's samples that the reference classifier assigns to that class."""
    synthetic = load_synthetic_set("eval-samples", samples, split.classes, split.hash)
    reader = FolderReader(synthetic.folder, split.mode)
    labels = np.array([y for _, y in synthetic.items])
    predicted = bundle.predict_proba([reader.read(key) for key, _ in synthetic.items]).argmax(axis=1)
    return {name: float((predicted[labels == k] == k).mean()) for k, name in enumerate(split.classes)
            if (labels == k).any()}


def measure_stage(stage: Path, recipe: Recipe, reference: Path, per_class: int, model_cache: Path) -> dict:
    """(a) recognition share, (b) FID, (c) downstream gain of one stage folder, and the wall time of each part
    (evaluate: the fixed samples, recognition and FID; synthesis: the balanced set; downstream, whose classifiers'
    results are kept in `model_cache`, shared by the stages)."""
    split = load_split(stage)
    stats = split.stats(recipe.data)
    start = time.time()
    samples = eval_samples(stage, recipe, per_class)
    (stage / "eval").mkdir(exist_ok=True)
    shutil.copy(reference, stage / "eval" / REFERENCE)  # one feature space (and +filter classifier) for all stages
    bundle = reference_for_run(stage, split, recipe.downstream)
    shares = recognition(bundle, samples, split)
    metrics = evaluate_run(stage, synthetic_dir=samples, downstream=recipe.downstream, data_cfg=recipe.data, cas=False)
    generative = metrics["generative"]
    seconds = {"evaluate": time.time() - start}
    start = time.time()
    synthesize(stage / "diffusion" / "model", stage / "synthetic", recipe.synthesize, split=split)
    seconds["synthesis"] = time.time() - start
    start = time.time()
    downstream = run_downstream(stage, recipe.downstream, arms=CLASSIC, data_cfg=recipe.data, tune=True,
                                synth_cfg=recipe.synthesize, on_model=print_progress, model_cache=model_cache)
    seconds["downstream"] = time.time() - start
    verdict = downstream["verdict"]
    summary = {arm: v["summary"]["balanced_accuracy"]["mean"] for arm, v in downstream["arms"].items()}
    return {
        "recognition": {"overall": statistics.fmean(shares.values()), "per_class": shares,
                        **{g: group_mean(shares, split.classes, stats.groups, g) for g in GROUPS}},
        "fid": {**{g: generative["per_group"].get(g, {}).get("fid") for g in GROUPS},
                "overall": generative["overall"]["fid"], "class_mean": generative["overall"]["class_mean"]["fid"],
                "per_class": {c: row["fid"] for c, row in generative["per_class"].items()}},
        "downstream": {"chosen": downstream["tuning"]["chosen"], "baseline": verdict["baseline"],
                       "gain": verdict["mean"], "interval95": verdict["interval95"],
                       "bootstrap95": verdict["bootstrap95"], "status": verdict["status"],
                       "balanced_accuracy": summary, "text": verdict["text"]},
        "seconds_by_part": seconds,
    }


def group_mean(shares: dict, classes: list[str], groups: list[str], group: str):
    values = [shares[c] for c, g in zip(classes, groups) if g == group and c in shares]
    return statistics.fmean(values) if values else None


def csv_text(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        d = r["downstream"]
        interval, boot = d["interval95"] or [None, None], d["bootstrap95"] or [None, None]
        writer.writerow([r["steps"], r["images_seen"], r["recognition"]["overall"], r["recognition"]["few"],
                         r["fid"]["overall"], r["fid"]["few"], r["fid"]["class_mean"], d["gain"], *interval, *boot,
                         d["chosen"], d["baseline"], d["status"], round(r["train_seconds"] / 60, 2),
                         round(r["seconds"] / 60, 2)])
    return buffer.getvalue()


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(rows: list[dict]) -> str:
    lines = ["| steps | images seen | recognised (class mean) | recognised Few | FID overall | FID Few "
             "| gain vs best classic [95% t] | bootstrap | chosen | baseline | minutes |",
             "|---:|---:|---:|---:|---:|---:|---|---|---|---|---:|"]
    for r in rows:
        d = r["downstream"]
        interval = d["interval95"] and f" [{d['interval95'][0]:+.3f}, {d['interval95'][1]:+.3f}]"
        boot = d["bootstrap95"] and f"[{d['bootstrap95'][0]:+.3f}, {d['bootstrap95'][1]:+.3f}]"
        lines.append(f"| {r['steps']} | {r['images_seen']} | {_f(r['recognition']['overall'], '.1%')} "
                     f"| {_f(r['recognition']['few'], '.1%')} | {_f(r['fid']['overall'], '.1f')} "
                     f"| {_f(r['fid']['few'], '.1f')} | {_f(d['gain'], '+.3f')}{interval or ''} | {boot or '-'} "
                     f"| {d['chosen']} | {d['baseline']} | {r['seconds'] / 60:.1f} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict]):
    """Gain (t-interval bars; the bootstrap where one seed gives no t-interval), recognition share and FID
    against images seen."""
    from matplotlib.figure import Figure

    x = [r["images_seen"] for r in rows]
    fig = Figure(figsize=(6.5, 9), layout="tight")
    gain, share, fid = fig.subplots(3, 1, sharex=True)
    for r in rows:
        d = r["downstream"]
        bars = d["interval95"] or d["bootstrap95"]
        if d["gain"] is not None:
            err = [[d["gain"] - bars[0]], [bars[1] - d["gain"]]] if bars else None
            gain.errorbar([r["images_seen"]], [d["gain"]], yerr=err, fmt="o", color="C0", capsize=3)
    gain.plot(x, [r["downstream"]["gain"] for r in rows], "-", color="C0", alpha=0.5)
    gain.axhline(0, color="grey", lw=0.8)
    gain.set(ylabel="balanced acc.: tuned - best classic",
             title="downstream gain (bars: 95% t-interval over seeds; one seed: test-image bootstrap)")
    for key, style in (("overall", "o-"), *((g, "s--") for g in GROUPS)):
        share.plot(x, [r["recognition"][key] for r in rows], style, label=key)
        fid.plot(x, [r["fid"][key] for r in rows], style, label=key)
    share.set(ylabel="recognised as their class", ylim=(0, 1), title="reference-classifier recognition share")
    fid.set(ylabel="FID (reference-classifier features)", xlabel="images seen (steps x batch size)", xscale="log",
            title="FID")
    share.legend(fontsize=8)
    fid.legend(fontsize=8)
    return fig


def write_results(out: Path, result: dict) -> None:
    rows = sorted(result["stages"].values(), key=lambda r: r["steps"])
    write_json(out / "scaling.json", result)
    write_text(out / "scaling.csv", csv_text(rows))
    write_text(out / "scaling.md", table(rows))
    save_figure(out / "scaling.png", figure(rows))


def run_scaling(args) -> dict:
    out = Path(args.out)
    recipe = load_recipe(args.recipe, dict(parse_assignment(s) for s in args.set or []))
    data = args.data or recipe.dataset
    run = out / "run"
    path = out / "scaling.json"
    settings = {"data": data, "recipe": args.recipe, "set": args.set or [], "per_class": args.per_class}
    result = json.loads(path.read_text()) if path.is_file() else {**settings, "stages": {}}
    if {k: result.get(k) for k in settings} != settings:
        raise CapaugError(f"{out} holds a curve measured with other settings ({path}); use another --out")
    for steps in args.stages:
        if str(steps) in result["stages"]:
            continue  # measured by an earlier command
        start = time.time()
        train_seconds = train_to(data, run, recipe, steps)
        stage = out / f"stage-{steps}"
        snapshot(run, stage, steps)
        reference = run / "eval" / REFERENCE
        reference_for_run(run, load_split(run), recipe.downstream)  # trained once, on the real training split
        row = measure_stage(stage, recipe, reference, args.per_class, out / "classifier-cache")
        result["stages"][str(steps)] = {"steps": steps, "images_seen": steps * recipe.train.batch_size,
                                        "train_seconds": train_seconds, "seconds": time.time() - start, **row}
        write_results(out, result)
        print(table([result["stages"][str(steps)]]), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", default=DEFAULT_STAGES, help=f"comma list of step counts (default {DEFAULT_STAGES})")
    parser.add_argument("--per-class", type=int, default=100,
                        help="fresh samples per class for the recognition share and FID (default 100)")
    parser.add_argument("--out", required=True)
    add_data_options(parser)
    args = parser.parse_args()
    apply_preset(args, parser)
    try:
        args.stages = parse_stages(args.stages)
    except ValueError as e:
        parser.error(str(e))
    if args.per_class < 1:
        parser.error("--per-class must be at least 1")
    try:
        result = run_scaling(args)
    except CapaugError as e:
        raise SystemExit(f"error: {e}")
    rows = sorted(result["stages"].values(), key=lambda r: r["steps"])
    print(table(rows))


if __name__ == "__main__":
    main()
