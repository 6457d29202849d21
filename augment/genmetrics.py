"""Generative metrics on feature arrays, per class, per Many/Medium/Few group and overall.

Everything here takes features that were already extracted (`augment/features.py`), so the metrics are
testable on constructed point sets and one extraction serves every metric. FID and KID come from torchmetrics,
fed through an identity "extractor"; precision/recall is Kynkaanniemi et al. 2019 (k-NN manifolds).
Groups pool the images of their classes (a group's FID compares all its real images with all its synthetic
ones) and report the mean over their classes alongside; rates (memorization, CAS) likewise give pooled counts
and the mean of the class rates.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import torch

CHUNK = 1024
CLASS_MEAN = ("fid", "kid_mean", "precision", "recall")


class _Features(torch.nn.Identity):
    """The 'feature extractor' torchmetrics calls: the inputs already are features."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features


def _tensor(features: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(features, dtype=np.float64))


def fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (torchmetrics' FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Features(real.shape[1]))
    metric.update(_tensor(real), real=True)
    metric.update(_tensor(fake), real=False)
    return max(0.0, float(metric.compute()))


def kid(real: np.ndarray, fake: np.ndarray, subsets: int = 100, subset_size: int = 1000, seed: int = 0):
    """(mean, std) of the polynomial-kernel MMD over random subsets (torchmetrics' KID), seeded.

    The subset size shrinks to the smaller set, so small classes still get a (noisier) value.
    """
    from torchmetrics.image.kid import KernelInceptionDistance

    size = min(subset_size, len(real), len(fake))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*will save all extracted features")
        metric = KernelInceptionDistance(feature=_Features(real.shape[1]), subsets=subsets, subset_size=size)
    metric.update(_tensor(real), real=True)
    metric.update(_tensor(fake), real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def knn_radii(features: torch.Tensor, k: int) -> torch.Tensor:
    """Distance from each point to its k-th nearest other point: the radius of its ball in the manifold."""
    radii = [torch.cdist(block, features).kthvalue(k + 1, dim=1).values for block in features.split(CHUNK)]
    return torch.cat(radii)


def coverage(manifold: torch.Tensor, radii: torch.Tensor, queries: torch.Tensor) -> float:
    """Fraction of queries that fall inside at least one ball of the manifold."""
    inside = [(torch.cdist(block, manifold) <= radii[None]).any(dim=1) for block in queries.split(CHUNK)]
    return float(torch.cat(inside).double().mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict:
    """Improved precision (fake inside the real manifold) and recall (real inside the fake manifold).

    k shrinks to n - 1 for sets of n <= k points; the k actually used is returned.
    """
    real_t, fake_t = _tensor(real), _tensor(fake)
    k_used = min(k, len(real_t) - 1, len(fake_t) - 1)
    precision = coverage(real_t, knn_radii(real_t, k_used), fake_t)
    recall = coverage(fake_t, knn_radii(fake_t, k_used), real_t)
    return {"precision": precision, "recall": recall, "k": k_used}


def set_metrics(real: np.ndarray, fake: np.ndarray, k: int = 5, kid_subsets: int = 100, seed: int = 0) -> dict:
    """FID, KID and precision/recall of one pair of feature sets; None where a set has fewer than 2 points."""
    row = {"n_real": len(real), "n_fake": len(fake)}
    if len(real) < 2 or len(fake) < 2:
        return row | {"fid": None, "kid_mean": None, "kid_std": None, "precision": None, "recall": None, "k": None}
    kid_mean, kid_std = kid(real, fake, subsets=kid_subsets, seed=seed)
    return row | {"fid": fid(real, fake), "kid_mean": kid_mean, "kid_std": kid_std} | precision_recall(real, fake, k)


def _pool(features_by_class: Mapping[str, np.ndarray], classes: list[str]) -> np.ndarray:
    return np.concatenate([features_by_class[c] for c in classes]) if classes else np.zeros((0, 1))


def _class_mean(rows: list[dict]) -> dict:
    """Each metric averaged over the classes that have it: a summary free of the pools' class mix."""
    means = {}
    for metric in CLASS_MEAN:
        values = [row[metric] for row in rows if row[metric] is not None]
        means[metric] = float(np.mean(values)) if values else None
    return means


def grouped_set_metrics(
    real_by_class: Mapping[str, np.ndarray],
    fake_by_class: Mapping[str, np.ndarray],
    groups: Mapping[str, str],
    k: int = 5,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict:
    """`set_metrics` per class; per group and overall both pooled and as the mean over classes.

    Pools hold only the classes with synthetic images (a class the synthesis left alone says nothing about
    it). Pooled real and synthetic sets still mix their classes in different proportions (synthesis fills the
    rare classes), which pooled FID counts as a difference; `class_mean` does not.
    """
    classes = list(groups)
    per_class = {c: set_metrics(real_by_class[c], fake_by_class[c], k, kid_subsets, seed) for c in classes}
    covered = [c for c in classes if len(fake_by_class[c])]
    pools = {g: [c for c in covered if groups[c] == g] for g in dict.fromkeys(groups.values())}

    def pooled(members: list[str]) -> dict:
        row = set_metrics(_pool(real_by_class, members), _pool(fake_by_class, members), k, kid_subsets, seed)
        return row | {"classes": members, "class_mean": _class_mean([per_class[c] for c in members])}

    return {"per_class": per_class, "per_group": {g: pooled(members) for g, members in pools.items()},
            "overall": pooled(covered)}


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def grouped_rates(hits: Mapping[str, int], totals: Mapping[str, int], groups: Mapping[str, str]) -> dict:
    """A hit rate (near-copies, correct predictions) per class, per group and overall.

    Groups and overall report the pooled `rate` and `mean_class_rate` (each class counted once, so the
    largest classes do not hide the others); classes with no items have rate None and are left out of means.
    """
    per_class = {c: {"n": totals[c], "rate": _rate(hits[c], totals[c])} for c in groups}

    def pooled(members: list[str]) -> dict:
        class_rates = [per_class[c]["rate"] for c in members if per_class[c]["rate"] is not None]
        return {
            "n": sum(totals[c] for c in members),
            "rate": _rate(sum(hits[c] for c in members), sum(totals[c] for c in members)),
            "mean_class_rate": float(np.mean(class_rates)) if class_rates else None,
        }

    names = dict.fromkeys(groups.values())
    return {
        "per_class": per_class,
        "per_group": {g: pooled([c for c in groups if groups[c] == g]) for g in names},
        "overall": pooled(list(groups)),
    }
