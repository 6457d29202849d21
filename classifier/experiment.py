"""What every classifier trained on one split shares: its images, input size, channels, pipelines, device.

Building this once per `capaug downstream` run keeps the arms identical except for what the arm changes (loss,
sampler, extra synthetic images), and reads a small split's images from disk only once for all arms and seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.data import Dataset, Sampler

from capaug.augment.config import DownstreamConfig
from capaug.augment.datasets import ImageDataset
from capaug.augment.split import Split

from .checkpoint import ClassifierInfo
from .data import Reader, cached
from .engine import TrainedModel, make_accelerator, train_classifier
from .models import create_classifier
from .transforms import AlbumentationsTransform, eval_transform, normalization, train_transform

MAX_NATIVE_SIZE = 224


@dataclass
class Experiment:
    split: Split
    cfg: DownstreamConfig
    reader: Reader
    image_size: int
    channels: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    accelerator: object

    @classmethod
    def prepare(cls, split: Split, cfg: DownstreamConfig) -> "Experiment":
        """Cache the split's images when they fit `cfg.cache_mb`; size = `cfg.image_size` or the data's own."""
        channels = 1 if split.mode == "L" else 3
        probe = create_classifier(cfg.model, len(split.classes), channels)  # normalization needs no weights
        mean, std = normalization(probe, channels)
        keys = [key for part in (split.train, split.val, split.test) for key, _ in part]
        reader = cached(split.reader(), keys, cfg.cache_mb)
        first = reader.read(split.train[0][0])
        image_size = cfg.image_size or min(max(first.shape[:2]), MAX_NATIVE_SIZE)
        return cls(split, cfg, reader, image_size, channels, mean, std, make_accelerator(cfg.mixed_precision))

    def new_model(self, seed: int) -> nn.Module:
        """The configured timm model; seed s gives every arm the same initial weights."""
        torch.manual_seed(seed)
        return create_classifier(self.cfg.model, len(self.split.classes), self.channels,
                                 pretrained=self.cfg.pretrained, weights=self.cfg.weights)

    def dataset(self, items: list[tuple[str, int]], *, train: bool, seed: int = 0,
                reader: Optional[Reader] = None) -> Dataset:
        """`items` of `reader` (default: the split's) through the train (seeded) or eval pipeline."""
        pipeline = (train_transform(self.image_size, self.channels, self.mean, self.std, seed=seed) if train
                    else eval_transform(self.image_size, self.channels, self.mean, self.std))
        return ImageDataset(reader or self.reader, items, AlbumentationsTransform(pipeline, self.channels))

    def fit(self, train_set: Dataset, loss_fn: nn.Module, seed: int, sampler: Optional[Sampler] = None) -> TrainedModel:
        """Train a fresh model on `train_set`, selected on the split's val balanced accuracy."""
        val_set = self.dataset(self.split.val, train=False)
        return train_classifier(self.new_model(seed), train_set, val_set, loss_fn, self.cfg, self.accelerator,
                                seed=seed, sampler=sampler)

    def info(self, **extra) -> ClassifierInfo:
        """Checkpoint metadata for a model trained here."""
        return ClassifierInfo(model=self.cfg.model, classes=list(self.split.classes), channels=self.channels,
                              image_size=self.image_size, mean=list(self.mean), std=list(self.std),
                              extra={"split_hash": self.split.hash, **extra})
