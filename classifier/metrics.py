"""Test metrics of one trained model, their summary over seeds, and the paired per-seed differences.

All per-model numbers come from scikit-learn. Group recall is the mean per-class recall of the classes in the
Many/Medium/Few group (the long-tail convention), so a group's score does not depend on its test counts.
A class with no test image has no recall: it is reported as missing (`None`), never as 0, and balanced
accuracy, macro-F1 and the group means are taken over the classes that have test images.
Seeds are paired across arms (seed s starts every arm from the same initialisation and data order), so the
difference of two arms is taken seed by seed before it is summarised.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    recall_score,
    roc_auc_score,
)

from .stats import t_interval

SCALARS = ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc", "recall_many", "recall_medium", "recall_few")
GROUPS = ("many", "medium", "few")


def balanced_accuracy(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> float:
    """Mean recall over the classes present in `labels` (scikit-learn's definition, without its warning)."""
    hits = np.bincount(labels[labels == predicted], minlength=num_classes)
    totals = np.bincount(labels, minlength=num_classes)
    present = totals > 0
    return float(np.mean(hits[present] / totals[present]))


def model_metrics(labels: np.ndarray, probs: np.ndarray, groups: Sequence[str]) -> dict:
    """Scalars of `SCALARS`, `per_class_recall` (K; None = no test image) and `confusion` (K x K, rows = true)."""
    num_classes = probs.shape[1]
    every = list(range(num_classes))
    present = sorted(set(np.asarray(labels).tolist()))
    predicted = probs.argmax(axis=1)
    recall = recall_score(labels, predicted, labels=every, average=None, zero_division=0)
    per_class = [float(recall[k]) if k in present else None for k in every]
    metrics = {
        "accuracy": float(accuracy_score(labels, predicted)),
        "balanced_accuracy": balanced_accuracy(np.asarray(labels), predicted, num_classes),
        "macro_f1": float(f1_score(labels, predicted, labels=present, average="macro", zero_division=0)),
        "macro_auroc": macro_auroc(labels, probs),
    }
    for group in GROUPS:
        members = [per_class[k] for k in every if groups[k] == group and per_class[k] is not None]
        metrics[f"recall_{group}"] = float(np.mean(members)) if members else None
    metrics["per_class_recall"] = per_class
    metrics["confusion"] = confusion_matrix(labels, predicted, labels=every).tolist()
    return metrics


def macro_auroc(labels: np.ndarray, probs: np.ndarray) -> Optional[float]:
    """One-vs-rest AUROC averaged over classes; None when a class has no test image (undefined)."""
    if len(np.unique(labels)) < probs.shape[1]:
        return None
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=list(range(probs.shape[1]))))


def spread(values: Sequence[Optional[float]]) -> dict:
    """mean, std (n - 1; 0 for one seed), min, max and n of the defined values (None where none are)."""
    defined = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if defined.size == 0:
        return {"mean": None, "std": None, "min": None, "max": None, "n": 0}
    std = float(defined.std(ddof=1)) if defined.size > 1 else 0.0
    return {"mean": float(defined.mean()), "std": std, "min": float(defined.min()), "max": float(defined.max()),
            "n": int(defined.size)}


def summarize_arm(runs: list[dict]) -> dict:
    """Summary of one arm over its seeds: `spread` of each scalar, per-class recall and the mean confusion."""
    summary = {name: spread([run[name] for run in runs]) for name in SCALARS}
    per_class = [spread(values) for values in zip(*(run["per_class_recall"] for run in runs))]
    summary["per_class_recall"] = {"mean": [s["mean"] for s in per_class], "std": [s["std"] for s in per_class]}
    summary["confusion_mean"] = np.mean([run["confusion"] for run in runs], axis=0).tolist()
    return summary


def paired_differences(runs: list[dict], baseline: list[dict]) -> dict:
    """Per scalar: the per-seed differences (arm - baseline, paired by seed), their `spread`, wins and 95%
    t-interval over seeds (`interval95`, None below two seeds)."""
    by_seed = {run["seed"]: run for run in baseline}
    pairs = [(run, by_seed[run["seed"]]) for run in runs if run["seed"] in by_seed]
    result = {}
    for name in SCALARS:
        diffs = [None if a[name] is None or b[name] is None else a[name] - b[name] for a, b in pairs]
        result[name] = {**spread(diffs), "per_seed": diffs,
                        "interval95": t_interval(diffs),
                        "wins": sum(d > 0 for d in diffs if d is not None),
                        "losses": sum(d < 0 for d in diffs if d is not None)}
    return result
