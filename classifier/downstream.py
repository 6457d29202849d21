"""`capaug downstream`: train every arm with every seed, test each model once, summarise, report.

Arms are written in the syntax of `arms.py` (`real`, `reweight`, `oversample`, `synthetic`, a `--compare` name,
and synthetic settings such as `synthetic+la+filter[w=0.5]`). All share the model, pipeline, optimizer-step
budget, batch size and seeds (`arm_plan.py`). With `tune`, the synthetic settings of `cfg.tune_grid` (crossed
with `cfg.tune_sets`, synthetic sets made from the run's model) are scored on the val split only over the first
`cfg.tune_seeds` seeds; the best becomes the arm `tuned`, trains every seed, and only its models read the test
split (tuning.py). Each finished model's result is cached (model_cache.py), so a rerun trains only what it lacks.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from capaug.augment.config import DataConfig, DownstreamConfig, SynthesisConfig
from capaug.augment.errors import CapaugError
from capaug.augment.runlock import locks_run
from capaug.augment.split import load_split

from .arm_plan import PreparedArm
from .arms import BUILTIN, CLASSIC, FEATURES, ArmSpec, parse_arms
from .data import FolderReader, ResizedReader, cached, leakage_guard, load_synthetic_set
from .engine import predict
from .experiment import Experiment, input_size, seed_count
from .filtering import apply_band, score_synthetic
from .metrics import SCALARS, model_metrics, paired_differences, summarize_arm
from .model_cache import FOLDER, Entry, ModelCache, model_key, run_context
from .report import write_outputs
from .stats import bootstrap_interval
from .tuning import (NamedArm, TuneSet, best, grid_members, make_sets, parse_tune_sets, planned_count,
                     tune_seed_count, tuning_record)

FORMAT = "capaug-downstream/2"
METRIC = "balanced_accuracy"
TUNED = "tuned"
SYNTHETIC_RESIZE = "PIL bilinear (antialiased) to the real images' size, once at load"


def plan_specs(cfg: DownstreamConfig, arms, compare: dict, tune: bool
               ) -> tuple[list[ArmSpec], dict[str, ArmSpec], list[TuneSet]]:
    """(the arms to report, the tuning grid by name, the synthesis settings tuned over): parsed, checked; a
    `compare` name that no listed arm uses (`ddpm+la` uses `ddpm`) is added as a plain arm."""
    bases = ("synthetic", *compare)
    sets = parse_tune_sets(cfg.tune_sets) if tune else []
    clashes = [n for n in compare if n in (*BUILTIN, TUNED, *(s.name for s in sets))]
    if clashes:
        raise CapaugError(f"--compare name {clashes[0]!r} is an arm name; choose another (e.g. ddpm)")
    odd = [n for n in compare if any(c in n for c in "+[],") or not n.strip()]
    if odd:
        raise CapaugError(f"--compare name {odd[0]!r} may not contain + [ ] or a comma (the arm syntax uses them)")
    specs = parse_arms(list(arms if arms is not None else cfg.arms), bases)
    listed = {spec.base for spec in specs}
    specs += parse_arms([n for n in compare if n not in listed], bases)
    grid = parse_arms(list(cfg.tune_grid), bases) if tune else []
    if any(not (spec.synthetic or spec.features) for spec in grid):
        raise CapaugError(f"the tuning grid holds synthetic arms only (e.g. synthetic+la[w=0.5], {FEATURES})")
    if tune and not grid:
        raise CapaugError("--tune needs a non-empty downstream.tune_grid")
    if sets and not any(spec.base == "synthetic" for spec in grid):
        raise CapaugError("downstream.tune_sets needs tune_grid settings on synthetic (e.g. synthetic+la)")
    if not specs and not grid:
        raise CapaugError("no arms to run; pass --arms, --compare or --tune")
    return specs, grid_members(grid, sets), sets


def planned_models(cfg: DownstreamConfig, arms=None, compare=None, tune: Optional[bool] = None, *,
                   run_dir: Optional[str | Path] = None) -> int:
    """The classifiers a run trains (tuning.planned_count: exact unless the choice falls on a listed arm).
    The seeds are `cfg.seeds`, else resolved from `run_dir`'s split as `run_downstream` does."""
    specs, grid, _ = plan_specs(cfg, arms, dict(compare or {}), cfg.tune if tune is None else tune)
    if cfg.seeds:
        seeds = cfg.seeds
    elif run_dir is not None:
        seeds = seed_count(cfg, input_size(load_split(Path(run_dir)), cfg)[1])
    else:
        raise ValueError("planned_models needs cfg.seeds or run_dir")
    reported = list(dict.fromkeys(spec.name for spec in specs))
    return planned_count(reported, list(grid), seeds, tune_seed_count(cfg, seeds) if grid else seeds)


def prepare_arms(arms: dict[str, ArmSpec], folders: dict[str, Path], run_dir: Path, split,
                 experiment: Experiment) -> tuple[dict[str, PreparedArm], dict]:
    """Each arm (name -> spec) with its synthetic set (`folders[spec.base]`) loaded (resized and cached once),
    guarded against leakage, filtered."""
    cfg = experiment.cfg
    specs = list(arms.values())
    sets = {}
    for base in dict.fromkeys(spec.base for spec in specs if spec.synthetic):
        synthetic = load_synthetic_set(base, folders[base], split.classes, split.hash)
        reader = cached(ResizedReader(FolderReader(synthetic.folder, split.mode), experiment.real_size),
                        [key for key, _ in synthetic.items], cfg.cache_mb)
        sets[base] = (synthetic, reader)
    leakage_guard(experiment.reader, [k for k, _ in split.train], [k for k, _ in split.test], list(sets.values()))
    scores = {}
    if any("filter" in spec.flags for spec in specs):
        from .reference import reference_for_run

        bundle = reference_for_run(run_dir, split, cfg, device=experiment.accelerator.device)
        real = ResizedReader(experiment.reader, experiment.real_size)
        scores = {base: score_synthetic(sets[base][0], sets[base][1], bundle, real, split.train)
                  for base in dict.fromkeys(spec.base for spec in specs if "filter" in spec.flags)}
    prepared = {}
    for name, spec in arms.items():
        if not spec.synthetic:
            prepared[name] = PreparedArm(spec)
            continue
        synthetic, reader = sets[spec.base]
        record = None
        if "filter" in spec.flags:
            synthetic, record = apply_band(synthetic, scores[spec.base], spec.low, spec.high, spec.copy,
                                           len(split.classes))
        prepared[name] = (PreparedArm(spec, synthetic, reader, record) if name == spec.name
                          else NamedArm(spec, synthetic, reader, record, label=name))
    return prepared, sets


@locks_run("downstream")
def run_downstream(
    run_dir: str | Path,
    cfg: DownstreamConfig,
    compare: Optional[dict[str, Path]] = None,
    arms: Optional[list[str]] = None,
    *,
    data_cfg: Optional[DataConfig] = None,
    on_model: Optional[Callable[[str, int, dict], None]] = None,
    tune: Optional[bool] = None,
    synth_cfg: Optional[SynthesisConfig] = None,
    on_synthesis: Optional[Callable[[str, int, int], None]] = None,
    model_cache: Optional[str | Path] = None,
    reuse_models: bool = True,
) -> dict:
    """Run the arms x seeds on `RUN/split.json`, write `RUN/downstream/` and return the `metrics.json` content.

    `arms` (specs, arms.py) defaults to `cfg.arms`; each `compare` entry (name -> synthetic folder or run
    folder) adds an arm; `tune` (default `cfg.tune`) adds the arm `tuned`, chosen from `cfg.tune_grid` (x
    `cfg.tune_sets`, made with `synth_cfg`, the recipe's synthesis settings) on val. `data_cfg` gives the
    Many/Medium/Few thresholds; `on_model(arm, seed, info)` reports progress after each model (`info`: its val
    score, test metrics when it was tested, `done`, `total`, and `cached` when its result came from the cache);
    `on_synthesis(name, done, total)` while a tune set is made. Finished models' results are kept in
    `model_cache` (default `RUN/downstream-models/`; several runs may share one) and reused unless `reuse_models`
    is False (then every model trains again and its result is stored anew).
    """
    run_dir = Path(run_dir)
    compare = dict(compare or {})
    specs, grid, tune_sets = plan_specs(cfg, arms, compare, cfg.tune if tune is None else tune)
    if tune_sets and synth_cfg is None:
        raise ValueError("tune_sets need synth_cfg, the synthesis settings to make them with")
    split = load_split(run_dir)
    cache = ModelCache(Path(model_cache) if model_cache is not None else run_dir / FOLDER, split.source.get("path"),
                       reuse_models)
    stats = split.stats(data_cfg or DataConfig())
    judge = None
    if tune_sets:  # label fidelity of each tune set: the risk of majority-to-minority translation
        from .reference import reference_for_run

        judge = reference_for_run(run_dir, split, cfg)
    folders = {"synthetic": run_dir / "synthetic", **compare,
               **make_sets(run_dir, tune_sets, synth_cfg, split, on_synthesis, label_classifier=judge)}
    experiment = Experiment.prepare(split, cfg)
    prepared, sets = prepare_arms({**{s.name: s for s in specs}, **grid}, folders, run_dir, split, experiment)
    test_set = experiment.dataset(split.test, train=False)
    seeds = experiment.seeds
    tune_seeds = tune_seed_count(cfg, seeds) if grid else seeds
    reported = [spec.name for spec in specs]
    total = planned_count(reported, list(grid), seeds, tune_seeds)
    runs: dict[str, list[dict]] = {name: [] for name in reported}
    correct: dict[tuple[str, int], np.ndarray] = {}
    context = run_context(run_dir, cfg, experiment, stats.groups)

    def add(name: str, seed: int, record: dict, entry: Entry) -> dict:
        """Record a tested model's run as arm `name`."""
        correct[name, seed] = entry.correct
        run = {**record, "arm": name, **entry.metrics}
        runs.setdefault(name, []).append(run)
        return run

    def train(arm: PreparedArm, seed: int, test_as: Optional[str]) -> tuple[dict, Optional[tuple], bool]:
        """`arm`'s model of `seed`, tested as arm `test_as` unless None: (its run, or its record when untested;
        (model, record, key) of an untested model trained here, else None; whether the result was cached)."""
        key = model_key(context, arm, experiment, seed)
        entry = cache.load(key, len(test_set))
        if entry and (test_as is None or entry.tested):
            record = {**entry.record, "arm": arm.name}
            return (record if test_as is None else add(test_as, seed, record, entry)), None, True
        trained = experiment.fit_phases(arm.phases(experiment, seed), seed)
        record = {"arm": arm.name, "seed": seed, "optimizer_steps": trained.optimizer_steps,
                  "best_step": trained.best_step, "best_epoch": trained.best_epoch,
                  "val_balanced_accuracy": trained.val_balanced_accuracy, "seconds": trained.seconds,
                  **trained.record}
        if test_as is None:
            cache.store(key, Entry(record))
            return record, (trained, record, key), False
        return test(test_as, seed, trained, record, key), None, False

    def test(name: str, seed: int, trained, record: dict, key: str) -> dict:
        probs, labels = predict(trained.model, test_set, cfg, experiment.accelerator)
        entry = Entry(record, model_metrics(labels, probs, stats.groups), probs.argmax(1) == labels)
        cache.store(key, entry)
        return add(name, seed, record, entry)

    done = 0

    def report(name: str, seed: int, run: dict, cached: bool) -> None:
        nonlocal done
        done += 1
        if on_model:
            on_model(name, seed, {**run, **({"cached": True} if cached else {}), "done": done, "total": total})

    tuning, kept = None, {}
    if grid:  # val only, first tune_seeds seeds: a grid member reads the test split only as a listed arm
        scores, models = {}, {}
        for name in grid:
            models[name] = {}
            for seed in range(tune_seeds):
                run, untested, cached = train(prepared[name], seed, name if name in reported else None)
                if untested:
                    models[name][seed] = untested
                scores.setdefault(name, []).append(run["val_balanced_accuracy"])
                report(name, seed, run, cached)
            leader = best(scores)
            models = {leader: models[leader]}  # only the leader's untested models stay in memory
        chosen = best(scores)
        kept = models.get(chosen, {})
        if chosen in reported and any(name not in reported for name in grid):
            total -= seeds - tune_seeds  # `tuned` shares the listed arm's models (planned_count's exception)
        tuning = tuning_record(scores, chosen, grid, tune_seeds, seeds, tune_sets, folders)
    for name in reported:  # a listed grid member keeps its tuning-seed models
        for seed in range(len(runs[name]), seeds):
            run, _, cached = train(prepared[name], seed, name)
            report(name, seed, run, cached)
    if tuning:
        chosen = tuning["chosen"]
        for seed in range(seeds):
            if chosen in reported:  # its models were tested already
                runs.setdefault(TUNED, []).append({**runs[chosen][seed], "arm": TUNED})
                correct[TUNED, seed] = correct[chosen, seed]
            elif seed in kept:
                test(TUNED, seed, *kept[seed])
            else:  # a cached grid model without a test result trains again; the grid reported it already
                run, _, cached = train(prepared[chosen], seed, TUNED)
                if seed >= tune_seeds:
                    report(TUNED, seed, run, cached)

    plan = {name: prepared[name] for name in reported}
    if tuning:
        plan[TUNED] = prepared[tuning["chosen"]]
    result = assemble(run_dir, split, stats, cfg, experiment, plan, runs, correct, tuning, sets)
    write_outputs(run_dir / "downstream", result, split, experiment.reader, sets)
    return result


def assemble(run_dir: Path, split, stats, cfg: DownstreamConfig, experiment: Experiment,
             plan: dict[str, PreparedArm], runs: dict[str, list[dict]], correct: dict, tuning: Optional[dict],
             sets: dict) -> dict:
    """The `metrics.json` content (schema: classifier/README_metrics.md)."""
    summaries = {name: summarize_arm(runs[name]) for name in plan}
    classic = [name for name in CLASSIC if name in summaries]
    # the strongest classic baseline, by mean test score (hindsight favours the baseline: a conservative test)
    best_classic = max(classic, key=lambda n: summaries[n][METRIC]["mean"]) if classic else None
    labels = np.asarray([y for _, y in split.test])

    def versus(name: str, baseline: Optional[str]) -> Optional[dict]:
        if baseline is None or name == baseline:
            return None
        diff = paired_differences(runs[name], runs[baseline])
        seeds = sorted({r["seed"] for r in runs[name]} & {r["seed"] for r in runs[baseline]})
        diff[METRIC]["bootstrap95"] = bootstrap_interval(
            np.stack([correct[name, s] for s in seeds]), np.stack([correct[baseline, s] for s in seeds]), labels,
            cfg.bootstrap)
        return diff

    arms = {}
    for name, arm in plan.items():
        arms[name] = {**arm.describe(experiment), "summary": summaries[name],
                      "vs_real": versus(name, "real" if "real" in plan else None),
                      "vs_best_classic": versus(name, best_classic)}
    counts = {part: split.counts(part) for part in ("train", "val", "test")}
    missing = {part: [c for c, n in zip(split.classes, counts[part]) if n == 0] for part in ("val", "test")}
    flat = [run for name in plan for run in runs[name]]
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "split_hash": split.hash,
        "classes": list(split.classes),
        "groups": list(stats.groups),
        "grouping": stats.grouping,
        "counts": counts,
        "missing_classes": {**missing, "note": (
            "a class without test images has no recall (null, 'n/a'); balanced accuracy, macro-F1 and the "
            "group means are taken over the classes with test images") if missing["test"] or missing["val"] else None},
        "synthetic_sets": {name: {"folder": str(synthetic.folder), "counts": synthetic.counts(len(split.classes))}
                           for name, (synthetic, _) in sets.items()},
        "settings": {**cfg.model_dump(), "arms": list(plan), "seeds": experiment.seeds,
                     "image_size": experiment.image_size, "channels": experiment.channels,
                     "real_size": list(experiment.real_size), "synthetic_resize": SYNTHETIC_RESIZE,
                     "budget": {"epochs": cfg.epochs, "steps_per_epoch": experiment.steps_per_epoch,
                                "optimizer_steps": experiment.budget, "batch_size": cfg.batch_size,
                                "eval_every": experiment.steps_per_epoch},
                     "device": str(experiment.accelerator.device),
                     "mixed_precision": experiment.accelerator.mixed_precision},
        "metrics": list(SCALARS),
        "best_classic": best_classic,
        "tuning": tuning,
        "arms": arms,
        "verdict": verdict(arms, summaries, best_classic, tuning is not None),
        "runs": flat,
    }


def verdict(arms: dict, summaries: dict[str, dict], best_classic: Optional[str], tuned: bool) -> dict:
    """Does the synthetic candidate beat the best classic arm? "clear" only when the 95% t-interval over seeds
    of the paired balanced-accuracy difference excludes zero. The candidate is `tuned` (chosen on val) when it
    ran, else the synthetic arm with the best mean test score (then flagged: picked on test)."""
    ranking = sorted(summaries, key=lambda n: summaries[n][METRIC]["mean"], reverse=True)
    synthetic = [n for n in ranking if (arms[n]["synthetic_set"] or arms[n]["base"] == FEATURES)
                 and (n == TUNED or not tuned)]
    candidate = TUNED if tuned else (synthetic[0] if synthetic else None)
    base = {"metric": METRIC, "winner": ranking[0], "ranking": ranking, "candidate": candidate,
            "baseline": best_classic, "picked_on_test": candidate is not None and not tuned and len(synthetic) > 1}
    score = summaries[ranking[0]][METRIC]

    def label(name: str) -> str:  # `tuned` with the setting (and synthetic set) it stands for
        return f"{name} ({arms[name]['spec']})" if name == TUNED else name

    if candidate is None or best_classic is None or arms[candidate]["vs_best_classic"] is None:
        return {**base, "status": None, "interval95": None, "bootstrap95": None, "mean": None,
                "text": f"{label(ranking[0])} ranked first on balanced accuracy: {score['mean']:.3f} ± "
                        f"{score['std']:.3f} over {score['n']} seed(s) (no synthetic arm and classic arm to compare)"}
    diff = arms[candidate]["vs_best_classic"][METRIC]
    interval, boot = diff["interval95"], diff["bootstrap95"]
    status = ("no interval (one seed)" if interval is None else "clear win" if interval[0] > 0
              else "clear loss" if interval[1] < 0 else "no clear difference")
    text = (f"{label(candidate)} vs {best_classic}: balanced accuracy {diff['mean']:+.3f}"
            + (f", 95% t-interval over {diff['n']} seeds [{interval[0]:+.3f}, {interval[1]:+.3f}]" if interval else "")
            + (f", test-image bootstrap [{boot[0]:+.3f}, {boot[1]:+.3f}]" if boot else "")
            + f": {status}" + ("; picked on test among several synthetic arms, use --tune for a val choice"
                               if base["picked_on_test"] else ""))
    return {**base, "status": status, "mean": diff["mean"], "interval95": interval, "bootstrap95": boot,
            "text": text}
