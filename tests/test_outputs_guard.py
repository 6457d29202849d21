"""Outputs never delete inputs or foreign files: the input guard (symlinks resolved), capaug's marker,
`--overwrite` on capaug's files only, files and read-only places refused up front; one line, exit code 2."""

import json
import os

import pytest

from capaug.augment.io import MARKER
from capaug.cli.app import main

NPZ = {"train": [3, 3], "val": [1, 1], "test": [1, 1]}


def cli(capsys, *args) -> tuple[int, str]:
    """Run `capaug ARGS` in this process: (exit code, stderr)."""
    with pytest.raises(SystemExit) as done:
        main([str(a) for a in args])
    return done.value.code, capsys.readouterr().err


def one_line_error(capsys, *args) -> str:
    code, err = cli(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and "Traceback" not in err and len(lines) == 1, err
    return lines[0]


def snapshot(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


def test_make_lt_never_replaces_the_folder_holding_its_input(capsys, tmp_path, make_tree):
    parent = tmp_path / "parent"
    data = make_tree(parent / "data", {"a": 4, "b": 4})
    (parent / "notes.txt").write_text("mine")
    before = snapshot(parent)
    line = one_line_error(capsys, "data", "make-lt", data, "--ratio", 2, "--out", parent, "--overwrite")
    assert "contains the input" in line
    assert snapshot(parent) == before and (parent / "notes.txt").read_text() == "mine"


def test_from_npz_never_replaces_the_folder_of_its_npz(capsys, tmp_path, make_npz):
    downloads = tmp_path / "dl"
    downloads.mkdir()
    npz = make_npz(NPZ).rename(downloads / "x.npz")
    (downloads / "other.zip").write_bytes(b"PK")
    line = one_line_error(capsys, "data", "from-npz", npz, "--out", downloads, "--overwrite")
    assert "contains the input" in line
    (tmp_path / "link").symlink_to(downloads)  # the same folder through a symlink
    assert "contains the input" in one_line_error(capsys, "data", "from-npz", npz, "--out", tmp_path / "link", "--overwrite")
    assert snapshot(downloads) == ["other.zip", "x.npz"]


def test_overwrite_refuses_a_folder_capaug_did_not_write(capsys, tmp_path, make_npz):
    out = tmp_path / "out"
    out.mkdir()
    (out / "thesis.tex").write_text("mine")
    line = one_line_error(capsys, "data", "from-npz", make_npz(NPZ), "--out", out, "--overwrite")
    assert "was not written by capaug" in line and "never deletes" in line
    assert snapshot(out) == ["thesis.tex"]


def test_overwrite_replaces_capaug_output_but_never_files_added_to_it(capsys, tmp_path, make_npz):
    npz, out = make_npz(NPZ), tmp_path / "out"
    assert cli(capsys, "data", "from-npz", npz, "--out", out)[0] == 0
    marker = json.loads((out / MARKER).read_text())
    assert marker["written_by"] == "capaug data from-npz" and marker["entries"] == ["test", "train", "val"]
    assert "pass --overwrite" in one_line_error(capsys, "data", "from-npz", npz, "--out", out)
    assert cli(capsys, "data", "from-npz", npz, "--out", out, "--overwrite")[0] == 0
    (out / "notes.txt").write_text("mine")
    line = one_line_error(capsys, "data", "from-npz", npz, "--out", out, "--overwrite")
    assert "holds files capaug did not write (notes.txt)" in line
    assert (out / "notes.txt").read_text() == "mine" and (out / "train").is_dir()


def test_a_file_as_output_or_run_folder_is_one_line(capsys, tmp_path, make_npz, lt_folder):
    file = tmp_path / "file.txt"
    file.write_text("x")
    assert "is a file" in one_line_error(capsys, "data", "from-npz", make_npz(NPZ), "--out", file)
    assert "which is a file" in one_line_error(capsys, "data", "from-npz", make_npz(NPZ), "--out", file / "sub")
    assert "is a file" in one_line_error(capsys, "inspect", lt_folder, "--run", file)
    assert "is a file" in one_line_error(capsys, "train", lt_folder, "--run", file)
    assert file.read_text() == "x"


@pytest.fixture
def read_only(tmp_path, monkeypatch):
    """A folder the user may not write (simulated: the tests run as root, for whom chmod changes nothing)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(folder) else real(p, mode, **kw))
    return folder


def test_read_only_places_are_refused_before_any_work(capsys, read_only, lt_folder, make_npz):
    assert "not writable" in one_line_error(capsys, "inspect", lt_folder, "--run", read_only / "run")
    assert "not writable" in one_line_error(capsys, "train", lt_folder, "--run", read_only / "run")
    assert "not writable" in one_line_error(capsys, "data", "from-npz", make_npz(NPZ), "--out", read_only / "tree")
    assert snapshot(read_only) == []


def test_a_run_folder_inside_the_data_is_refused_before_it_is_created(capsys, tmp_path, lt_folder):
    (tmp_path / "alias").symlink_to(lt_folder)
    assert "inside the data folder" in one_line_error(capsys, "train", lt_folder, "--run", tmp_path / "alias" / "run")
    assert not (lt_folder / "run").exists()
