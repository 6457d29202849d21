"""Exact pixel duplicates are found when the split is made: a test image equal to a training image stops `train`
before step 1 with the remedy; `data.duplicates=drop-eval` drops it from evaluation, recorded in split.json."""

import json
import subprocess
import sys

import numpy as np
import pytest

from capaug.augment.config import DataConfig
from capaug.augment.errors import CapaugError
from capaug.augment.sources import scan_source
from capaug.augment.split import load_split, make_split, prepare_split
from capaug.classifier.data import leakage_guard


def capaug(*args):
    return subprocess.run([sys.executable, "-m", "capaug.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture
def leaky_npz(tmp_path):
    """test 0 (class 0) has the pixels of train 3 (class 1), val 1 those of train 0; like BreastMNIST's test set."""
    rng = np.random.default_rng(0)
    arrays = {f"{part}_images": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8) for part, n in (("train", 6), ("val", 2), ("test", 4))}
    arrays["test_images"][0] = arrays["train_images"][3]
    arrays["val_images"][1] = arrays["train_images"][0]
    labels = {"train": [0, 0, 0, 1, 1, 1], "val": [0, 1], "test": [0, 0, 1, 1]}
    path = tmp_path / "leaky.npz"
    np.savez(path, **arrays, **{f"{part}_labels": np.array(y)[:, None] for part, y in labels.items()})
    return path


def test_duplicates_are_found_and_described(leaky_npz):
    split = make_split(scan_source(leaky_npz), DataConfig())
    report = split.describe(DataConfig())["duplicates"]
    assert report["test_in_train"] == [["test/000000", "train/000003"]]
    assert report["val_in_train"] == [["val/000001", "train/000000"]]
    assert report["across_classes"] == [["test/000000", "train/000003"], ["train/000000", "val/000001"]]
    findings = split.findings()
    assert any("1 test image(s) have the same pixels as a training image, e.g. test/000000 = train/000003" in f for f in findings)
    assert any("1 val image(s) have the same pixels" in f for f in findings)


def test_train_stops_before_step_1_with_the_remedy(leaky_npz, tmp_path):
    with pytest.raises(CapaugError, match=r"1 test image\(s\) .* remove them from the data, or pass --set data.duplicates=drop-eval"):
        prepare_split(leaky_npz, tmp_path / "run", DataConfig())
    out = capaug("train", leaky_npz, "--run", tmp_path / "run2", "--steps", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "data.duplicates=drop-eval" in out.stderr and not (tmp_path / "run2" / "diffusion").exists()


def test_drop_eval_records_the_dropped_images_and_passes_the_leakage_guard(leaky_npz, tmp_path):
    with pytest.warns(UserWarning, match="2 val/test image\\(s\\) are left out of evaluation"):
        split = prepare_split(leaky_npz, tmp_path / "run", DataConfig(duplicates="drop-eval"))
    saved = json.loads((tmp_path / "run" / "split.json").read_text())
    assert saved["dropped"] == [
        {"key": "val/000001", "part": "val", "class": "1", "reason": "same pixels as training image train/000000"},
        {"key": "test/000000", "part": "test", "class": "0", "reason": "same pixels as training image train/000003"},
    ]
    loaded = load_split(tmp_path / "run")
    assert loaded.hash == split.hash and loaded.counts("test") == [1, 2] and loaded.counts("val") == [1, 0]
    assert "test/000000" not in dict(loaded.test) and loaded.describe(DataConfig())["dropped"] == saved["dropped"]
    leakage_guard(loaded.reader(), [k for k, _ in loaded.train], [k for k, _ in loaded.test])  # accepted
    assert loaded.missing() == {"val": ["1"], "test": []}


def test_drop_eval_applies_to_a_split_inspect_already_wrote(leaky_npz, tmp_path):
    out = capaug("inspect", leaky_npz, "--run", tmp_path / "run")
    assert out.returncode == 0, out.stderr
    assert "test: test/000000 = train: train/000003" in out.stdout and "drop-eval" in out.stdout
    before = load_split(tmp_path / "run")
    with pytest.warns(UserWarning, match="the split hash changes"):
        after = prepare_split(None, tmp_path / "run", DataConfig(duplicates="drop-eval"))
    assert after.hash != before.hash and after.train == before.train and len(after.dropped) == 2
    assert load_split(tmp_path / "run").hash == after.hash


def test_identical_training_images_of_two_classes_are_a_warning(tmp_path, make_tree):
    data = make_tree(tmp_path / "d", {"a": 10, "b": 10})
    (data / "b" / "copy.png").write_bytes((data / "a" / "000.png").read_bytes())
    (data / "a" / "twin.png").write_bytes((data / "a" / "001.png").read_bytes())
    split = make_split(scan_source(data), DataConfig(split_seed=3))
    groups = split.describe(DataConfig())["duplicates"]
    assert ["a/000.png", "b/copy.png"] in groups["across_classes"]
    assert any("group(s) of identical images carry different classes" in f for f in split.findings())
    assert split.duplicates == [["a/000.png", "b/copy.png"], ["a/001.png", "a/twin.png"]]


def test_split_json_from_before_duplicates_is_checked(leaky_npz, tmp_path):
    prepare_split(leaky_npz, tmp_path / "run", DataConfig(), check=False)
    path = tmp_path / "run" / "split.json"
    saved = json.loads(path.read_text())
    del saved["duplicates"], saved["dropped"]
    path.write_text(json.dumps(saved))
    assert load_split(tmp_path / "run").duplicates is None
    with pytest.raises(CapaugError, match="1 test image\\(s\\) have the same pixels"):
        prepare_split(None, tmp_path / "run", DataConfig())
