"""The run-folder lock: a second writer gets one line naming the holder; a stale lock is taken over; stages
nest in one process; a run folder is created with capaug's marker."""

import json
import os
import socket
import subprocess
import sys

import pytest

from capaug.augment.errors import CapaugError
from capaug.augment.evaluate import evaluate_run
from capaug.augment.io import MARKER
from capaug.augment.runlock import HOLDER_FILE, LOCK_FILE, run_lock
from capaug.cli.app import main

HOLD = "import sys, time; from filelock import FileLock; FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


def holder_record(run, pid, stage="train"):
    (run / HOLDER_FILE).write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "stage": stage,
                                               "command": "capaug train DATA --run RUN"}))


@pytest.fixture
def held(tmp_path):
    """RUN locked by another live process (as `capaug train` would hold it); yields (run, process)."""
    run = tmp_path / "run"
    run.mkdir()
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(run / LOCK_FILE)], stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    holder_record(run, process.pid)
    yield run, process
    process.kill()
    process.wait()


def test_a_second_writer_is_refused_with_the_holder(held, capsys):
    run, process = held
    with pytest.raises(CapaugError, match=rf"{run} is in use: process {process.pid} on .*\(train: capaug train DATA"):
        with run_lock(run, "synthesize"):
            pass
    with pytest.raises(CapaugError, match="is in use"):
        evaluate_run(run)  # every writing stage's entry point takes the lock first
    with pytest.raises(SystemExit) as done:
        main(["train", "builtin:digits-lt", "--run", str(run)])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert done.value.code == 2 and len(lines) == 1 and "is in use" in lines[0]
    assert json.loads((run / HOLDER_FILE).read_text())["pid"] == process.pid  # the holder's record is untouched


def test_a_stale_lock_is_taken_over_with_a_warning(held):
    run, process = held
    process.kill()
    process.wait()
    with pytest.warns(UserWarning, match=rf"taking over the stale lock of .*process {process.pid} .*ended without releasing"):
        with run_lock(run, "synthesize"):
            assert json.loads((run / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert not (run / HOLDER_FILE).exists()


def test_a_live_holder_is_trusted_when_the_file_lock_is_free(tmp_path):
    """On a file system without working locks the record still keeps a second writer out."""
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        holder_record(run, sleeper.pid)
        with pytest.raises(CapaugError, match=f"process {sleeper.pid}"):
            with run_lock(run, "train"):
                pass
    finally:
        sleeper.kill()
        sleeper.wait()


def test_stages_nest_in_one_process_and_the_run_folder_is_marked(tmp_path):
    run = tmp_path / "new" / "run"
    with run_lock(run, "pipeline"):
        with run_lock(run, "train"):
            assert json.loads((run / HOLDER_FILE).read_text())["stage"] == "pipeline"
        assert (run / HOLDER_FILE).exists()
    assert not (run / HOLDER_FILE).exists()
    assert json.loads((run / MARKER).read_text())["written_by"] == "capaug run folder"
    with run_lock(run, "train"):  # released: the next stage gets it
        pass
