"""Image grids with one row per entry (a class, or real vs synthetic rows of a class), for quick visual checks.

Rows may hold different numbers of images and mix grey and colour images; short rows are left blank at the
end so columns stay aligned. Saved grids enlarge small images (nearest neighbour, whole pixels) so that a 16 or
28 px sample can be judged by eye.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from .io import save_image


def image_grid(rows: Sequence[np.ndarray], pad: int = 2, background: int = 255) -> Image.Image:
    """uint8 (n_i, H, W, C) arrays, all of the same H and W -> one PIL image, row i = rows[i]."""
    if not rows:
        raise ValueError("a grid needs at least one row")
    h, w = rows[0].shape[1:3]
    if any(r.shape[1:3] != (h, w) for r in rows):
        raise ValueError("every image of a grid needs the same height and width")
    channels = max(r.shape[3] for r in rows)
    columns = max(1, max(len(r) for r in rows))
    grid = np.full((pad + len(rows) * (h + pad), pad + columns * (w + pad), channels), background, np.uint8)
    for i, row in enumerate(rows):
        for j, image in enumerate(row):
            y, x = pad + i * (h + pad), pad + j * (w + pad)
            grid[y : y + h, x : x + w] = image  # a grey image broadcasts over colour channels
    return Image.fromarray(grid[..., 0] if channels == 1 else grid)


def upscale(rows: Sequence[np.ndarray], min_cell: int) -> list[np.ndarray]:
    """Repeat every pixel k times (the smallest whole k that makes each image at least `min_cell` px a side)."""
    k = max(1, math.ceil(min_cell / min(rows[0].shape[1:3]))) if rows else 1
    return [r.repeat(k, axis=1).repeat(k, axis=2) for r in rows]


def save_grid(path: str | Path, rows: Sequence[np.ndarray], pad: int = 2, min_cell: int = 64) -> None:
    save_image(path, image_grid(upscale(rows, min_cell), pad))
