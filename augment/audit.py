"""Memorization audit: how close is each synthetic image to its nearest same-class training image?

Distances are RMS pixel distances in [0, 1] units at the model's resolution (0 = an exact copy, ~0.4 = an
unrelated image), so one threshold means the same thing for every dataset size and image size. With a
classifier, the nearest neighbour in its feature space (cosine distance) is reported as well. A real-anchored
image (`anchors.py`) also gets its distance to the training image it started from.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch

CHUNK = 1024


def nearest(queries: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean nearest neighbour of each query row among the reference rows: (distance, index).

    The neighbour is found with a matrix product and its distance then computed directly, so an exact copy
    reads as 0 rather than as matrix-product rounding noise.
    """
    q = torch.as_tensor(queries, dtype=torch.float32).flatten(1)
    r = torch.as_tensor(reference, dtype=torch.float32).flatten(1)
    if len(r) == 0:
        raise ValueError("no reference images to compare with")
    best = torch.empty(len(q), dtype=torch.long)
    for i in range(0, len(q), CHUNK):
        best[i : i + CHUNK] = torch.cdist(q[i : i + CHUNK], r).argmin(dim=1)
    distance = (q - r[best]).double().norm(dim=1)
    return distance.numpy(), best.numpy()


def pixel_distances(images: np.ndarray, train_images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, H, W, C) vs uint8 (M, H, W, C) -> (RMS distance in [0, 1] units, nearest training index)."""
    distance, index = nearest(images.reshape(len(images), -1) / 255.0, train_images.reshape(len(train_images), -1) / 255.0)
    return distance / np.sqrt(images[0].size if len(images) else 1), index


def pair_distances(images: np.ndarray, others: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) vs uint8 (N, H, W, C) -> RMS distance of each pair in [0, 1] units."""
    diff = images.reshape(len(images), -1) / 255.0 - others.reshape(len(others), -1) / 255.0
    return np.sqrt((diff**2).mean(axis=1)) if len(images) else np.zeros(0)


def feature_distances(features: np.ndarray, train_features: np.ndarray) -> np.ndarray:
    """Cosine distance (0 = same direction, 2 = opposite) to the nearest training feature vector."""

    def unit(x):
        x = np.asarray(x, np.float32).reshape(len(x), -1)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    distance, _ = nearest(unit(features), unit(train_features))
    return distance**2 / 2


@dataclass
class AuditSummary:
    name: str
    images: int
    min_distance: float
    median_distance: float
    mean_distance: float
    threshold: float
    near_copies: int
    min_source_distance: Optional[float] = None  # real-anchored images: distance to the image each started from
    median_source_distance: Optional[float] = None

    @property
    def near_copy_rate(self) -> float:
        return self.near_copies / self.images if self.images else 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "near_copy_rate": self.near_copy_rate}


def summarize(name: str, distances: np.ndarray, threshold: float,
              source_distances: Optional[np.ndarray] = None) -> AuditSummary:
    """Per-class summary; an image below `threshold` counts as a near-copy."""
    d = np.asarray(distances, dtype=float)
    stat = (lambda f: float(f(d))) if len(d) else (lambda f: float("nan"))
    source = {}
    if source_distances is not None and len(source_distances):
        source = {"min_source_distance": float(np.min(source_distances)),
                  "median_source_distance": float(np.median(source_distances))}
    return AuditSummary(name, len(d), stat(np.min), stat(np.median), stat(np.mean), threshold, int((d < threshold).sum()),
                        **source)
