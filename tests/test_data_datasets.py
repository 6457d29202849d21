"""ImageDataset streams from a reader; the diffusion transform gives CxHxW floats in [-1, 1] at the model's size."""

import numpy as np
import torch

from capaug.augment.config import DataConfig
from capaug.augment.datasets import ImageDataset, diffusion_transform
from capaug.augment.sources import scan_source
from capaug.augment.split import make_split

torch.set_num_threads(1)


def test_transform_range_size_and_channels():
    image = np.zeros((8, 8, 1), dtype=np.uint8)
    image[:, 4:] = 255
    grey = diffusion_transform(16, 1)(image)
    assert grey.shape == (1, 16, 16) and grey.dtype == torch.float32
    assert grey.min() == -1.0 and grey.max() == 1.0
    rgb = diffusion_transform(16, 3)(image)
    assert rgb.shape == (3, 16, 16) and torch.equal(rgb[0], rgb[2])
    assert diffusion_transform(8, 3)(np.full((20, 10, 3), 255, np.uint8)).shape == (3, 8, 8)
    assert diffusion_transform(8, 1)(np.full((8, 8, 3), 255, np.uint8)).shape == (1, 8, 8)


def test_dataset_over_a_split_batches_with_a_dataloader(lt_folder):
    split = make_split(scan_source(lt_folder), DataConfig())
    dataset = ImageDataset(split.reader(), split.train, diffusion_transform(16, 3))
    assert len(dataset) == 15
    x, y = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert x.shape == (4, 3, 16, 16) and y.tolist() == [label for _, label in split.train[:4]]
    expected = torch.from_numpy(split.reader().read(split.train[0][0])).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(x[0], expected)
