"""Sample grids enlarge small images (nearest neighbour) so a 16 or 28 px sample can be judged by eye."""

import numpy as np
from PIL import Image

from capaug.augment.grids import save_grid, upscale


def test_small_images_are_enlarged_to_at_least_64_px_cells(tmp_path):
    rows = [np.zeros((3, 16, 16, 1), np.uint8), np.full((2, 16, 16, 1), 200, np.uint8)]
    save_grid(tmp_path / "g.png", rows, pad=1)
    with Image.open(tmp_path / "g.png") as image:
        assert image.size == (1 + 3 * (64 + 1), 1 + 2 * (64 + 1))
    for size, cell in ((28, 84), (64, 64), (100, 100)):
        assert upscale([np.zeros((1, size, size, 3), np.uint8)], 64)[0].shape == (1, cell, cell, 3)


def test_enlarging_repeats_pixels_and_keeps_values():
    image = np.arange(4, dtype=np.uint8).reshape(1, 2, 2, 1)
    big = upscale([image], 4)[0]
    assert big.shape == (1, 4, 4, 1)
    assert big[0, :, :, 0].tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
