"""`capaug downstream`: train every arm with every seed, test each model once, summarise, report.

Arms (DESIGN.md, Downstream evaluation), all on the same model, pipeline, epochs and seeds:
  real        the real training split, cross-entropy
  reweight    the same images, class-balanced or logit-adjusted loss (`cfg.reweight`)
  oversample  the same images, class-balanced sampler
  synthetic   the real training split + `RUN/synthetic`, cross-entropy
  NAME        (one per `compare` entry) the real training split + another synthetic set, cross-entropy
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
from torch.utils.data import ConcatDataset

from capaug.augment.config import DataConfig, DownstreamConfig
from capaug.augment.errors import CapaugError
from capaug.augment.split import load_split

from .data import FolderReader, SyntheticSet, cached, leakage_guard, load_synthetic_set
from .engine import predict
from .experiment import Experiment
from .losses import make_loss
from .metrics import SCALARS, model_metrics, paired_differences, summarize_arm
from .report import write_outputs
from .sampling import class_balanced_sampler

FORMAT = "capaug-downstream/1"
ARMS = ("real", "reweight", "oversample", "synthetic")
CLASSIC = ("reweight", "oversample")
METRIC = "balanced_accuracy"


@dataclass
class Arm:
    """What an arm changes relative to `real`."""

    name: str
    loss: str = "cross-entropy"
    balanced_sampler: bool = False
    synthetic: Optional[SyntheticSet] = None

    def describe(self, real_images: int) -> dict:
        extra = len(self.synthetic.items) if self.synthetic else 0
        return {"loss": self.loss, "sampler": "class-balanced" if self.balanced_sampler else "shuffle",
                "synthetic_set": self.synthetic.name if self.synthetic else None,
                "train_images": real_images + extra, "synthetic_images": extra}


def plan_arms(names: list[str], compare: dict[str, Path], run_dir: Path, split, cfg: DownstreamConfig) -> list[Arm]:
    """The arms to run, in order, with their synthetic sets loaded and checked against the split."""
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise CapaugError(f"unknown arm(s) {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    clashes = [n for n in compare if n in ARMS]
    if clashes:
        raise CapaugError(f"--compare name {clashes[0]!r} is an arm name; choose another (e.g. ddpm)")
    arms = []
    for name in dict.fromkeys(names):
        if name == "reweight":
            arms.append(Arm(name, loss=cfg.reweight))
        elif name == "oversample":
            arms.append(Arm(name, balanced_sampler=True))
        elif name == "synthetic":
            arms.append(Arm(name, synthetic=load_synthetic_set(name, run_dir / "synthetic", split.classes, split.hash)))
        else:
            arms.append(Arm(name))
    for name, folder in compare.items():
        arms.append(Arm(name, synthetic=load_synthetic_set(name, folder, split.classes, split.hash)))
    if not arms:
        raise CapaugError("no arms to run; pass --arms or --compare")
    return arms


def run_downstream(
    run_dir: str | Path,
    cfg: DownstreamConfig,
    compare: Optional[dict[str, Path]] = None,
    arms: Optional[list[str]] = None,
    *,
    data_cfg: Optional[DataConfig] = None,
    on_model: Optional[Callable[[str, int, dict], None]] = None,
) -> dict:
    """Run the arms x seeds on `RUN/split.json`, write `RUN/downstream/` and return the `metrics.json` content.

    `arms` defaults to `cfg.arms`; each `compare` entry (name -> synthetic folder or run folder) adds an arm.
    `data_cfg` gives the Many/Medium/Few thresholds; `on_model(arm, seed, metrics)` reports progress.
    """
    run_dir = Path(run_dir)
    split = load_split(run_dir)
    stats = split.stats(data_cfg or DataConfig())
    plan = plan_arms(list(arms if arms is not None else cfg.arms), dict(compare or {}), run_dir, split, cfg)
    experiment = Experiment.prepare(split, cfg)
    readers = {arm.name: cached(FolderReader(arm.synthetic.folder, split.mode),
                                [key for key, _ in arm.synthetic.items], cfg.cache_mb)
               for arm in plan if arm.synthetic}
    leakage_guard(experiment.reader, [k for k, _ in split.train], [k for k, _ in split.test],
                  [(arm.synthetic, readers[arm.name]) for arm in plan if arm.synthetic])

    test_set = experiment.dataset(split.test, train=False)
    train_counts = split.counts("train")
    runs = []
    for arm in plan:
        for seed in range(cfg.seeds):
            train_set = experiment.dataset(split.train, train=True, seed=seed)
            if arm.synthetic:
                train_set = ConcatDataset([train_set, experiment.dataset(arm.synthetic.items, train=True, seed=seed,
                                                                         reader=readers[arm.name])])
            sampler = (class_balanced_sampler([y for _, y in split.train], torch.Generator().manual_seed(seed))
                       if arm.balanced_sampler else None)
            trained = experiment.fit(train_set, make_loss(arm.loss, train_counts), seed, sampler)
            probs, labels = predict(trained.model, test_set, cfg, experiment.accelerator)
            run = {"arm": arm.name, "seed": seed, **model_metrics(labels, probs, stats.groups),
                   "best_epoch": trained.best_epoch, "val_balanced_accuracy": trained.val_balanced_accuracy,
                   "seconds": trained.seconds}
            runs.append(run)
            if on_model:
                on_model(arm.name, seed, run)

    result = assemble(run_dir, split, stats, cfg, experiment, plan, runs)
    write_outputs(run_dir / "downstream", result, split, experiment.reader,
                  {arm.synthetic.name: (arm.synthetic, readers[arm.name]) for arm in plan if arm.synthetic})
    return result


def assemble(run_dir: Path, split, stats, cfg: DownstreamConfig, experiment: Experiment, plan: list[Arm],
             runs: list[dict]) -> dict:
    """The `metrics.json` content (schema: classifier/README_metrics.md)."""
    by_arm = {arm.name: [run for run in runs if run["arm"] == arm.name] for arm in plan}
    summaries = {name: summarize_arm(arm_runs) for name, arm_runs in by_arm.items()}
    classic = [name for name in CLASSIC if name in summaries]
    best_classic = max(classic, key=lambda n: summaries[n][METRIC]["mean"]) if classic else None
    arms = {}
    for arm in plan:
        arms[arm.name] = {
            **arm.describe(len(split.train)),
            "summary": summaries[arm.name],
            "vs_real": paired_differences(by_arm[arm.name], by_arm["real"])
            if "real" in by_arm and arm.name != "real" else None,
            "vs_best_classic": paired_differences(by_arm[arm.name], by_arm[best_classic])
            if best_classic and arm.name != best_classic else None,
        }
    return {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "split_hash": split.hash,
        "classes": list(split.classes),
        "groups": list(stats.groups),
        "grouping": stats.grouping,
        "counts": {part: split.counts(part) for part in ("train", "val", "test")},
        "synthetic_sets": {arm.synthetic.name: {"folder": str(arm.synthetic.folder),
                                                "counts": arm.synthetic.counts(len(split.classes))}
                           for arm in plan if arm.synthetic},
        "settings": {**cfg.model_dump(), "arms": [arm.name for arm in plan], "image_size": experiment.image_size,
                     "channels": experiment.channels, "device": str(experiment.accelerator.device),
                     "mixed_precision": experiment.accelerator.mixed_precision},
        "metrics": list(SCALARS),
        "best_classic": best_classic,
        "arms": arms,
        "verdict": verdict(by_arm, summaries),
        "runs": runs,
    }


def verdict(by_arm: dict[str, list[dict]], summaries: dict[str, dict]) -> dict:
    """Which arm won on mean balanced accuracy, by how much over the runner-up (paired by seed), how reliably."""
    ranking = sorted(summaries, key=lambda n: summaries[n][METRIC]["mean"], reverse=True)
    winner = ranking[0]
    score = summaries[winner][METRIC]
    seeds = score["n"]
    if len(ranking) == 1:
        return {"metric": METRIC, "winner": winner, "runner_up": None, "margin": None, "ranking": ranking,
                "text": f"only {winner} was run: balanced accuracy {score['mean']:.3f} ± {score['std']:.3f} "
                        f"over {seeds} seed(s)"}
    runner_up = ranking[1]
    margin = paired_differences(by_arm[winner], by_arm[runner_up])[METRIC]
    noise = " — within the seed spread, not a clear win" if margin["mean"] <= margin["std"] else ""
    text = (f"{winner} won on balanced accuracy: {score['mean']:.3f} ± {score['std']:.3f}, "
            f"{margin['mean']:+.3f} ± {margin['std']:.3f} over {runner_up} "
            f"(ahead on {margin['wins']}/{margin['n']} seeds){noise}")
    return {"metric": METRIC, "winner": winner, "runner_up": runner_up,
            "margin": {k: margin[k] for k in ("mean", "std", "wins", "losses", "n")}, "ranking": ranking,
            "text": text}
