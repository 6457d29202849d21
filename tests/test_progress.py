"""cli/progress.py: plain throttled lines in a log (first, every interval, last), rich bars on a terminal."""

import io
import re

import pytest
from rich.console import Console

from capaug.augment.errors import CapaugError
from capaug.cli.progress import INTERVAL_ENV, Progress, interval_seconds


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def plain(interval: float, clock: Clock):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=40)  # narrower than a line: lines must not wrap
    return Progress(console, interval=interval, now=clock), out


def test_a_log_gets_the_first_line_one_per_interval_and_the_last(tmp_path):
    clock = Clock()
    progress, out = plain(30, clock)
    with progress:
        for step in range(0, 101):  # one step a second
            clock.t = float(step)
            progress.update("train", step, 100, f"loss {1 / (step + 1):.4f}")
    lines = out.getvalue().splitlines()
    assert [re.match(r"train: (\d+)/100", line).group(1) for line in lines] == ["0", "30", "60", "90", "100"]
    assert lines[1] == "train: 30/100 (30%), loss 0.0323, elapsed 0:00:30, eta 0:01:10"
    assert lines[-1].endswith("elapsed 0:01:40")  # no eta once done


def test_interval_zero_prints_every_update_and_each_task_is_throttled_alone():
    clock = Clock()
    progress, out = plain(0, clock)
    for done in range(4):
        clock.t += 1
        progress.update("synthesize rare", done, 3, unit="img")
    assert len(out.getvalue().splitlines()) == 4
    progress, out = plain(30, clock)
    progress.update("synthesize a", 0, 10, unit="img")
    progress.update("synthesize b", 0, 5, unit="img")
    clock.t += 2
    progress.update("synthesize a", 4, 10, unit="img")  # within the interval: silent
    progress.update("synthesize b", 5, 5, unit="img")  # the last item: always
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines] == ["synthesize a", "synthesize b", "synthesize b"]
    assert "2.5 img/s" in lines[-1]


def test_messages_and_callbacks_read_as_lines():
    clock = Clock()
    progress, out = plain(30, clock)
    progress.on_eval("fid, kid, precision/recall")
    progress.on_stage("downstream", "6 models planned")  # starts the classifiers' clock at 0 models
    clock.t = 10
    progress.on_model("synthetic+la[w=0.5]", 1, {"done": 2, "total": 6, "val_balanced_accuracy": 0.81234,
                                                  "balanced_accuracy": 0.7901})
    clock.t = 40  # 30 s after the last line
    progress.on_model("synthetic", 0, {"done": 3, "total": 6, "val_balanced_accuracy": 0.5})
    progress.on_train({"step": 3, "total": 10, "loss": 0.25, "images_per_s": 63.7})
    lines = out.getvalue().splitlines()
    assert lines[:2] == ["evaluate: fid, kid, precision/recall, elapsed 0:00:00", "downstream: 6 models planned"]
    assert lines[2] == ("classifiers: 2/6 (33%), synthetic+la[w=0.5] seed 1: val bal. acc. 0.812, test 0.790, "
                        "elapsed 0:00:10, eta 0:00:20")
    assert lines[3] == ("classifiers: 3/6 (50%), synthetic seed 0: val bal. acc. 0.500 (tuning: val only), "
                        "elapsed 0:00:40, eta 0:00:40")
    assert lines[4].startswith("train: 3/10 (30%), loss 0.2500, 64 img/s")


def test_a_terminal_gets_bars_and_disable_gets_nothing():
    out = io.StringIO()
    progress = Progress(Console(file=out, force_terminal=True, width=100), interval=0)
    with progress:
        for step in range(3):
            progress.update("train", step, 2)
    shown = out.getvalue()
    assert "━" in shown and "2/2" in shown and "elapsed" not in shown
    out = io.StringIO()
    with Progress(Console(file=out, force_terminal=False), disable=True, interval=0) as progress:
        progress.update("train", 1, 2)
        progress.print("a line")
    assert out.getvalue() == ""


def test_the_interval_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert interval_seconds() == 30
    monkeypatch.setenv(INTERVAL_ENV, "0")
    assert interval_seconds() == 0
    for bad in ("soon", "-1", "nan"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(CapaugError, match=INTERVAL_ENV):
            interval_seconds()
