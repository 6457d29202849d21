"""`capaug run`: train -> synthesize -> downstream -> evaluate in one command; a rerun resumes or skips each stage;
`--json` prints one object on stdout; progress lines in a log; a failing stage is one line and exit 2."""

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from capaug.augment.pipeline import run_pipeline
from capaug.cli.app import main
from capaug.recipes import load_recipe

TINY_TRAIN = {
    "train.steps": 4,
    "train.unet.block_out_channels": [16, 32],
    "train.unet.norm_num_groups": 4,
    "train.batch_size": 16,
    "train.warmup_steps": 0,
    "train.log_every": 1,
    "train.sample_every": 10_000,
    "train.checkpoint_every": 2,
}
TINY_REST = {"synthesize.sampler": "ddim", "synthesize.steps": 2, "downstream.epochs": 1}
SETS = [a for k, v in {**TINY_TRAIN, **TINY_REST}.items() if k != "train.steps"
        for a in ("--set", f"{k}={json.dumps(v)}")]
STAGE_ARGS = ["--steps", "4", "--target", "balanced:20", "--arms", "reweight,synthetic", "--no-tune", "--seeds", "1"]


class Interrupt(Exception):
    pass


def capaug(*args):
    """The command in a fresh process (what a shell pipeline sees)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CAPAUG_PROGRESS_SECONDS": "0"}
    return subprocess.run([sys.executable, "-m", "capaug.cli", *args], capture_output=True, text=True, env=env)


def capaug_here(*args):
    """The command in this process, stdout and stderr captured (no second start-up of torch)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_:
        main(list(args))
    return subprocess.CompletedProcess(args, exit_.value.code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """An interrupted training (checkpoint at step 2 of 4), then `capaug run --json` twice on it."""
    import torch

    run = tmp_path_factory.mktemp("run") / "run"

    def stop_at_step_3(row):
        if row["step"] == 3:
            raise Interrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(Interrupt):
            run_pipeline("builtin:digits-lt", run, load_recipe("quickstart", TINY_TRAIN), on_train=stop_at_step_3)
        assert not (run / "diffusion" / "model").exists() and (run / "diffusion" / "checkpoints" / "step-2").is_dir()
        args = ["run", "builtin:digits-lt", "--run", str(run), *STAGE_ARGS, "--evaluate", "--json", *SETS]
        first = capaug(*args)
        with pytest.MonkeyPatch.context() as env:
            env.setenv("CAPAUG_PROGRESS_SECONDS", "0")
            yield run, first, capaug_here(*args)
    finally:
        torch.set_num_threads(threads)


def test_run_resumes_the_interrupted_training_and_prints_one_json_object(runs):
    run, first, _ = runs
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)  # stdout holds the JSON alone
    assert result["status"] == "complete"
    assert result["stages"] == {"train": "resumed", "synthesize": "ran", "downstream": "ran", "evaluate": "ran"}
    assert re.search(r"train: resuming from step-2 to 4 steps", first.stderr)
    assert result["verdict"]["candidate"] == "synthetic" and result["verdict"]["baseline"] == "reweight"
    assert " ".join(result["verdict"]["text"].split()) in " ".join(first.stderr.split())  # people's summary: stderr
    numbers = result["numbers"]
    assert numbers["train_steps"] == 4 and numbers["classifier_seeds"] == 1
    assert numbers["synthetic_images"] == len(list((run / "synthetic").rglob("*_0*.png"))) > 0
    assert numbers["difference"] == pytest.approx(
        numbers["candidate_balanced_accuracy"] - numbers["baseline_balanced_accuracy"])
    assert numbers["fid"] is not None
    paths = result["paths"]
    for key in ("run", "model", "synthetic", "downstream_metrics", "downstream_report", "eval_metrics"):
        assert os.path.exists(paths[key]), key
    assert json.loads(open(paths["downstream_metrics"]).read())["verdict"]["text"] == result["verdict"]["text"]


def test_rerun_skips_every_stage_and_gives_the_same_verdict(runs):
    run, first, again = runs
    assert again.returncode == 0, again.stderr
    before, after = json.loads(first.stdout), json.loads(again.stdout)
    assert set(after["stages"].values()) == {"skipped"}
    for stage in ("train", "synthesize", "downstream", "evaluate"):
        assert re.search(rf"^{stage}: skipped: ", again.stderr, re.M), stage
    assert after["verdict"] == before["verdict"] and after["numbers"] == before["numbers"]
    assert "train: " not in again.stderr.replace("train: skipped", "")  # no training, no progress lines


def test_progress_lines_appear_in_a_log(runs):
    _, first, _ = runs
    log = first.stderr
    for line in ("train: 2/4 (50%)", "train: 3/4 (75%), loss ", "train: 4/4 (100%)", "classifiers: 2/2 (100%), ",
                 "evaluate: "):
        assert line in log, line
    synthesis = re.findall(r"^synthesize (\d+): (\d+)/(\d+) .*img/s, elapsed", log, re.M)
    assert synthesis and all(done == total for _, done, total in synthesis[1::2])  # first and last per class
    assert re.search(r"^classifiers: 1/2 \(50%\), reweight seed 0: val bal\. acc\. [\d.]+, test [\d.]+, "
                     r"elapsed \d:\d\d:\d\d, eta \d:\d\d:\d\d$", log, re.M)
    assert "━" not in log  # no rich bar in a log


def test_a_failing_stage_is_one_line_exit_2_and_no_json(runs):
    run = runs[0]
    out = capaug_here("run", "builtin:digits-lt", "--run", str(run), *STAGE_ARGS, "--json", *SETS,
                      "--set", "train.method=plain")
    assert out.returncode == 2 and out.stdout == ""
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "does not fit the recipe" in errors[0] and "method (cm -> plain)" in errors[0]
    assert "Traceback" not in out.stderr


def test_version():
    out = capaug("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"capaug {version('capaug')}"


def test_more_steps_resume_the_model_and_remake_what_came_from_it(runs):
    run, first, _ = runs
    before = json.loads(first.stdout)
    out = capaug_here("run", "builtin:digits-lt", "--run", str(run), *STAGE_ARGS, "--json", *SETS, "--steps", "6")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["stages"] == {"train": "resumed", "synthesize": "ran", "downstream": "ran"}
    assert "remaking the set of the earlier model" in out.stderr
    assert result["numbers"]["train_steps"] == 6
    assert result["numbers"]["synthetic_images"] == before["numbers"]["synthetic_images"]
    model_hash = json.loads((run / "diffusion" / "model" / "capaug.json").read_text())["model_hash"]
    rows = (run / "synthetic" / "manifest.csv").read_text().splitlines()[1:]
    assert {row.split(",")[6] for row in rows} == {model_hash}  # every image from the resumed model
