"""Leakage guards: a synthetic set from another split, and test images whose pixels occur in training data."""

import csv

import numpy as np
import pytest

from capaug.augment.config import DataConfig
from capaug.augment.errors import CapaugError
from capaug.augment.split import prepare_split
from capaug.classifier.data import MANIFEST_COLUMNS, leakage_guard, load_synthetic_set


class DictReader:
    def __init__(self, images):
        self.images = images

    def read(self, key):
        return self.images[key]


def write_manifest(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)


@pytest.fixture
def split(tmp_path, make_tree):
    data = make_tree(tmp_path / "data", {"big": 12, "rare": 6}, mode="L")
    return prepare_split(str(data), tmp_path / "run", DataConfig())


def synthetic_folder(tmp_path, make_images, split, split_hash=None, name="rare"):
    folder = tmp_path / "synthetic"
    make_images(folder / name, 2, mode="L", seed=99)
    rows = [[f"{name}/{i:03d}.png", name, i, "ddim", 10, 1.0, "m", split_hash or split.hash] for i in range(2)]
    write_manifest(folder, rows)
    return folder


def test_a_synthetic_set_of_the_same_split_loads(tmp_path, make_images, split):
    synthetic = load_synthetic_set("synthetic", synthetic_folder(tmp_path, make_images, split), split.classes,
                                   split.hash)
    assert synthetic.items == [("rare/000.png", 1), ("rare/001.png", 1)]
    assert synthetic.counts(2) == [0, 2]


def test_a_synthetic_set_from_another_split_is_refused(tmp_path, make_images, split):
    folder = synthetic_folder(tmp_path, make_images, split, split_hash="f" * 64)
    with pytest.raises(CapaugError, match="made from split ffffffffffff, not the split evaluated"):
        load_synthetic_set("synthetic", folder, split.classes, split.hash)


def test_a_run_folder_is_accepted_and_bad_manifests_are_refused(tmp_path, make_images, split):
    run = tmp_path / "other_run"
    folder = synthetic_folder(run, make_images, split)
    assert load_synthetic_set("ddpm", run, split.classes, split.hash).folder == folder
    with pytest.raises(CapaugError, match="classes not in the split: cat"):
        load_synthetic_set("x", synthetic_folder(tmp_path / "b", make_images, split, name="cat"), split.classes,
                           split.hash)
    (folder / "rare" / "001.png").unlink()
    with pytest.raises(CapaugError, match="1 file\\(s\\) of the manifest are missing"):
        load_synthetic_set("ddpm", run, split.classes, split.hash)
    with pytest.raises(CapaugError, match="no manifest.csv"):
        load_synthetic_set("ddpm", tmp_path / "nowhere", split.classes, split.hash)


def test_test_images_that_appear_in_training_are_refused():
    rng = np.random.default_rng(0)
    images = {f"k{i}": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8) for i in range(4)}
    images["copy"] = images["k3"].copy()  # same pixels under another key
    reader = DictReader(images)
    leakage_guard(reader, ["k0", "k1"], ["k2", "k3"])
    with pytest.raises(CapaugError, match="1 test image\\(s\\) also appear in the training split.*k3 = copy"):
        leakage_guard(reader, ["k0", "copy"], ["k2", "k3"])


def test_test_images_copied_into_a_synthetic_set_are_refused(tmp_path, make_images, split):
    from capaug.classifier.data import FolderReader

    synthetic = load_synthetic_set("synthetic", synthetic_folder(tmp_path, make_images, split), split.classes,
                                   split.hash)
    reader = split.reader()
    train, test = [k for k, _ in split.train], [k for k, _ in split.test]
    folder_reader = FolderReader(synthetic.folder, split.mode)
    leakage_guard(reader, train, test, [(synthetic, folder_reader)])
    copied = DictReader({key: reader.read(test[0]) for key, _ in synthetic.items})
    with pytest.raises(CapaugError, match="also appear in synthetic set 'synthetic'"):
        leakage_guard(reader, train, test, [(synthetic, copied)])
