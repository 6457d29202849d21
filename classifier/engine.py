"""Train one classifier with model selection on val balanced accuracy, and predict with it.

AdamW with a per-step cosine schedule; after every epoch the model is scored on the val split and the best
epoch's weights are kept (the long tail makes plain accuracy a poor selector: it rewards ignoring rare classes).
Accelerate picks the device and, on CUDA, bf16 autocast; channels_last is used on CUDA as well.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn as nn
from sklearn.metrics import balanced_accuracy_score
from torch.utils.data import DataLoader, Dataset, Sampler

from capaug.augment.config import DownstreamConfig
from capaug.augment.errors import CapaugError


def make_accelerator(mixed_precision: str = "auto"):
    """An `Accelerator`: bf16 on CUDA for "auto"; reuses the process's settings if another stage chose already."""
    from accelerate import Accelerator

    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() else "no"
    try:
        return Accelerator(mixed_precision=mixed_precision)
    except ValueError:  # AcceleratorState is per process and was set by the calling stage
        return Accelerator()


@dataclass
class TrainedModel:
    """The selected model (eval mode, best val epoch) and how it got there."""

    model: nn.Module
    best_epoch: int
    val_balanced_accuracy: float
    seconds: float


def train_classifier(
    model: nn.Module,
    train_set: Dataset,
    val_set: Dataset,
    loss_fn: nn.Module,
    cfg: DownstreamConfig,
    accelerator,
    *,
    seed: int,
    sampler: Optional[Sampler] = None,
) -> TrainedModel:
    """Fit `model` for `cfg.epochs` epochs; return it with the weights of its best val balanced accuracy."""
    start = time.perf_counter()
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler, shuffle=sampler is None,
                        generator=generator, drop_last=len(train_set) > cfg.batch_size,
                        num_workers=cfg.num_workers, persistent_workers=cfg.num_workers > 0)
    device = accelerator.device
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs * len(loader))
    model, optimizer = accelerator.prepare(model, optimizer)
    loss_fn = loss_fn.to(device)

    best_state, best_epoch, best_score = None, -1, -1.0
    for epoch in range(cfg.epochs):
        model.train()
        for images, labels in loader:
            images = images.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
            loss = loss_fn(model(images).float(), labels.to(device))
            if not math.isfinite(loss.item()):
                raise CapaugError(f"the classifier's loss became {loss.item()} in epoch {epoch}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
        probs, targets = predict(model, val_set, cfg, accelerator)
        score = float(balanced_accuracy_score(targets, probs.argmax(1)))
        if score > best_score:
            best_state = copy.deepcopy(accelerator.unwrap_model(model).state_dict())
            best_epoch, best_score = epoch, score
    model = accelerator.unwrap_model(model)
    model.load_state_dict(best_state)
    accelerator.free_memory()  # drop the accelerator's references to this model and optimizer
    return TrainedModel(model.eval(), best_epoch, best_score, time.perf_counter() - start)


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, cfg: DownstreamConfig, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, K) float64 and the labels (N,) of `dataset`, in order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
    device = accelerator.device
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    probs, targets = [], []
    for images, labels in loader:
        with accelerator.autocast():
            logits = model(images.to(device, memory_format=memory_format))
        probs.append(logits.double().softmax(dim=1).cpu().numpy())
        targets.append(np.asarray(labels))
    return np.concatenate(probs), np.concatenate(targets)
