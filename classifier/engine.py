"""Train one classifier for a fixed number of optimizer steps, with model selection on val balanced accuracy.

The budget is counted in optimizer steps, not epochs, so every arm trains equally long whatever its data
(DESIGN.md, Downstream evaluation: fair budget). Training runs in phases (the main phase, and cRT's or
`synthetic-features`' final-layer phase for a two-stage arm), each with its own AdamW and per-step cosine
schedule. A phase's data may depend on the model trained so far (its loader is then built when the phase
starts), and may be the final layer's inputs (pooled features) instead of images. Every
`eval_every` steps (and after the last) the model is scored on the val split and the best weights are kept
(the long tail makes plain accuracy a poor selector: it rewards ignoring rare classes). Accelerate picks the
device and, on CUDA, bf16 autocast; channels_last is used on CUDA as well.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Dataset

from capaug.augment.config import DownstreamConfig
from capaug.augment.errors import CapaugError

from .metrics import balanced_accuracy


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
class Phase:
    """`steps` optimizer steps on batches (images, labels, sample weights) of `loader`, cycled as needed.

    `loader` may be a callable that builds the loader from the model as the previous phases left it.
    `head_only`: only the final layer learns and the backbone stays in eval mode (cRT's second stage).
    `features`: the batches hold the final layer's inputs (pooled features), fed to it alone; implies head_only.
    `record`: what the phase reports for the run record (filled by a loader callable), merged into
    `TrainedModel.record`.
    """

    loader: DataLoader | Callable[[nn.Module], DataLoader]
    loss_fn: nn.Module
    steps: int
    head_only: bool = False
    features: bool = False
    record: dict = field(default_factory=dict)


@dataclass
class TrainedModel:
    """The selected model (eval mode, best val step) and how it got there."""

    model: nn.Module
    best_step: int
    best_epoch: float  # best_step in epochs of the real training split
    val_balanced_accuracy: float
    optimizer_steps: int
    seconds: float
    record: dict = field(default_factory=dict)  # the phases' records (e.g. the synthetic features made)


def train_classifier(model: nn.Module, phases: list[Phase], val_set: Dataset, cfg: DownstreamConfig, accelerator,
                     *, eval_every: int) -> TrainedModel:
    """Run the phases; return `model` with the weights of its best val balanced accuracy."""
    start = time.perf_counter()
    device = accelerator.device
    channels_last = device.type == "cuda"
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    model = accelerator.prepare(model)
    raw = accelerator.unwrap_model(model)
    best_state, best_step, best_score, step = None, -1, -1.0, 0
    total = sum(phase.steps for phase in phases)
    for phase in phases:
        head_only = phase.head_only or phase.features
        head = set(map(id, raw.get_classifier().parameters()))
        for p in raw.parameters():
            p.requires_grad_(not head_only or id(p) in head)
        optimizer = accelerator.prepare(torch.optim.AdamW([p for p in raw.parameters() if p.requires_grad],
                                                          lr=cfg.lr, weight_decay=cfg.weight_decay))
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(phase.steps, 1))
        loss_fn = phase.loss_fn.to(device)
        batches = _cycle(phase.loader(raw) if callable(phase.loader) else phase.loader)
        for _ in range(phase.steps):
            model.train()
            if head_only:
                raw.eval()
                raw.get_classifier().train()
            inputs, labels, weights = next(batches)
            if phase.features:
                with accelerator.autocast():
                    logits = raw.get_classifier()(inputs.to(device))
            else:
                logits = model(inputs.to(device, memory_format=torch.channels_last if channels_last
                                         else torch.preserve_format))
            loss = loss_fn(logits.float(), labels.to(device), weights.to(device))
            if not math.isfinite(loss.item()):
                raise CapaugError(f"the classifier's loss became {loss.item()} at step {step}; lower the lr")
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            step += 1
            if step % eval_every == 0 or step == total:
                probs, targets = predict(model, val_set, cfg, accelerator)
                score = balanced_accuracy(targets, probs.argmax(1), probs.shape[1])
                if score > best_score:
                    best_state = copy.deepcopy(raw.state_dict())
                    best_step, best_score = step, score
    for p in raw.parameters():
        p.requires_grad_(True)
    raw.load_state_dict(best_state)
    accelerator.free_memory()  # drop the accelerator's references to this model and optimizer
    return TrainedModel(raw.eval(), best_step, best_step / eval_every, best_score, step, time.perf_counter() - start,
                        {key: value for phase in phases for key, value in phase.record.items()})


def _cycle(loader: DataLoader) -> Iterator:
    """The loader's batches, epoch after epoch (a shuffling loader reshuffles each time)."""
    while True:
        yield from loader


@torch.no_grad()
def predict(model: nn.Module, dataset: Dataset, cfg: DownstreamConfig, accelerator) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities (N, K) float64 and the labels (N,) of `dataset`, in order."""
    model.eval()
    loader = DataLoader(dataset, batch_size=cfg.batch_size * 2, shuffle=False, num_workers=cfg.num_workers)
    device = accelerator.device
    memory_format = torch.channels_last if device.type == "cuda" else torch.preserve_format
    probs, targets = [], []
    for images, labels, *_ in loader:
        with accelerator.autocast():
            logits = model(images.to(device, memory_format=memory_format))
        probs.append(logits.double().softmax(dim=1).cpu().numpy())
        targets.append(np.asarray(labels))
    return np.concatenate(probs), np.concatenate(targets)
