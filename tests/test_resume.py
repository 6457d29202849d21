"""`--resume`: bitwise equal to an uninterrupted run, refused and accepted changes, config history, lower lr after
a NaN, a full disk during a checkpoint, orphaned temporary checkpoints, Ctrl-C."""

import errno
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from capaug.augment.errors import CapaugError
from capaug.augment.pipeline import resumed_recipe, run_training
from capaug.recipes import load_recipe

TINY = {
    "train.image_size": 16,
    "train.unet.block_out_channels": [16, 32],
    "train.unet.norm_num_groups": 4,
    "train.batch_size": 16,
    "train.lr": 2e-3,
    "train.warmup_steps": 2,
    "train.log_every": 1,
    "train.sample_every": 10_000,
    "train.checkpoint_every": 3,
}


def tiny(**extra):
    return load_recipe("quickstart", {**TINY, **extra})


class Killed(Exception):
    pass


def kill_after(step):
    def callback(row):
        if row["step"] == step:
            raise Killed

    return callback


def weights(run):
    return load_file(run / "diffusion" / "model" / "diffusion_pytorch_model.safetensors")


def history(run):
    return yaml.safe_load((run / "diffusion" / "config_history.yaml").read_text())


def test_killed_and_resumed_run_is_bitwise_the_uninterrupted_one(tmp_path):
    # dropout, hflip, warm-up, gradient accumulation and the EMA all carry state across the checkpoint
    recipe = tiny(**{"train.steps": 7, "train.unet.dropout": 0.1, "train.hflip": True, "train.grad_accum": 2})
    straight = run_training("builtin:digits-lt", tmp_path / "a", recipe)
    with pytest.raises(Killed):
        run_training("builtin:digits-lt", tmp_path / "b", recipe, callback=kill_after(5))
    resumed = run_training("builtin:digits-lt", tmp_path / "b", recipe, resume=True)
    assert resumed.step == straight.step == 7
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)  # EMA weights
    trained = straight.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in resumed.unet.state_dict().items())
    assert [e["event"] for e in history(tmp_path / "b")] == ["start", "resume"]


def test_resume_refuses_changes_that_make_another_experiment(tmp_path):
    run = tmp_path / "run"
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 3}))
    changed = tiny(**{"train.steps": 3, "train.method": "plain", "train.batch_size": 8, "train.seed": 1,
                      "train.unet.block_out_channels": [16, 16]})
    with pytest.raises(CapaugError) as err:
        run_training("builtin:digits-lt", run, changed, resume=True)
    message = str(err.value)
    assert "\n" not in message
    for name in ("method (cm -> plain)", "batch_size (16 -> 8)", "seed", "unet.block_out_channels"):
        assert name in message
    with pytest.raises(CapaugError, match="below the last checkpoint's step 3"):
        run_training("builtin:digits-lt", run, tiny(**{"train.steps": 2}), resume=True)
    assert [e["event"] for e in history(run)] == ["start"]  # nothing was recorded by the refused resumes


def test_a_run_without_data_resumes_on_its_own_split_whatever_the_recipes_dataset(tmp_path, lt_folder):
    run = tmp_path / "run"
    with pytest.raises(Killed):
        run_training(str(lt_folder), run, tiny(**{"train.steps": 5}), callback=kill_after(4))
    assert tiny().dataset == "builtin:digits-lt"  # the recipe names another dataset: it must not be used
    assert run_training(None, run, tiny(**{"train.steps": 5}), resume=True).step == 5
    with pytest.raises(CapaugError, match="mismatched split"):  # a dataset given explicitly is still checked
        run_training("builtin:digits-lt", run, tiny(**{"train.steps": 6}), resume=True)


def test_resumed_recipe_is_the_run_settings_plus_the_given_overrides(tmp_path):
    run = tmp_path / "run"
    assert resumed_recipe(run, {}) is None
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 2, "train.rho": 0.2}))
    recipe = resumed_recipe(run, {"train.lr": 1e-4, "train.steps": 4})
    assert (recipe.train.rho, recipe.train.lr, recipe.train.steps) == (0.2, 1e-4, 4)
    assert recipe.train.unet.block_out_channels == [16, 32]


def test_lower_lr_after_a_nan_takes_effect_and_is_recorded(tmp_path, monkeypatch):
    adamw_step = torch.optim.AdamW.step

    def diverges_late_at_high_lr(self, *args, **kwargs):  # weights blow up from optimizer step 4 on at lr > 1e-3
        out = adamw_step(self, *args, **kwargs)
        params = self.param_groups[0]["params"]
        if self.param_groups[0]["lr"] > 1e-3 and int(self.state[params[0]]["step"]) >= 4:
            for p in params:
                p.data.fill_(float("inf"))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", diverges_late_at_high_lr)
    run = tmp_path / "run"
    recipe = tiny(**{"train.steps": 6, "train.warmup_steps": 0, "train.lr": 5e-3})
    nan_stop = r"loss became nan at step 5; the last good checkpoint is .*step-3 \(resume from it with a lower --lr\)"
    with pytest.raises(CapaugError, match=nan_stop):
        run_training("builtin:digits-lt", run, recipe)
    rows = []
    lower = tiny(**{"train.steps": 6, "train.warmup_steps": 0, "train.lr": 1e-4})
    result = run_training("builtin:digits-lt", run, lower, resume=True, callback=rows.append)
    assert result.step == 6 and [r["lr"] for r in rows if "lr" in r] == [1e-4, 1e-4, 1e-4]
    entries = history(run)
    assert [(e["event"], e["step"]) for e in entries] == [("start", 0), ("resume", 3)]
    assert entries[1]["changes"] == {"lr": {"from": 5e-3, "to": 1e-4}}
    assert yaml.safe_load((run / "diffusion" / "config.yaml").read_text())["train"]["lr"] == 1e-4


def test_lr_change_reaches_the_optimizer(tmp_path):
    run = tmp_path / "run"
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 3, "train.warmup_steps": 0}))
    rows = []
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 4, "train.warmup_steps": 0, "train.lr": 5e-4}),
                 resume=True, callback=rows.append)
    assert [r["lr"] for r in rows if "lr" in r] == [5e-4]


def test_full_disk_during_a_checkpoint_keeps_the_last_good_one(tmp_path, monkeypatch):
    from accelerate import Accelerator

    save_state = Accelerator.save_state

    def disk_fills_at_step_6(self, output_dir, **kwargs):
        if output_dir.endswith("step-6"):
            with open(os.path.join(output_dir, "model.safetensors"), "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", disk_fills_at_step_6)
    run = tmp_path / "run"
    with pytest.raises(CapaugError, match=r"could not write the checkpoint of step 6 \(No space left on device\); "
                                          r"the last good checkpoint is .*step-3"):
        run_training("builtin:digits-lt", run, tiny(**{"train.steps": 8}))
    folder = run / "diffusion" / "checkpoints"
    assert sorted(p.name for p in folder.iterdir()) == ["step-3"]


def test_an_orphaned_temporary_checkpoint_is_cleaned_by_the_next_run(tmp_path):
    run = tmp_path / "run"
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 3}))
    orphan = run / "diffusion" / "checkpoints" / ".tmp-step-5"
    orphan.mkdir()
    (orphan / "model.safetensors").write_bytes(b"half")
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 4}), resume=True)
    assert sorted(p.name for p in (run / "diffusion" / "checkpoints").iterdir()) == ["step-3", "step-4"]


def test_ctrl_c_says_where_the_last_checkpoint_is_and_exits_130(tmp_path):
    run = tmp_path / "run"
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    cmd = [sys.executable, "-m", "capaug.cli", "train", "builtin:digits-lt", "--run", str(run), *sets,
           "--steps", "10000", "--checkpoint-every", "2"]
    # PYTHONFAULTHANDLER: if it ever hangs after Ctrl-C, SIGABRT makes it print every thread's stack
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    deadline = time.time() + 240
    while not (run / "diffusion" / "checkpoints" / "step-2").exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)
        out, err = proc.communicate()
        pytest.fail(f"still running 300 s after Ctrl-C; its stacks:\n{err[-6000:]}")
    assert proc.returncode == 130, err
    assert "interrupted: the last checkpoint is" in " ".join(err.split())
    assert f"capaug train --run {run} --resume" in err.replace("\n", "")
    assert "Traceback" not in err
