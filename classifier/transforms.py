"""albumentations pipelines for the classifier, chosen by image size and channel count.

Small images (<= 64 px, e.g. MedMNIST, digits) get mild geometric jitter only: at that size a random crop
loses a large share of the content. Larger images get a random resized crop plus brightness/contrast jitter.
No flips: left/right carries meaning in many medical images (laterality) and in characters. Every arm uses
the same pipeline, so the comparison between arms stays fair.
"""

from __future__ import annotations

from typing import Optional, Sequence

import albumentations as A
import numpy as np
from albumentations.pytorch import ToTensorV2

SMALL_IMAGE = 64


def normalization(model, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std of the model's pretrained config (timm), averaged to one value for grey images."""
    from timm.data import resolve_model_data_config

    config = resolve_model_data_config(model)
    mean, std = tuple(config["mean"]), tuple(config["std"])
    if channels == 1:
        return (float(np.mean(mean)),), (float(np.mean(std)),)
    return mean, std


def train_transform(image_size: int, channels: int, mean: Sequence[float], std: Sequence[float],
                    seed: Optional[int] = None) -> A.Compose:
    """Augmenting pipeline: uint8 HxWxC -> float tensor CxHxW; `seed` makes the augmentation reproducible."""
    if image_size <= SMALL_IMAGE:
        steps = [
            A.Resize(image_size, image_size),
            A.Affine(scale=(0.9, 1.1), translate_percent=(-0.08, 0.08), rotate=(-10, 10), p=0.8),
        ]
    else:
        steps = [
            A.RandomResizedCrop(size=(image_size, image_size), scale=(0.7, 1.0), ratio=(0.9, 1.1)),
            A.Affine(rotate=(-10, 10), p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.15, contrast_limit=0.15, p=0.5),
        ]
    return A.Compose([*steps, A.Normalize(mean=mean, std=std), ToTensorV2()], seed=seed)


def eval_transform(image_size: int, channels: int, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Deterministic pipeline for val, test and inference."""
    return A.Compose([A.Resize(image_size, image_size), A.Normalize(mean=mean, std=std), ToTensorV2()])


def match_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """uint8 HxW or HxWxC -> HxWx`channels` (grey is repeated to RGB; RGB becomes grey by luminance)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == channels:
        return image
    if channels == 3:
        return np.repeat(image[:, :, :1], 3, axis=2)
    grey = image[:, :, :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.clip(grey.round(), 0, 255).astype(np.uint8)[:, :, None]


class AlbumentationsTransform:
    """Adapter from an albumentations pipeline to the data layer's `transform(np_uint8_hwc) -> tensor`."""

    def __init__(self, pipeline: A.Compose, channels: int):
        self.pipeline = pipeline
        self.channels = channels

    def __call__(self, image: np.ndarray):
        return self.pipeline(image=match_channels(image, self.channels))["image"]
