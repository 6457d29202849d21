"""`capaug inspect` and `capaug data`: tables, JSON for pipelines, one-line errors with exit code 2."""

import json
import subprocess
import sys


def capaug(*args):
    return subprocess.run([sys.executable, "-m", "capaug.cli", *map(str, args)], capture_output=True, text=True)


def one_line_error(out) -> str:
    assert out.returncode == 2 and "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    return lines[0]


def test_inspect_json_shows_counts_groups_and_ratio(lt_folder):
    out = capaug("inspect", lt_folder, "--json")
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [(c["class"], c["train"], c["val"], c["test"]) for c in summary["classes"]] == [
        ("big", 9, 1, 2), ("mid", 4, 1, 1), ("rare", 2, 1, 1)
    ]
    assert summary["imbalance_ratio"] == 4.5 and summary["grouping"] == "terciles"
    assert [c["group"] for c in summary["classes"]] == ["many", "medium", "few"]


def test_inspect_table_and_run_split(lt_folder, tmp_path):
    run = tmp_path / "run"
    made = capaug("inspect", lt_folder, "--run", run)
    assert made.returncode == 0, made.stderr
    assert "imbalance ratio 4.5" in made.stdout and "rare" in made.stdout and "█" in made.stdout
    assert (run / "split.json").is_file()
    again = capaug("inspect", "--run", run, "--json")
    assert json.loads(again.stdout)["split_hash"] == json.loads((run / "split.json").read_text())["hash"]


def test_inspect_errors_are_one_line(tmp_path, lt_folder):
    assert "does not exist" in one_line_error(capaug("inspect", tmp_path / "missing"))
    assert "give DATA, --run RUN, or both" in one_line_error(capaug("inspect"))
    run = tmp_path / "run"
    capaug("inspect", "builtin:digits-lt", "--run", run)
    assert "(mismatched split)" in one_line_error(capaug("inspect", lt_folder, "--run", run))


def test_data_from_npz_and_make_lt(make_npz, tmp_path):
    npz = make_npz({"train": [4, 4, 4], "val": [1, 1, 1], "test": [2, 2, 2]})
    out = capaug("data", "from-npz", npz, "--out", tmp_path / "tree")
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "tree" / "train" / "2").iterdir())) == 4
    lt = capaug("data", "make-lt", tmp_path / "tree", "--ratio", 4, "--out", tmp_path / "lt")
    assert lt.returncode == 0, lt.stderr
    assert [len(list((tmp_path / "lt" / "train" / k).iterdir())) for k in "012"] == [4, 2, 1]
    assert "inside the data folder" in one_line_error(
        capaug("data", "make-lt", tmp_path / "tree", "--ratio", 4, "--out", tmp_path / "tree" / "x")
    )


def test_make_lt_max_per_class(tmp_path, make_tree):
    data = make_tree(tmp_path / "bal", {"a": 8, "b": 8, "c": 8})
    lt = capaug("data", "make-lt", data, "--ratio", 4, "--max-per-class", 6, "--out", tmp_path / "lt")
    assert lt.returncode == 0, lt.stderr
    assert [len(list((tmp_path / "lt" / k).iterdir())) for k in "abc"] == [6, 3, 1]
    assert "class 'a', which has 8; give a smaller --max-per-class" in one_line_error(
        capaug("data", "make-lt", data, "--ratio", 4, "--max-per-class", 9, "--out", tmp_path / "lt9"))
    assert not (tmp_path / "lt9").exists()
