"""The benchmark protocol: same data, seed and step budget for every method; one comparison table.

For each method (plain, cm, lowrank, cbdm, oc, cm+oc, cm+cbdm) and each of `--gen-seeds` generator seeds: train,
synthesize to balance (the downstream set) and a fixed number of images per class (the evaluation set, so every
class, the largest too, gets FID), evaluate in one shared in-domain feature space; then one downstream run
compares real / reweight / oversample with every generator's synthetic set on the same classifier and seeds
(`--synthetic-arm +la+filter`: each generator's arm with that setting, e.g. the one `capaug downstream --tune`
chose). Methods with low-rank terms also get `analyze capacity`'s theta_g-alone loss increase per group.
FID is reported as mean and spread over generator seeds. Rerunning continues where it stopped.

A method can carry settings after `@`: `cm@lambda_div=auto`, `cm@lambda_div=0.2@min_snr`,
`plain@synthesize.sampler=ddim` (KEY=VALUE sets train.KEY unless KEY names a section; `min_snr` is
train.loss_weighting=min_snr; `seeds=N` overrides --gen-seeds for that method). Its runs live in OUT/<label>
(generator seed 0) and OUT/<label>-seed<k>, the label being the method without its `@seeds=N`.

    python bench/protocol.py --data builtin:digits-lt --recipe quickstart --steps 300 --out runs/protocol-digits
    python bench/protocol.py ... --methods plain,cm@lambda_div=auto,lowrank,cm@lambda_div=0.2 --gen-seeds 2
See bench/README.md for the budgets used and bench/RESULTS.md for results.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import tarfile
import time
from pathlib import Path

from capaug.augment.analysis import analyze_capacity
from capaug.augment.capacity import CAPACITY_METHODS
from capaug.augment.config import Recipe
from capaug.augment.convert import make_long_tailed
from capaug.augment.errors import CapaugError
from capaug.augment.evaluate import evaluate_run
from capaug.classifier.arms import parse_arm
from capaug.classifier.reference import REFERENCE
from capaug.augment.io import write_json, write_text
from capaug.augment.pipeline import run_training
from capaug.augment.split import load_split
from capaug.augment.synthesize import synthesize
from capaug.augment.checkpoints import checkpoint_dirs
from capaug.classifier.downstream import run_downstream
from capaug.recipes import load_recipe, parse_assignment

METHODS = {"plain": ("plain", "ddpm"), "cm": ("cm", "ddpm"), "lowrank": ("lowrank", "ddpm"),
           "cbdm": ("plain", "cbdm"), "oc": ("plain", "oc"), "cm+oc": ("cm", "oc"), "cm+cbdm": ("cm", "cbdm")}
SHORTHANDS = {"min_snr": "train.loss_weighting=min_snr"}
SECTIONS = ("data", "train", "synthesize", "downstream")
GROUPS = ("many", "medium", "few")

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TAR = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
PRESETS = ("cifar10-lt-small",)
# cifar10-lt-small: the small recipe (UNet 32/64/64, attention at the middle level, batch 32, lr 1e-3, DDPM-50
# sampling) at --size px, a resnet10t classifier at the same size; the tune grid is kept small (3 settings)
SMALL_SETTINGS = ["downstream.model=resnet10t", "downstream.epochs=30", "downstream.batch_size=64",
                  "downstream.tune_grid=[synthetic, synthetic+la, synthetic+la+filter]",
                  "train.sample_every=1000", "train.checkpoint_every=250"]


def label_and_seeds(spec: str, default_seeds: int) -> tuple[str, int]:
    """`cm@lambda_div=auto@seeds=2` -> ("cm@lambda_div=auto", 2): the method's name in the table and its folders,
    and how many generator seeds it gets."""
    name, *options = spec.split("@")
    seeds = [o for o in options if o.startswith("seeds=")]
    count = int(seeds[-1].removeprefix("seeds=")) if seeds and seeds[-1].removeprefix("seeds=").isdigit() else None
    if seeds and not count:
        raise ValueError(f"{spec!r}: seeds= needs a whole number >= 1")
    return "@".join([name, *(o for o in options if not o.startswith("seeds="))]), count or default_seeds


def method_settings(spec: str) -> tuple[str, dict]:
    """`cm@lambda_div=auto@min_snr` -> ("cm", {"train.lambda_div": "auto", "train.loss_weighting": "min_snr"})."""
    name, *options = label_and_seeds(spec, 1)[0].split("@")
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} in {spec!r}; choose from {', '.join(METHODS)}")
    settings = {}
    for option in options:
        option = SHORTHANDS.get(option, option)
        if "=" not in option:
            raise ValueError(f"{spec!r}: {option!r} is neither KEY=VALUE nor one of {', '.join(SHORTHANDS)}")
        key, value = parse_assignment(option)
        settings[key if key.split(".")[0] in SECTIONS else f"train.{key}"] = value
    return name, settings


def method_recipe(base: Recipe, spec: str, steps: int, gen_seed: int = 0) -> Recipe:
    """The base recipe with the method, its `@` settings, the step budget and generator seed `gen_seed` applied."""
    name, settings = method_settings(spec)
    method, base_loss = METHODS[name]
    data = base.model_dump()
    data["train"].update(method=method, base_loss=base_loss, steps=steps, seed=base.train.seed + gen_seed)
    for key, value in settings.items():
        section, *path = key.split(".")
        target = data[section]
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value
    return Recipe.model_validate(data)


def run_name(spec: str, gen_seed: int) -> str:
    return spec if gen_seed == 0 else f"{spec}-seed{gen_seed}"


def arm_name(run: str) -> str:
    """The run's downstream arm: `+` belongs to the arm syntax (synthetic+la), so cm+oc's arm is cm&oc."""
    return run.replace("+", "&")


def stage_seconds(path: Path, seconds: float) -> float:
    """A stage's wall time over every command that worked on it: `seconds` (this command's, 0 when the stage was
    already complete) added to what `path` holds, so a resumed or rerun stage does not report only its remainder."""
    total = (json.loads(path.read_text())["seconds"] if path.is_file() else 0.0) + seconds
    if seconds:
        write_json(path, {"seconds": total})
    return total


def train_method(data: str, run: Path, recipe: Recipe) -> dict:
    """Train (or finish training) one method; return its mean training speed and wall time."""
    seconds = 0.0
    if not (run / "diffusion" / "model" / "capaug.json").is_file():
        start = time.time()
        run_training(data, run, recipe, resume=bool(checkpoint_dirs(run)))
        seconds = time.time() - start
    with open(run / "diffusion" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    speeds = [float(r["images_per_s"]) for r in rows]
    d_final = {k.removeprefix("d_"): float(v) for k, v in rows[-1].items() if k.startswith("d_") and v not in ("", "nan")}
    return {"train_images_per_s": sum(speeds) / len(speeds),
            "train_seconds": stage_seconds(run / "protocol_train_seconds.json", seconds), "d_final": d_final}


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


def evaluate_generator(data: str, run: Path, recipe: Recipe, args, reference: Path | None) -> dict:
    """Train, synthesize and score one generator; FID in the feature space of `reference` (None: its own)."""
    row = train_method(data, run, recipe)
    start = time.time()
    made = synthesize(run / "diffusion" / "model", run / "synthetic", recipe.synthesize, split=load_split(run)).made
    seconds = time.time() - start if made else 0.0  # a complete synthesis keeps its first command's time
    row["synthesis_seconds"] = stage_seconds(run / "protocol_synthesis_seconds.json", seconds)
    samples = eval_samples(run, recipe, args.eval_per_class)
    if reference is not None and reference != run / "eval" / REFERENCE:  # one feature space: the first run's
        (run / "eval").mkdir(parents=True, exist_ok=True)
        shutil.copy(reference, run / "eval" / REFERENCE)
    metrics = evaluate_run(run, synthetic_dir=samples, downstream=recipe.downstream, data_cfg=recipe.data, cas=args.cas)
    row["fid"] = {g: metrics["generative"]["per_group"].get(g, {}).get("fid") for g in GROUPS}
    row["fid"]["overall"] = metrics["generative"]["overall"]["fid"]
    row["fid_class_mean"] = metrics["generative"]["overall"]["class_mean"]["fid"]
    row["theta_g_increase"] = theta_g_dependence(run, recipe)
    return row


def theta_g_dependence(run: Path, recipe: Recipe) -> dict | None:
    """`analyze capacity`'s relative loss increase with theta_e switched off, per group and per class (None for
    a method without low-rank terms); computed once per run."""
    if recipe.train.method not in CAPACITY_METHODS:
        return None
    path = run / "analysis" / "capacity.json"
    result = json.loads(path.read_text()) if path.is_file() else analyze_capacity(run, prune_fractions=(0.0,))
    split = result["capacity_split"]
    return {**split["group_mean_relative_increase"], "per_class": dict(zip(result["classes"], split["relative_increase"]))}


def shared_reference(out: Path) -> Path | None:
    """The feature space of every FID in OUT: the reference classifier of the first generator recorded in
    OUT/generators.json (None before any), so a later command on the same OUT scores in the same space."""
    path = out / "generators.json"
    first = next(iter(json.loads(path.read_text())), None) if path.is_file() else None
    return out / first / "eval" / REFERENCE if first else None


def record_generator(path: Path, name: str, row: dict) -> None:
    """Add one generator's row to OUT/generators.json as soon as it lands, keeping the rows already there (another
    protocol command on the same OUT may be training other methods)."""
    rows = json.loads(path.read_text()) if path.is_file() else {}
    write_json(path, rows | {name: row})


def spread(values: list) -> dict:
    """Mean and sample standard deviation over generator seeds (std None with one seed)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
            "n": len(values)}


def summarize(runs: dict[str, dict]) -> dict:
    """One method's generators: each FID, speed and time as mean/std/n over the generator seeds."""
    rows = list(runs.values())
    return {
        "runs": list(runs),
        "fid": {k: spread([r["fid"][k] for r in rows]) for k in (*GROUPS, "overall")},
        "fid_class_mean": spread([r["fid_class_mean"] for r in rows]),
        **{k: statistics.fmean(r[k] for r in rows) for k in ("train_images_per_s", "train_seconds", "synthesis_seconds")},
    }


def downstream_arm(run: str, setting: str) -> str:
    """A generator's downstream arm: its run name as an arm base (arm_name) with the `--synthetic-arm` setting."""
    base = arm_name(run)
    return parse_arm(base + setting, (base,)).name if setting else base


def print_progress(arm: str, seed: int, info: dict) -> None:
    """One line per downstream classifier, so a long comparison is not silent."""
    test = f" test {info['balanced_accuracy']:.3f}" if "balanced_accuracy" in info else ""  # a tuning-grid model: val only
    cached = " (cached)" if info.get("cached") else ""  # its result came from the model cache
    print(f"downstream {info['done']}/{info['total']}: {arm} seed {seed}, balanced accuracy val "
          f"{info['val_balanced_accuracy']:.3f}{test}{cached}", flush=True)


def default_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "capaug" / "cifar10"


def cifar10_tree(tar: Path, cache: Path) -> Path:
    """`CACHE/CIFAR-10-images/{train,test}/<class>/NNNN.jpg`, extracted from `tar` once (into a temporary folder
    that is renamed when complete, so an interrupted extraction is never taken for a tree)."""
    tree = cache / "CIFAR-10-images"
    if tree.is_dir():
        return tree
    if not tar.is_file():
        raise CapaugError(f"{tar} does not exist (the CIFAR-10 JPEG archive; pass --cifar-tar)")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".extract-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(tar) as archive:
        archive.extractall(tmp, filter="data")
    if not (tmp / "CIFAR-10-images" / "train").is_dir() or not (tmp / "CIFAR-10-images" / "test").is_dir():
        shutil.rmtree(tmp)
        raise CapaugError(f"{tar} does not hold CIFAR-10-images/{{train,test}}/<class>/")
    if not tree.is_dir():  # another command may have finished first
        (tmp / "CIFAR-10-images").rename(tree)
    shutil.rmtree(tmp, ignore_errors=True)
    return tree


def long_tailed_cifar10(tar: Path, cache: Path, ratio: float = 100, head: int = 500) -> Path:
    """`CACHE/cifar10-lt-r<ratio>-n<head>`: `head` ... head/ratio training images (the first files of each class),
    the full balanced test folder; made once by `make_long_tailed` (atomic), reused afterwards."""
    out = cache / f"cifar10-lt-r{ratio:g}-n{head}"
    if not out.is_dir():
        make_long_tailed(cifar10_tree(tar, cache), ratio, out, max_per_class=head)
    return out


def add_data_options(parser: argparse.ArgumentParser) -> None:
    """--data, --recipe, --set and the options of `--preset` (shared by protocol.py, noise_floor.py and scaling.py)."""
    parser.add_argument("--data", help="data spec (default: the recipe's dataset)")
    parser.add_argument("--recipe", help="recipe name or file (default: quickstart)")
    parser.add_argument("--set", action="append", help="recipe override KEY=VALUE (repeatable)")
    parser.add_argument("--preset", choices=PRESETS,
                        help="fill in --data, --recipe and the settings of a fixed benchmark (README.md)")
    parser.add_argument("--size", type=int, choices=(16, 32), default=16, help="--preset: image size in px")
    parser.add_argument("--cache", type=Path, default=default_cache(),
                        help="--preset: where CIFAR-10 is extracted once (outside the repository)")
    parser.add_argument("--cifar-tar", type=Path, default=CIFAR10_TAR, help="--preset: the CIFAR-10 JPEG archive")


def apply_preset(args, parser: argparse.ArgumentParser) -> None:
    """With `--preset`: set args.data and args.recipe, and put the preset's settings before the user's --set
    (so a --set overrides them); without: the recipe defaults to quickstart."""
    if not args.preset:
        args.recipe = args.recipe or "quickstart"
        return
    if args.data or args.recipe:
        parser.error("--preset fills in --data and --recipe; change its settings with --set")
    cache = args.cache.expanduser().resolve()
    if cache == REPO or REPO in cache.parents:
        parser.error(f"--cache {args.cache} lies inside the repository {REPO}; choose a folder outside it")
    try:
        args.data = str(long_tailed_cifar10(args.cifar_tar.expanduser(), cache))
    except CapaugError as e:
        parser.error(str(e))
    args.recipe = "small"
    args.set = [*SMALL_SETTINGS, f"train.image_size={args.size}", f"downstream.image_size={args.size}",
                *(args.set or [])]


def run_protocol(args) -> dict:
    out = Path(args.out)
    base = load_recipe(args.recipe, dict(parse_assignment(s) for s in args.set or []))
    data = args.data or base.dataset
    runs, methods, reference = {}, {}, shared_reference(out)
    for spec in args.methods:
        label, seeds = label_and_seeds(spec, args.gen_seeds)
        mine = {}
        for gen_seed in range(seeds):
            name = run_name(label, gen_seed)
            if args.only and name not in args.only:
                continue
            mine[name] = evaluate_generator(data, out / name, method_recipe(base, spec, args.steps, gen_seed), args,
                                            reference)
            reference = reference or out / name / "eval" / REFERENCE
            record_generator(out / "generators.json", name, mine[name])
        runs |= mine
        if mine:
            methods[label] = summarize(mine)
    result = {"data": data, "recipe": args.recipe, "steps": args.steps, "gen_seeds": args.gen_seeds,
              "synthetic_arm": args.synthetic_arm, "methods": methods, "runs": runs}
    if args.no_downstream:
        write_text(out / "generators.md", table(result))
        return result

    compare = out / "downstream-compare"
    compare.mkdir(parents=True, exist_ok=True)
    shutil.copy(out / next(iter(runs)) / "split.json", compare / "split.json")
    (compare / "eval").mkdir(exist_ok=True)  # +filter scores with the same reference classifier as the FIDs
    shutil.copy(reference, compare / "eval" / REFERENCE)
    arms = ["real", "reweight", "oversample", *(downstream_arm(name, args.synthetic_arm) for name in runs)]
    downstream = run_downstream(compare, base.downstream, {arm_name(name): out / name / "synthetic" for name in runs},
                                arms, data_cfg=base.data, on_model=print_progress)
    result |= {"downstream": {arm: v["summary"] for arm, v in downstream["arms"].items()},
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


def _spread(s: dict) -> str:
    if s["mean"] is None:
        return "-"
    return _num(s["mean"]) + ("" if s["std"] is None else f" ± {s['std']:.1f}")


def _dependence(names: list[str], runs: dict) -> str:
    """theta_g-alone loss increase per group, mean over the method's generators ("-" without low-rank terms)."""
    rows = [runs[n].get("theta_g_increase") for n in names]
    if not all(rows):
        return "-"
    return " / ".join(f"{statistics.fmean(r[g] for r in rows):+.2%}" if all(r.get(g) is not None for r in rows) else "-"
                      for g in GROUPS)


def table(result: dict) -> str:
    """Generators (FID mean ± std over generator seeds), then every downstream arm (one per generator)."""
    gen = ("| method | generator seeds | FID many | FID medium | FID few | FID overall | FID class-mean "
           "| theta_g alone: loss increase many / medium / few | train img/s | wall time (min) |\n"
           "|---|---|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, m in result["methods"].items():
        wall = (m["train_seconds"] + m["synthesis_seconds"]) / 60
        lines.append(f"| {name} | {m['fid']['overall']['n']} | "
                     + " | ".join(_spread(m["fid"][k]) for k in (*GROUPS, "overall"))
                     + f" | {_spread(m['fid_class_mean'])} | {_dependence(m['runs'], result['runs'])} "
                     + f"| {_num(m['train_images_per_s'])} | {_num(wall)} |")
    head = (f"data {result['data']}, recipe {result['recipe']}, {result['steps']} steps per generator, "
            f"{result['gen_seeds']} generator seed(s) per method (FID: mean ± std over them)\n\n" + gen + "\n".join(lines))
    if "downstream" not in result:
        return head + "\n"
    down = "| arm | balanced acc. | Few recall | d at the end (per class) |\n|---|---|---|---|\n"
    arms = []
    run_of_arm = {downstream_arm(run, result.get("synthetic_arm", "")): row for run, row in result["runs"].items()}
    for arm, summary in result["downstream"].items():
        d = run_of_arm.get(arm, {}).get("d_final", {})
        classes = ", ".join(f"{k} {v:.1e}" for k, v in d.items() if k not in GROUPS) or "-"
        arms.append(f"| {arm} | {_pm(summary, 'balanced_accuracy')} | {_pm(summary, 'recall_few')} | {classes} |")
    return head + "\n\n" + down + "\n".join(arms) + f"\n\nverdict: {result['verdict']}\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, required=True, help="training steps per method (the budget)")
    parser.add_argument("--methods", default="plain,cm", type=lambda s: s.split(","),
                        help=f"comma list of {', '.join(METHODS)}, each optionally with @KEY=VALUE or @min_snr")
    parser.add_argument("--gen-seeds", type=int, default=1, help="generator seeds per method (train.seed + k)")
    parser.add_argument("--eval-per-class", type=int, default=100, help="images per class for FID")
    parser.add_argument("--cas", action="store_true", help="also the classification accuracy score")
    parser.add_argument("--synthetic-arm", default="", metavar="SETTING",
                        help="setting of every generator's downstream arm, e.g. +la+filter (default: plain)")
    parser.add_argument("--no-downstream", action="store_true",
                        help="train and score the generators only (their table in OUT/generators.md)")
    parser.add_argument("--only", type=lambda s: s.split(","), metavar="RUN,...",
                        help="with --no-downstream: train and score only these runs (e.g. cm-seed1), so two "
                             "commands on one OUT can share the generators")
    parser.add_argument("--out", required=True)
    add_data_options(parser)
    args = parser.parse_args()
    apply_preset(args, parser)
    if args.gen_seeds < 1:
        parser.error("--gen-seeds must be at least 1")
    if args.only and not args.no_downstream:
        parser.error("--only needs --no-downstream (the downstream compares every generator)")
    base = load_recipe(args.recipe, dict(parse_assignment(s) for s in args.set or []))
    for spec in args.methods:
        try:
            label_and_seeds(spec, args.gen_seeds)
            method_recipe(base, spec, args.steps)
        except ValueError as e:  # an unknown method, a malformed or invalid @ setting (pydantic's too)
            parser.error(f"method {spec}: {e}")
    try:
        downstream_arm("gen", args.synthetic_arm)
    except CapaugError as e:
        parser.error(f"--synthetic-arm: {e}")
    print(table(run_protocol(args)))


if __name__ == "__main__":
    main()
