"""Intervals for paired differences between arms: a t-interval over seeds and a bootstrap over test images.

The t-interval (95%, n - 1 degrees of freedom) treats the per-seed differences as the sample: it captures
training noise (initialisation, data order) and is what the verdict reads. The bootstrap resamples the test
images (stratified by class, so every class keeps its test count and balanced accuracy stays defined), the
same images for both arms, recomputes each model's balanced accuracy on the resample and averages the
paired difference over seeds: it captures how much the result depends on the particular test images.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import stats

LEVEL = 0.95


def t_interval(differences: Sequence[Optional[float]]) -> Optional[list[float]]:
    """[low, high] of the mean paired difference; None below two defined values."""
    d = np.asarray([x for x in differences if x is not None], dtype=np.float64)
    if d.size < 2:
        return None
    half = stats.t.ppf(0.5 + LEVEL / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size)
    return [float(d.mean() - half), float(d.mean() + half)]


def bootstrap_interval(correct: np.ndarray, baseline: np.ndarray, labels: np.ndarray, resamples: int = 1000,
                       seed: int = 0) -> Optional[list[float]]:
    """[low, high] percentile interval of the seed-mean balanced-accuracy difference over test resamples.

    `correct`, `baseline`: (seeds, N) booleans, whether each model got each test image right, paired by seed.
    """
    if resamples < 1 or correct.size == 0:
        return None
    rng = np.random.default_rng(seed)
    difference = np.zeros((resamples, correct.shape[0]))
    classes = np.unique(labels)
    for k in classes:
        members = np.flatnonzero(labels == k)
        draw = members[rng.integers(0, len(members), (resamples, len(members)))]  # (B, n_k)
        difference += (correct[:, draw].mean(-1) - baseline[:, draw].mean(-1)).T  # recall difference (B, S)
    mean = (difference / len(classes)).mean(1)
    low, high = np.quantile(mean, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return [float(low), float(high)]
