"""DESIGN.md's bad-input list, one case each, through the real CLI entry point: one line on stderr, exit code 2,
no traceback, and nothing written where it must not be. Other tests cover each case's details; this file is the
contract's checklist."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from capaug.cli.app import main
from conftest import write_images, write_tree


def run_cli(capsys, *args) -> str:
    """Run `capaug ARGS` in-process; return its one stderr line after checking exit code 2 and no traceback."""
    with pytest.raises(SystemExit) as ended:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert ended.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return write_tree(tmp_path / "data", {"big": 12, "mid": 6, "rare": 5})


def test_missing_path(capsys, tmp_path):
    assert "does not exist" in run_cli(capsys, "inspect", tmp_path / "missing")


def test_no_classes(capsys, tmp_path):
    write_images(tmp_path / "flat", 6)
    assert "class" in run_cli(capsys, "inspect", tmp_path / "flat")


def test_a_single_class(capsys, tmp_path):
    write_tree(tmp_path / "one", {"only": 8})
    assert "class" in run_cli(capsys, "inspect", tmp_path / "one")


def test_an_empty_class_folder(capsys, data):
    (data / "empty").mkdir()
    assert "empty" in run_cli(capsys, "inspect", data)


def test_a_class_too_small_to_split(capsys, data):
    write_images(data / "tiny", 1, seed=9)
    assert "tiny" in run_cli(capsys, "inspect", data)


def test_corrupt_images_are_listed(capsys, data):
    for i in range(3):
        (data / "big" / f"broken{i}.png").write_bytes(b"not a png")
    jpeg = data / "mid" / "cut.jpg"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:-40])  # truncated: a header-only check would accept it
    line = run_cli(capsys, "inspect", data)
    assert "broken0.png" in line and "cut.jpg" in line


def test_an_output_path_inside_the_data_folder(capsys, data):
    assert "inside the data folder" in run_cli(capsys, "train", data, "--run", data / "run")
    assert not (data / "run").exists()


def test_an_unknown_recipe_key(capsys, data, tmp_path):
    assert "train.nope" in run_cli(capsys, "train", data, "--run", tmp_path / "r", "--set", "train.nope=1")


def test_a_mismatched_split(capsys, data, tmp_path):
    other = write_tree(tmp_path / "other", {"a": 8, "b": 8})
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as ended:
        main(["inspect", str(data), "--run", str(run)])
    assert ended.value.code == 0
    capsys.readouterr()
    assert "mismatched split" in run_cli(capsys, "inspect", other, "--run", run)


def test_an_empty_label(capsys, data, tmp_path):
    rows = ["path,label", *(f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(data.rglob("*.png")))]
    rows[3] = rows[3].rsplit(",", 1)[0] + ","
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert "line" in run_cli(capsys, "inspect", tmp_path / "labels.csv")


def test_a_non_integer_label(capsys, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", 12), ("val", 3), ("test", 3)):
        arrays[f"{part}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(n) % 3).astype(float)[:, None]
    arrays["train_labels"][1] = 0.5
    np.savez(tmp_path / "x.npz", **arrays)
    assert "0.5" in run_cli(capsys, "inspect", tmp_path / "x.npz")


def test_an_output_that_is_a_file(capsys, data, tmp_path):
    (tmp_path / "run").write_text("my notes")
    assert "is a file" in run_cli(capsys, "train", data, "--run", tmp_path / "run")
    assert (tmp_path / "run").read_text() == "my notes"


def test_an_output_that_is_not_writable(capsys, data, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(locked)) else real_access(p, mode, **kw))
    assert "not writable" in run_cli(capsys, "inspect", data, "--run", locked / "run")


def test_a_full_disk(capsys, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {f"{p}_images": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8) for p in ("train", "val", "test")}
    arrays.update({f"{p}_labels": (np.arange(6) % 2)[:, None] for p in ("train", "val", "test")})
    np.savez(tmp_path / "x.npz", **arrays)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", no_space)
    assert "space" in run_cli(capsys, "data", "from-npz", tmp_path / "x.npz", "--out", tmp_path / "tree").lower()
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("option", [["--sample-every", "0"], ["--checkpoint-every", "0"], ["--image-size", "17"]])
def test_settings_that_cannot_work_are_refused_before_the_run_starts(capsys, data, tmp_path, option):
    line = run_cli(capsys, "train", data, "--run", tmp_path / "r", *option)
    assert option[0].lstrip("-").replace("-", "_") in line
    assert not (tmp_path / "r" / "diffusion").exists()
