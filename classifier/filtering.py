"""A synthetic arm's `+filter`: a confidence band under the reference classifier, and a near-copy cut.

Each synthetic image is scored once per run (shared by every arm that filters the same set):
- the probability of its class under the reference classifier (`reference.py`: trained on the real training
  split only, selected on val; never the test split). Below `low`, the class is not recognisable (an
  out-of-distribution sample); above `high`, the image adds little the real data does not already show.
- its RMS pixel distance (the memorization audit's measure, `augment.audit.pixel_distances`, [0, 1] units)
  to the nearest real training image of its class, at the real images' size. Below `copy`, it is a near-copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capaug.augment.audit import pixel_distances

from .data import Reader, SyntheticSet

REASONS = ("near_copy", "below_band", "above_band")


@dataclass
class FilterScores:
    """Per synthetic file: its class probability under the reference classifier and its near-copy distance."""

    probability: dict[str, float]
    distance: dict[str, float]


def score_synthetic(synthetic: SyntheticSet, reader: Reader, bundle, real_reader: Reader,
                    train: list[tuple[str, int]]) -> FilterScores:
    """Score every image of `synthetic` (read through `reader`, at the real size) once."""
    probability, distance = {}, {}
    for label in sorted({y for _, y in synthetic.items}):
        keys = [key for key, y in synthetic.items if y == label]
        images = np.stack([reader.read(key) for key in keys])
        probs = bundle.predict_proba(images)[:, label]  # the reference shares the split's classes
        real = [real_reader.read(key) for key, y in train if y == label]
        near = pixel_distances(images, np.stack(real))[0] if real else np.full(len(keys), np.inf)
        probability.update(zip(keys, map(float, probs)))
        distance.update(zip(keys, map(float, near)))
    return FilterScores(probability, distance)


def apply_band(synthetic: SyntheticSet, scores: FilterScores, low: float, high: float, copy: float,
               num_classes: int) -> tuple[SyntheticSet, dict]:
    """The images that pass, and the record for metrics.json: the band, kept and dropped counts per class."""
    kept, dropped = [], {reason: [0] * num_classes for reason in REASONS}
    for key, label in synthetic.items:
        p = scores.probability[key]
        reason = ("near_copy" if scores.distance[key] < copy else "below_band" if p < low
                  else "above_band" if p > high else None)
        if reason:
            dropped[reason][label] += 1
        else:
            kept.append(key)
    survivors = synthetic.subset(kept)
    return survivors, {"low": low, "high": high, "copy": copy, "kept": survivors.counts(num_classes),
                       "dropped": dropped}
