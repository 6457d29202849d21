"""What every classifier trained on one split shares: its images, input size, channels, pipelines, device, budget.

Building this once per `capaug downstream` run keeps the arms identical except for what the arm changes (loss,
sampler, extra synthetic images), and reads a small split's images from disk only once for all arms and seeds.
The budget is `epochs` epochs of the *real* training split in optimizer steps, `epochs x ceil(n_real / batch)`,
the same for every arm; val is scored once per real-epoch equivalent (`steps_per_epoch` steps).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset, Sampler

from capaug.augment.config import DownstreamConfig
from capaug.augment.datasets import ImageDataset
from capaug.augment.split import Split

from .checkpoint import ClassifierInfo
from .data import Reader, Weighted, cached
from .engine import Phase, TrainedModel, make_accelerator, train_classifier
from .models import create_classifier
from .transforms import AlbumentationsTransform, eval_transform, normalization, train_transform

MAX_NATIVE_SIZE = 224
SMALL_CLASSIFIER = 64  # px: at or below, a model is cheap enough for 5 seeds by default (else 3)
SIZE_PROBE = 64  # training images whose most common size is "the real images' size"


def input_size(split: Split, cfg: DownstreamConfig, reader: Optional[Reader] = None) -> tuple[tuple[int, int], int]:
    """(the real images' (height, width): the most common among the first training images, the classifier's
    input size: `cfg.image_size` or the real one, at most MAX_NATIVE_SIZE)."""
    reader = reader or split.reader()
    real_size = Counter(reader.read(key).shape[:2] for key, _ in split.train[:SIZE_PROBE]).most_common(1)[0][0]
    return real_size, cfg.image_size or min(max(real_size), MAX_NATIVE_SIZE)


def seed_count(cfg: DownstreamConfig, image_size: int) -> int:
    """`cfg.seeds`, or by default 5 for a small classifier input (<= 64 px) and 3 above."""
    return cfg.seeds or (5 if image_size <= SMALL_CLASSIFIER else 3)


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
    real_size: tuple[int, int]

    @classmethod
    def prepare(cls, split: Split, cfg: DownstreamConfig) -> "Experiment":
        """Cache the split's images when they fit `cfg.cache_mb`; size = `cfg.image_size` or the data's own."""
        channels = 1 if split.mode == "L" else 3
        probe = create_classifier(cfg.model, len(split.classes), channels)  # normalization needs no weights
        mean, std = normalization(probe, channels)
        keys = [key for part in (split.train, split.val, split.test) for key, _ in part]
        reader = cached(split.reader(), keys, cfg.cache_mb)
        real_size, image_size = input_size(split, cfg, reader)
        return cls(split, cfg, reader, image_size, channels, mean, std, make_accelerator(cfg.mixed_precision),
                   real_size)

    @property
    def seeds(self) -> int:
        return seed_count(self.cfg, self.image_size)

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps in one epoch of the real training split (also the val interval)."""
        return math.ceil(len(self.split.train) / self.cfg.batch_size)

    @property
    def budget(self) -> int:
        """Optimizer steps of every model: `cfg.epochs` epochs of the real training split."""
        return self.cfg.epochs * self.steps_per_epoch

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

    def loader(self, dataset: Dataset, seed: int, *, sampler: Optional[Sampler] = None,
               batch_sampler: Optional[Sampler] = None) -> DataLoader:
        """Batches of `cfg.batch_size` (full batches only when the data allows), shuffled unless a sampler is given."""
        if batch_sampler is not None:
            return DataLoader(dataset, batch_sampler=batch_sampler, num_workers=self.cfg.num_workers,
                              persistent_workers=self.cfg.num_workers > 0)
        return DataLoader(dataset, batch_size=self.cfg.batch_size, sampler=sampler, shuffle=sampler is None,
                          generator=torch.Generator().manual_seed(seed), drop_last=len(dataset) > self.cfg.batch_size,
                          num_workers=self.cfg.num_workers, persistent_workers=self.cfg.num_workers > 0)

    def fit(self, train_set: Dataset, loss_fn: nn.Module, seed: int, sampler: Optional[Sampler] = None) -> TrainedModel:
        """Train a fresh model on `train_set` (unit sample weights) for the budget, selected on val."""
        loader = self.loader(Weighted(train_set, 1.0), seed, sampler=sampler)
        return self.fit_phases([Phase(loader, loss_fn, self.budget)], seed)

    def fit_phases(self, phases: list[Phase], seed: int) -> TrainedModel:
        """Train a fresh model through `phases`, selected on the split's val balanced accuracy."""
        val_set = self.dataset(self.split.val, train=False)
        return train_classifier(self.new_model(seed), phases, val_set, self.cfg, self.accelerator,
                                eval_every=self.steps_per_epoch)

    def info(self, **extra) -> ClassifierInfo:
        """Checkpoint metadata for a model trained here."""
        return ClassifierInfo(model=self.cfg.model, classes=list(self.split.classes), channels=self.channels,
                              image_size=self.image_size, mean=list(self.mean), std=list(self.std),
                              extra={"split_hash": self.split.hash, **extra})
