"""Progress of the long stages: rich bars on a terminal, plain lines at a steady interval in a log.

A redirected output (a file, a pipe, a CI log) cannot redraw a bar, so there each task prints one line for its
first item, one every `CAPAUG_PROGRESS_SECONDS` seconds (default 30; 0 = every item) and one for its last.
The stages only call back (augment/ and classifier/ never print); the `on_*` methods turn their callbacks into
progress updates.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable, Optional

from rich.console import Console
from rich.markup import escape

from capaug.augment.errors import CapaugError

from .common import console as human_console

INTERVAL_ENV = "CAPAUG_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0
STAGE_TASKS = {"train": ("train", None), "downstream": ("classifiers", 0), "evaluate": ("evaluate", None)}


def interval_seconds() -> float:
    """Seconds between two plain lines of one task, from `CAPAUG_PROGRESS_SECONDS`."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise CapaugError(f"{INTERVAL_ENV}={raw!r} is not a number of seconds >= 0")
    return value


def clock(seconds: float) -> str:
    """`1:02:03`."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _Task:
    started: float
    first_done: Optional[int] = None  # the count at the first update (a resumed run starts above 0)
    last_line: Optional[float] = None
    rich_id: Optional[int] = None


class Progress:
    """Named tasks, each with a count (`update`) or a message (`message`); a context manager.

    On a terminal: one rich bar per task. Otherwise: `train: 120/750 (16%), loss 0.0412, 64 img/s, elapsed
    0:01:30, eta 0:07:52`-lines, throttled per task. `disable` makes everything silent (non-main processes).
    """

    def __init__(self, console: Optional[Console] = None, *, disable: bool = False,
                 interval: Optional[float] = None, now: Callable[[], float] = time.monotonic):
        self.console = console or human_console
        self.disable = disable
        self.interval = interval_seconds() if interval is None else interval
        self.now = now
        self.tasks: dict[str, _Task] = {}
        self.bars = None  # the rich Progress, started at the first update so an early error stays one line
        self.images_per_s: Optional[float] = None  # the last training log row's speed

    @property
    def plain(self) -> bool:
        return not self.console.is_terminal

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.bars is not None:
            self.bars.stop()
            self.bars = None

    # ------------------------------------------------------------------ generic

    def print(self, text: str) -> None:
        """A line above the bars (or in the log)."""
        if not self.disable:
            self.console.print(text, highlight=False, soft_wrap=True)

    def start(self, name: str, done: Optional[int] = None) -> None:
        """Start task `name`'s clock now (before its first update), at `done` items if known: so `elapsed` and
        the rate cover a first item that takes long (a classifier)."""
        if name not in self.tasks or self.tasks[name].first_done is None:
            self.tasks[name] = _Task(started=self.now(), first_done=done)

    def update(self, name: str, done: int, total: int, info: str = "", unit: Optional[str] = None) -> None:
        """`done` of `total` items of task `name`; `info` is shown beside the count, `unit` adds the rate
        (`3.2 img/s`) measured since the task's first update."""
        if self.disable:
            return
        now = self.now()
        task = self._task(name, now)
        if task.first_done is None:
            task.first_done = done
        elapsed = now - task.started
        rate = (done - task.first_done) / elapsed if elapsed > 0 and done > task.first_done else None
        if unit:
            info = ", ".join(filter(None, [info, f"{rate:.1f} {unit}/s" if rate else f"- {unit}/s"]))
        if not self.plain:
            self._bar(task, name, info, completed=done, total=total)
            return
        if task.last_line is not None and done < total and now - task.last_line < self.interval:
            return
        task.last_line = now
        eta = f", eta {clock((total - done) / rate)}" if rate and done < total else ""
        share = f" ({100 * done / total:.0f}%)" if total else ""
        self._line(f"{name}: {done}/{total}{share}{', ' + info if info else ''}, elapsed {clock(elapsed)}{eta}")

    def message(self, name: str, text: str) -> None:
        """A step of task `name` without a count (evaluate's parts): always one line in a log."""
        if self.disable:
            return
        now = self.now()
        task = self._task(name, now)
        if not self.plain:
            self._bar(task, name, text)
            return
        task.last_line = now
        self._line(f"{name}: {text}, elapsed {clock(now - task.started)}")

    def _task(self, name: str, now: float) -> _Task:
        if name not in self.tasks:
            self.tasks[name] = _Task(started=now)
        return self.tasks[name]

    def _line(self, text: str) -> None:
        self.console.print(text, highlight=False, markup=False, soft_wrap=True)

    def _bar(self, task: _Task, name: str, info: str, **counts) -> None:
        if self.bars is None:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress as Bars, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bars = Bars(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TextColumn("{task.fields[info]}", markup=False), TimeElapsedColumn(),
                             TimeRemainingColumn(), console=self.console)
            self.bars.start()
        if task.rich_id is None:
            task.rich_id = self.bars.add_task(escape(name), total=None, info="")
        self.bars.update(task.rich_id, info=info, **counts)

    # ------------------------------------------------------------------ the stages' callbacks

    def on_stage(self, stage: str, message: str) -> None:
        """`run_pipeline`'s callback: one line per stage decision; it also starts the stage's task clock."""
        self.print(f"[bold]{escape(stage)}:[/] {escape(message)}")
        if stage in STAGE_TASKS:
            self.start(*STAGE_TASKS[stage])

    def on_train(self, row: dict) -> None:
        """`train.train`'s callback: {"step", "total", "loss", ["images_per_s"], ["cm_classes"]}."""
        if "cm_classes" in row:  # sent once before step 1
            from capaug.augment.cm_report import describe

            self.print(describe(row["cm_classes"]))
        if "images_per_s" in row:
            self.images_per_s = row["images_per_s"]
        info = [] if math.isnan(row["loss"]) else [f"loss {row['loss']:.4f}"]
        if self.images_per_s is not None:
            info.append(f"{self.images_per_s:.0f} img/s")
        self.update("train", row["step"], row["total"], ", ".join(info))

    def on_synthesis(self, name: str, done: int, total: int) -> None:
        """`synthesize`'s callback: (class, images done, images this process makes)."""
        self.update(f"synthesize {name}", done, total, unit="img")

    def on_model(self, arm: str, seed: int, info: dict) -> None:
        """`run_downstream`'s callback, after each trained model."""
        self.update("classifiers", info["done"], info["total"], model_line(arm, seed, info))

    def on_eval(self, message: str) -> None:
        """`evaluate_run`'s callback: the part it starts."""
        self.message("evaluate", message)


def model_line(arm: str, seed: int, info: dict) -> str:
    """`ARM seed S: val bal. acc. 0.812, test 0.790`; a tuning-grid model has no test score; `(cached)`: its
    result came from the model cache, nothing was trained."""
    test = f", test {info['balanced_accuracy']:.3f}" if "balanced_accuracy" in info else " (tuning: val only)"
    cached = " (cached)" if info.get("cached") else ""
    return f"{arm} seed {seed}: val bal. acc. {info['val_balanced_accuracy']:.3f}{test}{cached}"
