"""Torch datasets that decode images one at a time from an `ImageReader`, and the diffusion model's transform."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as F

from .sources import ImageReader


class ImageDataset(Dataset):
    """`(transform(uint8 HxWxC image), label)` for each `(key, label)`; images stream from disk, never all at once."""

    def __init__(self, reader: ImageReader, items: Sequence[tuple[str, int]], transform: Callable[[np.ndarray], object]):
        self.reader, self.items, self.transform = reader, list(items), transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int):
        key, label = self.items[index]
        return self.transform(self.reader.read(key)), label


def diffusion_transform(image_size: int, channels: int) -> "DiffusionTransform":
    """The training transform of the diffusion model (see `DiffusionTransform`)."""
    return DiffusionTransform(image_size, channels)


class DiffusionTransform:
    """uint8 HxWxC -> float CxHxW in [-1, 1]: shorter side resized to `image_size` (antialiased), centre-cropped,
    channels matched to the model (grey repeated to RGB, RGB averaged to grey by luminance).

    A class rather than a closure so DataLoader workers can pickle it.
    """

    def __init__(self, image_size: int, channels: int):
        self.image_size, self.channels = image_size, channels

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)  # a copy: inputs may be read-only
        if x.shape[0] != self.channels:
            x = x.expand(3, -1, -1) if self.channels == 3 else F.rgb_to_grayscale(x)
        if tuple(x.shape[1:]) != (self.image_size, self.image_size):
            x = F.center_crop(F.resize(x, [self.image_size], antialias=True), [self.image_size])
        return x.float().div(127.5).sub(1.0).clamp(-1.0, 1.0)
