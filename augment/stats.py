"""Class statistics of a training split: counts, shares, imbalance ratio and Many/Medium/Few groups.

Groups follow the long-tail convention (Many > 100, Medium 20-100, Few < 20 training images) when each group
gets at least one class; on data where one would be empty (a small or mildly imbalanced set) the classes are
ranked by count and cut into terciles instead (rank r of K goes to group round(2r / (K - 1)), so the largest
class is always Many and the smallest always Few, even with two classes).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

GROUPS = ("many", "medium", "few")


@dataclass
class ClassStats:
    classes: list[str]
    counts: list[int]
    shares: list[float]
    groups: list[str]
    imbalance_ratio: float
    grouping: str  # "thresholds" or "terciles"

    def group_members(self) -> dict[str, list[str]]:
        """group -> class names, in class order."""
        return {g: [c for c, cg in zip(self.classes, self.groups) if cg == g] for g in GROUPS}

    def to_dict(self) -> dict:
        return asdict(self)


def class_stats(classes: list[str], counts: list[int], many_threshold: int = 100, few_threshold: int = 20) -> ClassStats:
    """Statistics of per-class training counts; the imbalance ratio is largest / smallest count."""
    total = sum(counts)
    by_threshold = ["many" if n > many_threshold else "few" if n < few_threshold else "medium" for n in counts]
    if set(by_threshold) == set(GROUPS):
        groups, grouping = by_threshold, "thresholds"
    else:
        ranked = sorted(range(len(counts)), key=lambda k: -counts[k])  # stable: ties keep class order
        groups = [""] * len(counts)
        for rank, k in enumerate(ranked):
            groups[k] = GROUPS[round(2 * rank / (len(counts) - 1))]
        grouping = "terciles"
    smallest = min(counts)
    return ClassStats(
        classes=list(classes),
        counts=list(counts),
        shares=[n / total for n in counts],
        groups=groups,
        imbalance_ratio=max(counts) / smallest if smallest else float("inf"),
        grouping=grouping,
    )


def long_tail_counts(n_max: int, ratio: float, num_classes: int) -> list[int]:
    """The exponential long-tail profile `n_k = floor(n_max * ratio^(-k/(K-1)))`, k = 0..K-1."""
    return [math.floor(n_max * ratio ** (-k / (num_classes - 1)) + 1e-9) for k in range(num_classes)]
