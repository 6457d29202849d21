"""Atomic writes: all or nothing, ordinary permissions, and never inside the data folder."""

import os
import stat

import pytest

from capaug.augment.errors import CapaugError
from capaug.augment.io import MARKER, atomic_dir, ensure_outside, write_text


def test_failed_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    write_text(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_text("partial")
            raise RuntimeError
    assert target.read_text() == "old" and not (tmp_path / "d").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary left behind


def test_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with atomic_dir(tmp_path / "d") as d:
            (d / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE((tmp_path / "a.txt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755


def test_output_inside_the_data_folder_is_refused(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    with pytest.raises(CapaugError, match="inside the data folder"):
        ensure_outside(data / "run", data)
    ensure_outside(tmp_path / "run", data)


def test_full_disk_is_one_line_and_keeps_the_previous_file(tmp_path, monkeypatch):
    import errno
    import pathlib

    target = tmp_path / "plan.json"
    write_text(target, "old")

    def full(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", full)
    with pytest.raises(CapaugError, match=r"disk full while writing .*plan.json: the previous plan.json is intact"):
        write_text(target, "new")
    with pytest.raises(CapaugError, match=r"disk full while writing .*d: nothing was written"):
        with atomic_dir(tmp_path / "d") as d:
            (d / "x").write_bytes(b"data")
    monkeypatch.undo()
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


def test_output_checks_resolve_symlinks_and_both_directions(tmp_path):
    from capaug.augment.io import check_output

    data = tmp_path / "data"
    (data / "a").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(data)
    with pytest.raises(CapaugError, match="inside the data folder"):
        check_output(tmp_path / "alias" / "out", [data])
    with pytest.raises(CapaugError, match="contains the input"):
        check_output(tmp_path, [tmp_path / "alias"])
    assert check_output(tmp_path / "out", [data, None, "builtin:digits-lt"]) == tmp_path / "out"


def test_a_model_folder_from_before_markers_is_replaced_but_foreign_files_are_not(tmp_path):
    """Resuming a run written by an older capaug must not fail at the final model save."""
    old = tmp_path / "model"
    old.mkdir()
    for name in ("capaug.json", "config.json", "diffusion_pytorch_model.safetensors"):
        (old / name).write_text("old")
    with atomic_dir(old, "train") as tmp:
        (tmp / "capaug.json").write_text("new")
    assert (old / "capaug.json").read_text() == "new"

    (old / "notes.txt").write_text("mine")
    (old / MARKER).unlink()
    with pytest.raises(CapaugError, match="notes.txt"):
        with atomic_dir(old, "train") as tmp:
            pass
    assert (old / "notes.txt").read_text() == "mine"
