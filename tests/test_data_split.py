"""The shared split: stratified and seeded, respected when given, carved when missing, kept in RUN/split.json."""

import json

import pytest

from capaug.augment.config import DataConfig
from capaug.augment.errors import CapaugError
from capaug.augment.sources import scan_source
from capaug.augment.split import load_split, make_split, prepare_split


def test_unsplit_folder_is_split_per_class(lt_folder):
    split = make_split(scan_source(lt_folder), DataConfig())
    assert split.counts("test") == [2, 1, 1]  # round(n * 0.2), at least one
    assert split.counts("val") == [1, 1, 1]
    assert split.counts("train") == [9, 4, 2]
    keys = [k for part in (split.train, split.val, split.test) for k, _ in part]
    assert len(keys) == len(set(keys)) == 22
    assert split.fractions == {"train": 0.7, "val": 0.1, "test": 0.2}


def test_same_seed_same_split_other_seed_other_split(lt_folder):
    catalog = scan_source(lt_folder)
    first, again = make_split(catalog, DataConfig()), make_split(catalog, DataConfig())
    other = make_split(catalog, DataConfig(split_seed=1))
    assert first.hash == again.hash and first.train == again.train
    assert other.hash != first.hash and other.counts() == first.counts()


def test_given_splits_are_respected_and_val_carved_from_train(tmp_path, make_tree):
    make_tree(tmp_path / "d" / "train", {"a": 16, "b": 8})
    make_tree(tmp_path / "d" / "test", {"a": 5, "b": 5})
    split = make_split(scan_source(tmp_path / "d"), DataConfig())
    assert split.counts("test") == [5, 5]
    assert split.counts("val") == [2, 1]  # val_fraction / (1 - test_fraction) = 12.5% of train, at least one
    assert split.counts("train") == [14, 7]
    assert all(k.startswith("train/") for k, _ in split.val)


def test_npz_splits_are_kept_as_given(make_npz):
    split = make_split(scan_source(make_npz({"train": [4, 3], "val": [2, 1], "test": [1, 2]})), DataConfig())
    assert (split.counts("train"), split.counts("val"), split.counts("test")) == ([4, 3], [2, 1], [1, 2])


def test_class_too_small_to_split(tmp_path, make_tree):
    data = make_tree(tmp_path / "d", {"a": 5, "x": 2})
    with pytest.raises(CapaugError, match=r"class 'x' has 2 image\(s\); at least 3 are needed to split 70/10/20"):
        make_split(scan_source(data), DataConfig())


def test_class_too_small_to_carve_val(tmp_path, make_tree):
    make_tree(tmp_path / "d" / "train", {"a": 5, "x": 1})
    make_tree(tmp_path / "d" / "test", {"a": 1, "x": 1})
    with pytest.raises(CapaugError, match=r"class 'x' has 1 training image\(s\); at least 2 are needed to carve val from train"):
        make_split(scan_source(tmp_path / "d"), DataConfig())


def test_prepare_writes_once_and_reuses(lt_folder, tmp_path):
    run = tmp_path / "run"
    made = prepare_split(str(lt_folder), run, DataConfig())
    saved = json.loads((run / "split.json").read_text())
    assert saved["hash"] == made.hash and saved["mode"] == "RGB" and saved["seed"] == 0
    assert saved["source"]["path"] == str(lt_folder.resolve()) and saved["corrupt"] == []
    assert len(saved["train"]) == 15 and saved["train"][0] == [made.train[0][0], made.train[0][1]]
    with pytest.warns(UserWarning, match="keeps its own seed, fractions and intensity rule"):
        reused = prepare_split(str(lt_folder), run, DataConfig(split_seed=7))
    assert reused.hash == made.hash and reused.train == made.train
    assert load_split(run).hash == made.hash and prepare_split(None, run, DataConfig()).hash == made.hash


def test_split_from_other_data_is_refused(lt_folder, tmp_path, make_tree):
    run = tmp_path / "run"
    prepare_split(lt_folder, run, DataConfig())
    other = make_tree(tmp_path / "other", {"a": 5, "b": 5})
    with pytest.raises(CapaugError, match=rf"split.json was made from {lt_folder.resolve()}, not {other.resolve()} \(mismatched split\)"):
        prepare_split(other, run, DataConfig())


def test_run_inside_data_folder_is_refused(lt_folder):
    with pytest.raises(CapaugError, match="is inside the data folder"):
        prepare_split(lt_folder, lt_folder / "run", DataConfig())
    assert not (lt_folder / "run").exists()


def test_edited_split_is_refused(lt_folder, tmp_path):
    run = tmp_path / "run"
    prepare_split(lt_folder, run, DataConfig())
    saved = json.loads((run / "split.json").read_text())
    saved["test"].append(saved["train"].pop())
    (run / "split.json").write_text(json.dumps(saved))
    with pytest.raises(CapaugError, match="was edited: its lists no longer match its hash"):
        load_split(run)


def test_missing_split_without_data(tmp_path):
    with pytest.raises(CapaugError, match="has no split.json"):
        prepare_split(None, tmp_path / "run", DataConfig())


def test_reader_and_stats_from_split(tmp_path):
    split = prepare_split("builtin:digits-lt", tmp_path / "run", DataConfig())
    assert split.reader().read(split.train[0][0]).shape == (8, 8, 1)
    stats = split.stats(DataConfig())
    assert stats.grouping == "thresholds" and stats.imbalance_ratio == 20.0


def test_presplit_classes_without_test_or_val_images_are_named(tmp_path, make_images):
    layout = {"train": {"a": 6, "b": 6, "c": 6}, "val": {"a": 1, "c": 1}, "test": {"a": 2, "b": 2}}
    for seed, (part, name, n) in enumerate((p, c, n) for p, counts in layout.items() for c, n in counts.items()):
        make_images(tmp_path / "d" / part / name, n, seed=seed)
    split = make_split(scan_source(tmp_path / "d"), DataConfig())
    assert split.describe(DataConfig())["missing"] == {"val": ["b"], "test": ["c"]}
    with pytest.warns(UserWarning, match="class\\(es\\) c have no test images: their test results will be missing"):
        prepare_split(tmp_path / "d", tmp_path / "run", DataConfig())
