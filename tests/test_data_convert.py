"""`capaug data` conversions: npz to a pre-split tree, and the exponential long-tail profile (CIFAR-10-LT)."""

import numpy as np
import pytest
from PIL import Image

from capaug.augment.config import DataConfig
from capaug.augment.convert import make_long_tailed, npz_to_folder
from capaug.augment.errors import CapaugError
from capaug.augment.sources import scan_source
from capaug.augment.split import make_split
from capaug.augment.stats import long_tail_counts


def test_cifar10_lt_profile():
    counts = long_tail_counts(5000, 100, 10)
    assert counts == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts) == 12406


def test_npz_to_folder_writes_a_presplit_tree(make_npz, tmp_path):
    path = make_npz({"train": [3, 2], "val": [1, 1], "test": [2, 1]})
    counts = npz_to_folder(path, tmp_path / "out")
    assert counts == {"train": {"0": 3, "1": 2}, "val": {"0": 1, "1": 1}, "test": {"0": 2, "1": 1}}
    png = np.array(Image.open(tmp_path / "out" / "train" / "1" / "000004.png"))
    np.testing.assert_array_equal(png, np.load(path)["train_images"][4])
    catalog = scan_source(tmp_path / "out")
    assert catalog.source["kind"] == "presplit" and catalog.mode == "RGB"
    with pytest.raises(CapaugError, match="already exists and is not empty; choose another path or pass --overwrite"):
        npz_to_folder(path, tmp_path / "out")


def test_npz_without_expected_keys_is_not_converted(make_npz, tmp_path):
    path = make_npz({"train": [2, 2], "test": [1, 1]})
    with pytest.raises(CapaugError, match="lacks the keys val_images, val_labels"):
        npz_to_folder(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_make_long_tailed_keeps_the_first_files_and_copies_test(tmp_path, make_tree):
    make_tree(tmp_path / "bal" / "train", {"a": 8, "b": 8, "c": 8})
    make_tree(tmp_path / "bal" / "test", {"a": 2, "b": 2, "c": 2})
    counts = make_long_tailed(tmp_path / "bal", 4, tmp_path / "lt")
    assert counts == {"train": {"a": 8, "b": 4, "c": 2}, "test": {"a": 2, "b": 2, "c": 2}}
    assert sorted(p.name for p in (tmp_path / "lt" / "train" / "c").iterdir()) == ["000.png", "001.png"]
    assert (tmp_path / "lt" / "test" / "c" / "001.png").read_bytes() == (tmp_path / "bal" / "test" / "c" / "001.png").read_bytes()
    assert not (tmp_path / "lt" / "val").exists()


def test_small_cifar10_lt_profile():
    """--max-per-class 500 at ratio 100: the head class keeps 500, the tail 5."""
    counts = long_tail_counts(500, 100, 10)
    assert counts == [500, 299, 179, 107, 64, 38, 23, 13, 8, 5]
    assert sum(counts) == 1236


def test_make_long_tailed_max_per_class_sets_the_head_count(tmp_path, make_tree):
    make_tree(tmp_path / "bal" / "train", {"a": 8, "b": 8, "c": 8})
    make_tree(tmp_path / "bal" / "test", {"a": 2, "b": 2, "c": 2})
    counts = make_long_tailed(tmp_path / "bal", 4, tmp_path / "lt", max_per_class=6)
    assert counts == {"train": {"a": 6, "b": 3, "c": 1}, "test": {"a": 2, "b": 2, "c": 2}}
    assert sorted(p.name for p in (tmp_path / "lt" / "train" / "a").iterdir()) == [f"{i:03d}.png" for i in range(6)]


@pytest.mark.parametrize("max_per_class, ratio, message", [
    (9, 4, "ratio 4 from a head class of 9 needs 9 training images of class 'a', which has 8; give a smaller --max-per-class"),
    (3, 4, "ratio 4 from 3 images leaves class 'c' without training images; the head class needs at least 4 (--max-per-class)"),
    (0, 4, "--max-per-class must be a whole number of at least 1, got 0"),
])
def test_make_long_tailed_refuses_a_head_count_the_data_cannot_give(tmp_path, make_tree, max_per_class, ratio, message):
    data = make_tree(tmp_path / "bal", {"a": 8, "b": 8, "c": 8})
    with pytest.raises(CapaugError) as err:
        make_long_tailed(data, ratio, tmp_path / "lt", max_per_class=max_per_class)
    assert str(err.value) == message
    assert not (tmp_path / "lt").exists()


def test_make_long_tailed_refuses_output_inside_data(tmp_path, make_tree):
    data = make_tree(tmp_path / "bal", {"a": 4, "b": 4})
    with pytest.raises(CapaugError, match=r"output .*bal/lt is inside the data folder .*bal; choose a path outside it"):
        make_long_tailed(data, 2, data / "lt")
    assert not (data / "lt").exists()


@pytest.mark.parametrize("ratio", [0.5, float("nan"), float("inf"), -3])
def test_make_long_tailed_refuses_ratio_below_one_or_not_finite(tmp_path, make_tree, ratio):
    with pytest.raises(CapaugError, match="--ratio must be a finite number of at least 1"):
        make_long_tailed(make_tree(tmp_path / "bal", {"a": 4, "b": 4}), ratio, tmp_path / "lt")
    assert not (tmp_path / "lt").exists()


def test_retinamnist_from_shared_data(shared_data, tmp_path):
    counts = npz_to_folder(shared_data / "retinamnist.npz", tmp_path / "retina")
    assert list(counts["train"].values()) == [486, 128, 206, 194, 66]
    split = make_split(scan_source(tmp_path / "retina"), DataConfig())
    assert split.counts("train") == [486, 128, 206, 194, 66]
    assert split.counts("val") == [54, 12, 28, 20, 6] and split.counts("test") == [174, 46, 92, 68, 20]


def test_cifar10_lt_from_shared_data(shared_data, tmp_path):
    """The real CIFAR-10 JPEG tree made long-tailed at ratio 100: 5000 ... 50, 12,406 training images."""
    import tarfile

    with tarfile.open(shared_data / "cifar10-jpeg.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    counts = make_long_tailed(tmp_path / "CIFAR-10-images", 100, tmp_path / "cifar10-lt")
    assert list(counts["train"].values()) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    assert sum(counts["train"].values()) == 12406 and sum(counts["test"].values()) == 10000
