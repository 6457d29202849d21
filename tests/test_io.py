"""Atomic writes: all or nothing, ordinary permissions, and never inside the data folder."""

import os
import stat

import pytest

from capaug.augment.errors import CapaugError
from capaug.augment.io import atomic_dir, ensure_outside, write_text


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
