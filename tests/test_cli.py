"""The CLI shell: help works, user errors are one line with exit code 2 and no traceback."""

import subprocess
import sys


def capaug(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "capaug.cli", *args], capture_output=True, text=True, cwd=cwd)


def test_help_lists_commands():
    out = capaug("--help")
    assert out.returncode == 0
    for command in ("train", "recipes"):
        assert command in out.stdout


def test_recipes_lists_shipped_presets():
    out = capaug("recipes")
    assert out.returncode == 0 and "quickstart" in out.stdout and "retinamnist" in out.stdout


def test_user_error_is_one_line_exit_2(tmp_path):
    out = capaug("train", "builtin:digits-lt", "--run", str(tmp_path / "r"), "--set", "train.nope=1")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown key 'train.nope'" in lines[0]


def test_usage_error_exit_2():
    out = capaug("train", "--no-such-option")
    assert out.returncode == 2 and "Traceback" not in out.stderr
