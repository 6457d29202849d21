"""Scanning every input kind into a Catalog, reading images back, and the bad inputs scanning refuses."""

import pickle

import numpy as np
import pytest

from capaug.augment.errors import CapaugError
from capaug.augment.sources import ImageReader, scan_source


def test_image_folder(lt_folder):
    catalog = scan_source(lt_folder)
    assert catalog.source == {"kind": "folder", "path": str(lt_folder.resolve()), "intensity": "minmax"}
    assert catalog.root == lt_folder.resolve()
    assert catalog.classes == ["big", "mid", "rare"]
    assert catalog.mode == "RGB" and catalog.corrupt == [] and not catalog.presplit
    assert len(catalog.items) == 22
    assert ("rare/003.png", 2, None) in catalog.items
    image = ImageReader(catalog.source, catalog.mode).read("rare/003.png")
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8


def test_presplit_tree_without_val(tmp_path, make_tree):
    make_tree(tmp_path / "d" / "train", {"a": 3, "b": 2})
    make_tree(tmp_path / "d" / "test", {"a": 1, "b": 1})
    catalog = scan_source(tmp_path / "d")
    assert catalog.source["kind"] == "presplit" and catalog.presplit
    assert sorted(catalog.items) == [
        ("test/a/000.png", 0, "test"), ("test/b/000.png", 1, "test"),
        ("train/a/000.png", 0, "train"), ("train/a/001.png", 0, "train"), ("train/a/002.png", 0, "train"),
        ("train/b/000.png", 1, "train"), ("train/b/001.png", 1, "train"),
    ]


def test_test_class_missing_from_train_is_refused(tmp_path, make_tree):
    make_tree(tmp_path / "d" / "train", {"a": 3, "b": 2})
    make_tree(tmp_path / "d" / "test", {"a": 1, "c": 1})
    with pytest.raises(CapaugError, match="class folders not in train: c"):
        scan_source(tmp_path / "d")


def test_grey_npz_is_mode_l_and_reads_hwc(make_npz):
    path = make_npz({"train": [3, 2], "val": [1, 1], "test": [1, 2]}, grey=True)
    catalog = scan_source(path)
    assert catalog.source["kind"] == "npz" and catalog.root is None and catalog.mode == "L"
    assert catalog.classes == ["0", "1"]
    assert ("train/000004", 1, "train") in catalog.items and ("test/000002", 1, "test") in catalog.items
    reader = pickle.loads(pickle.dumps(ImageReader(catalog.source, catalog.mode)))
    image = reader.read("val/000001")
    np.testing.assert_array_equal(image[..., 0], np.load(path)["val_images"][1])
    assert image.shape == (8, 8, 1)


def test_csv_manifest_with_and_without_split(tmp_path, make_images):
    make_images(tmp_path / "img", 6)
    rows = ["path,label", *(f"img/{i:03d}.png,{'cat' if i < 3 else 'dog'}" for i in range(6))]
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    catalog = scan_source(tmp_path / "m.csv")
    assert catalog.classes == ["cat", "dog"] and catalog.root == tmp_path.resolve() and not catalog.presplit
    assert ImageReader(catalog.source, catalog.mode).read("img/005.png").shape == (16, 16, 3)
    split_rows = ["path,label,split", *(f"img/{i:03d}.png,{'cat' if i < 3 else 'dog'},{'test' if i % 3 == 0 else 'train'}" for i in range(6))]
    (tmp_path / "s.csv").write_text("\n".join(split_rows) + "\n")
    assert ("img/003.png", 1, "test") in scan_source(tmp_path / "s.csv").items


def test_csv_without_columns_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(CapaugError, match="needs the columns path,label"):
        scan_source(tmp_path / "m.csv")


def test_builtin_digits_lt():
    catalog = scan_source("builtin:digits-lt")
    train = np.bincount([y for _, y, s in catalog.items if s == "train"])
    test = np.bincount([y for _, y, s in catalog.items if s == "test"])
    assert train[0] == 140 and train[-1] == 7 and list(train) == sorted(train, reverse=True)
    assert len(set(test)) == 1 and catalog.mode == "L"
    image = ImageReader(catalog.source, catalog.mode).read("train/000000")
    assert image.shape == (8, 8, 1) and image.max() > 200


def test_mixed_modes_convert_to_majority_with_warning(tmp_path, make_images):
    make_images(tmp_path / "d" / "a", 3, mode="L")
    make_images(tmp_path / "d" / "b", 2, mode="L")
    make_images(tmp_path / "d" / "c", 2, mode="RGB")
    with pytest.warns(UserWarning, match="mixes 5 grey and 2 RGB images; converting all to L"):
        catalog = scan_source(tmp_path / "d")
    assert catalog.mode == "L"
    assert ImageReader(catalog.source, catalog.mode).read("c/000.png").shape == (16, 16, 1)


def test_corrupt_images_are_listed_and_skipped(tmp_path, make_tree):
    data = make_tree(tmp_path / "d", {"a": 20, "b": 20})
    (data / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.warns(UserWarning, match=r"skipping 1 corrupt, truncated or unreadable image\(s\) in .*: a/broken.png"):
        catalog = scan_source(data)
    assert catalog.corrupt == ["a/broken.png"] and len(catalog.items) == 40


def test_too_many_corrupt_images_is_an_error(tmp_path, make_tree):
    data = make_tree(tmp_path / "d", {"a": 10, "b": 10})
    (data / "a" / "x.jpg").write_bytes(b"")
    (data / "b" / "y.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(CapaugError, match=r"2 of 22 images .* are corrupt, truncated or unreadable \(more than 5%\): a/x.jpg, b/y.png"):
        scan_source(data)


def test_missing_path(tmp_path):
    with pytest.raises(CapaugError, match=r"data path .*nowhere does not exist"):
        scan_source(tmp_path / "nowhere")


def test_folder_without_class_subfolders(tmp_path, make_images):
    make_images(tmp_path / "flat", 3)
    with pytest.raises(CapaugError, match="has no class subfolders"):
        scan_source(tmp_path / "flat")


def test_single_class(tmp_path, make_tree):
    with pytest.raises(CapaugError, match=r"has only one class \('a'\); at least two are needed"):
        scan_source(make_tree(tmp_path / "d", {"a": 3}))


def test_empty_class_folder(tmp_path, make_tree):
    data = make_tree(tmp_path / "d", {"a": 3, "b": 3})
    (data / "empty").mkdir()
    (data / "empty" / "notes.txt").write_text("no images here")
    with pytest.raises(CapaugError, match=r"class folder .*empty has no images"):
        scan_source(data)


def test_npz_without_expected_keys(make_npz):
    path = make_npz({"train": [2, 2], "val": [1, 1], "test": [1, 1]}, drop=("val_images", "val_labels"))
    with pytest.raises(CapaugError, match="lacks the keys val_images, val_labels"):
        scan_source(path)


def test_unknown_builtin():
    with pytest.raises(CapaugError, match="unknown builtin data set 'builtin:cats'"):
        scan_source("builtin:cats")
