"""The images the arms train on: the real split (held in memory when small), synthetic sets, leakage guards.

A synthetic set is a folder with `manifest.csv` (DEVELOPERS.md, Run folder). Two guards keep the comparison
honest: a synthetic set made from a different split (its manifest's split hash) could have seen the test
images, and a test image whose pixels also appear among the training images (real or synthetic) is not a test.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Protocol

import numpy as np
from PIL import Image

from torch.utils.data import Dataset

from capaug.augment.errors import CapaugError
from capaug.augment.sources import pixel_hash

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ("file", "class", "seed", "sampler", "steps", "guidance", "model_hash", "split_hash")


class Reader(Protocol):
    def read(self, key: str) -> np.ndarray: ...


class MemoryReader:
    """Decoded uint8 images by key, read once from another reader (a small split's epochs then cost no IO)."""

    def __init__(self, reader: Reader, keys: Iterable[str]):
        self.images = {key: reader.read(key) for key in dict.fromkeys(keys)}

    def read(self, key: str) -> np.ndarray:
        return self.images[key]


def cached(reader: Reader, keys: list[str], limit_mb: float) -> Reader:
    """A `MemoryReader` when the images (estimated from the first) fit in `limit_mb`, else `reader` (stream)."""
    if not keys:
        return reader
    estimate = reader.read(keys[0]).nbytes * len(keys)
    return MemoryReader(reader, keys) if estimate <= limit_mb * 2**20 else reader


class FolderReader:
    """Reads `folder/<key>` as uint8 HxWxC in the split's colour mode ("L" or "RGB"); picklable."""

    def __init__(self, folder: Path, mode: str):
        self.folder, self.mode = Path(folder), mode

    def read(self, key: str) -> np.ndarray:
        path = self.folder / key
        try:
            with Image.open(path) as image:
                array = np.asarray(image.convert(self.mode))
        except OSError as e:
            raise CapaugError(f"cannot read synthetic image {path}: {e}") from None
        return array[:, :, None] if array.ndim == 2 else array


class ResizedReader:
    """Another reader's images at the real images' (height, width), resized once at load.

    Synthetic images are made at the generator's resolution (e.g. 32 px for 28 px RetinaMNIST). Resizing them
    to the real size here, with PIL's antialiased bilinear filter (the filter torchvision's antialiased resize
    used to bring the real images to the generator's size, run the other way), means real and synthetic
    images then take the identical path through the classifier's pipeline: no size or interpolation cue.
    """

    def __init__(self, reader: Reader, size: tuple[int, int]):
        self.reader, self.size = reader, tuple(size)

    def read(self, key: str) -> np.ndarray:
        image = self.reader.read(key)
        if image.shape[:2] == self.size:
            return image
        resized = Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).resize(
            (self.size[1], self.size[0]), Image.BILINEAR)
        array = np.asarray(resized)
        return array[:, :, None] if array.ndim == 2 else array


class Weighted(Dataset):
    """`(image, label, weight)` of another dataset's items: the per-sample loss weight (synthetic omega)."""

    def __init__(self, dataset: Dataset, weight: float):
        self.dataset, self.weight = dataset, float(weight)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        image, label = self.dataset[index]
        return image, label, self.weight


@dataclass
class SyntheticSet:
    """A synthetic image folder checked against the split: `items` are (file relative to `folder`, label)."""

    name: str
    folder: Path
    items: list[tuple[str, int]]

    def counts(self, num_classes: int) -> list[int]:
        return np.bincount(np.asarray([label for _, label in self.items], dtype=np.int64), minlength=num_classes).tolist()

    def subset(self, keep: Iterable[str]) -> "SyntheticSet":
        """The same set restricted to the files in `keep` (a filter's survivors)."""
        keep = set(keep)
        return SyntheticSet(self.name, self.folder, [item for item in self.items if item[0] in keep])


def synthetic_folder(path: str | Path) -> Path:
    """The folder holding `manifest.csv`: `path` itself, or `path/synthetic` when `path` is a run folder."""
    path = Path(path)
    for folder in (path, path / "synthetic"):
        if (folder / MANIFEST).is_file():
            return folder
    raise CapaugError(f"no {MANIFEST} in {path} or {path / 'synthetic'}; run `capaug synthesize` for it first")


def load_synthetic_set(name: str, path: str | Path, classes: list[str], split_hash: str) -> SyntheticSet:
    """Read and check a synthetic set's manifest against the split being evaluated (the split-hash guard)."""
    folder = synthetic_folder(path)
    with open(folder / MANIFEST, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise CapaugError(f"{folder / MANIFEST} lacks the column(s) {', '.join(missing)}")
        rows = list(reader)
    if not rows:
        raise CapaugError(f"synthetic set '{name}' ({folder}) is empty")
    hashes = sorted({row["split_hash"] for row in rows})
    if hashes != [split_hash]:
        other = next(h for h in hashes if h != split_hash)
        raise CapaugError(f"synthetic set '{name}' ({folder}) was made from split {other[:12]}, not the split "
                          f"evaluated here ({split_hash[:12]}); its model may have seen these test images")
    label_of = {c: i for i, c in enumerate(classes)}
    unknown = sorted({row["class"] for row in rows} - label_of.keys())
    if unknown:
        raise CapaugError(f"synthetic set '{name}' has classes not in the split: {', '.join(unknown)}")
    absent = [row["file"] for row in rows if not (folder / row["file"]).is_file()]
    if absent:
        raise CapaugError(f"synthetic set '{name}': {len(absent)} file(s) of the manifest are missing, "
                          f"e.g. {folder / absent[0]}")
    return SyntheticSet(name, folder, [(row["file"], label_of[row["class"]]) for row in rows])


def content_hashes(reader: Reader, keys: Iterable[str]) -> dict[str, str]:
    """sha256 of each image's decoded pixels (shape included) -> its first key: duplicates by content."""
    hashes: dict[str, str] = {}
    for key in keys:
        hashes.setdefault(pixel_hash(reader.read(key)), key)
    return hashes


def check_test_not_in_training(test: dict[str, str], training: dict[str, str], source: str) -> None:
    """Refuse test images whose pixels also occur in a training source (`content_hashes` of each)."""
    shared = [h for h in test if h in training]
    if shared:
        h = shared[0]
        raise CapaugError(f"{len(shared)} test image(s) also appear in {source} (same pixels), e.g. test "
                          f"{test[h]} = {training[h]}; the test split must be untouched by training")


def leakage_guard(real_reader: Reader, train_keys: list[str], test_keys: list[str],
                  synthetic: Optional[list[tuple[SyntheticSet, Reader]]] = None) -> None:
    """Both guards' content part: no test image in the real training split or in any synthetic set."""
    test = content_hashes(real_reader, test_keys)
    check_test_not_in_training(test, content_hashes(real_reader, train_keys), "the training split")
    for synthetic_set, reader in synthetic or []:
        keys = [key for key, _ in synthetic_set.items]
        check_test_not_in_training(test, content_hashes(reader, keys), f"synthetic set '{synthetic_set.name}'")
