"""One writer per run folder: every writing stage holds `RUN/.capaug.lock` (a `filelock.FileLock`).

The lock is an OS file lock, so it ends with its process however that process ends; `RUN/.capaug.lock.json`
records the holder (pid, host, command, stage) for the line a second writer gets. A holder record left behind
by a process that is gone is a stale lock: the next writer takes over with a warning. Stages nest in one
process (`run_pipeline` holds the lock while it calls `run_training`, `synthesize`, `run_downstream`), and
under `accelerate launch` only the main process takes it.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import sys
import warnings
from pathlib import Path
from typing import Callable, Iterator

from filelock import FileLock, Timeout

from .errors import CapaugError
from .io import OWN_PREFIX, check_output, ensure_outside, mark_output, write_json

LOCK_FILE = f"{OWN_PREFIX}.lock"
HOLDER_FILE = f"{OWN_PREFIX}.lock.json"
RUN_FILE = "split.json"  # a folder holding it is a run folder; its stage outputs (RUN/synthetic) lock the run

_held: dict[Path, int] = {}  # run folders this process holds -> nesting depth


def run_folder_of(output: str | os.PathLike) -> Path:
    """The folder to lock for a stage writing `output`: its run folder when it is one of the run's outputs
    (`RUN/synthetic`), else `output` itself (`synthesize --out DIR` outside a run)."""
    output = Path(output)
    return output.parent if (output.parent / RUN_FILE).is_file() else output


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, stage: str, data: str | os.PathLike | None = None) -> Iterator[None]:
    """Hold `run_dir`'s lock for `stage`; refuse with one line while another live process holds it.

    Also the place where a run folder is checked (not a file, writable, not inside the `data` the stage reads)
    and created with capaug's marker.
    """
    from .devices import process_state

    run_dir = check_output(run_dir)
    ensure_outside(run_dir, data)
    key = run_dir.resolve()
    if key in _held or not process_state().is_main_process:
        _held[key] = _held.get(key, 0) + 1
        try:
            yield
        finally:
            _release_depth(key)
        return
    new = not run_dir.is_dir() or not any(run_dir.iterdir())
    run_dir.mkdir(parents=True, exist_ok=True)
    if new:
        mark_output(run_dir, "run folder")
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise _in_use(run_dir, _holder(run_dir)) from None
    try:
        before = _holder(run_dir)
        if _alive_elsewhere(before):  # the file lock did not hold (a file system without locks): trust the record
            raise _in_use(run_dir, before)
        if before:
            warnings.warn(f"taking over the stale lock of {run_dir}: {_describe(before)} ended without releasing it",
                          stacklevel=3)
        write_json(run_dir / HOLDER_FILE, {"pid": os.getpid(), "host": socket.gethostname(), "stage": stage,
                                           "command": " ".join(sys.argv)})
        _held[key] = 1
        try:
            yield
        finally:
            _release_depth(key)
            (run_dir / HOLDER_FILE).unlink(missing_ok=True)
    finally:
        lock.release()


def locks_run(stage: str, folder: Callable[[dict], str | os.PathLike] = lambda args: args["run_dir"],
              data: Callable[[dict], str | os.PathLike | None] = lambda args: None):
    """Decorator: run the function under `run_lock(folder(arguments), stage, data(arguments))`; `folder` and
    `data` pick the run folder and the input data from the call's arguments by name (default: `run_dir`)."""

    def decorate(function):
        signature = inspect.signature(function)

        @functools.wraps(function)
        def locked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            with run_lock(folder(bound.arguments), stage, data(bound.arguments)):
                return function(*args, **kwargs)

        return locked

    return decorate


def _release_depth(key: Path) -> None:
    _held[key] -= 1
    if not _held[key]:
        del _held[key]


def _holder(run_dir: Path) -> dict:
    try:
        holder = json.loads((run_dir / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _alive_elsewhere(holder: dict) -> bool:
    """Whether the record names another process that is still running on this host."""
    pid = holder.get("pid")
    if holder.get("host") != socket.gethostname() or not isinstance(pid, int) or pid in (os.getpid(), 0):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def _in_use(run_dir: Path, holder: dict) -> CapaugError:
    gone = "" if not holder or _alive_elsewhere(holder) or holder.get("host") != socket.gethostname() else (
        " (that process has ended; one it started may still hold the lock)")
    return CapaugError(f"{run_dir} is in use: {_describe(holder)} holds {run_dir / LOCK_FILE}{gone}; "
                       "wait for it to finish or use another run folder")


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"process {holder.get('pid')} on {holder.get('host')} ({holder.get('stage')}: "
            f"{holder.get('command') or 'unknown command'})")
