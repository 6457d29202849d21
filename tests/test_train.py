"""The training loop: loss goes down, resume after SIGKILL, NaN stop, determinism, LoRA variant, two processes,
bad settings refused at load, capacity model from wrapped checkpoints."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from capaug.augment.errors import CapaugError
from capaug.augment.pipeline import run_training
from capaug.augment.model_build import build_model
from capaug.recipes import load_recipe

TINY = {
    "train.image_size": 16,
    "train.unet.block_out_channels": [16, 32],
    "train.unet.norm_num_groups": 4,
    "train.unet.attention_levels": [False, True],
    "train.batch_size": 16,
    "train.lr": 2e-3,
    "train.warmup_steps": 0,
    "train.log_every": 1,
    "train.sample_every": 10_000,
    "train.checkpoint_every": 10_000,
}
TINY_ARGS = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]


def tiny(**extra):
    return load_recipe("quickstart", {**TINY, **extra})


def log_steps(run: Path) -> list[int]:
    with open(run / "diffusion" / "train_log.csv") as f:
        return [int(r["step"]) for r in csv.DictReader(f)]


def test_short_run_lowers_loss_and_writes_the_run_folder(tmp_path):
    run = tmp_path / "run"
    result = run_training("builtin:digits-lt", run, tiny(**{"train.steps": 60, "train.sample_every": 60}))
    with open(result.log_path) as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 60
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    d = run / "diffusion"
    for name in ("config.yaml", "model/capaug.json", "model/config.json", "samples/step-60.png",
                 "checkpoints/step-60/state.json"):
        assert (d / name).exists(), name
    from diffusers import UNet2DModel

    UNet2DModel.from_pretrained(d / "model")  # folded: a plain diffusers UNet
    assert json.loads((d / "model" / "capaug.json").read_text())["step"] == 60
    from PIL import Image

    with Image.open(d / "samples" / "step-60.png") as grid:  # 10 classes x 8 samples, 16 px shown at 64 px
        assert grid.size == (1 + 8 * 65, 1 + 10 * 65)


def test_refuses_to_overwrite_a_run_and_resume_needs_a_checkpoint(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(CapaugError, match="nothing to resume"):
        run_training("builtin:digits-lt", run, tiny(**{"train.steps": 2}), resume=True)
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 2}))
    with pytest.raises(CapaugError, match="already holds a training run"):
        run_training("builtin:digits-lt", run, tiny(**{"train.steps": 2}))


def test_same_seed_same_weights(tmp_path):
    a = run_training("builtin:digits-lt", tmp_path / "a", tiny(**{"train.steps": 4}))
    b = run_training("builtin:digits-lt", tmp_path / "b", tiny(**{"train.steps": 4}))
    wa = load_file(a.model_dir / "diffusion_pytorch_model.safetensors")
    wb = load_file(b.model_dir / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_resume_after_sigkill_finishes_with_a_continuous_log(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "capaug.cli", "train", "builtin:digits-lt", "--run", str(run), *TINY_ARGS,
           "--steps", "40", "--checkpoint-every", "10"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while not (run / "diffusion" / "checkpoints" / "step-20").exists():
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "diffusion" / "model").exists()

    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert log_steps(run) == list(range(1, 41))
    assert json.loads((run / "diffusion" / "model" / "capaug.json").read_text())["step"] == 40


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from capaug.augment import objective

    forward = objective.DiffusionObjective.forward
    calls = {"n": 0}

    def poisoned(self, x0, labels):
        out = forward(self, x0, labels)
        calls["n"] += 1
        if calls["n"] == 7:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(objective.DiffusionObjective, "forward", poisoned)
    run = tmp_path / "run"
    with pytest.raises(CapaugError, match=r"loss became nan at step 7.*step-5"):
        run_training("builtin:digits-lt", run, tiny(**{"train.steps": 20, "train.checkpoint_every": 5}))
    checkpoints = sorted(p.name for p in (run / "diffusion" / "checkpoints").iterdir())
    assert checkpoints == ["step-5"]
    assert max(log_steps(run)) == 6


def test_plain_method_has_no_capacity_terms(tmp_path):
    result = run_training("builtin:digits-lt", tmp_path / "p", tiny(**{"train.steps": 2, "train.method": "plain"}))
    with open(result.log_path) as f:
        assert all(float(r["loss_cm"]) == 0 for r in csv.DictReader(f))


def test_lora_variant_keeps_the_pretrained_weights_frozen(tmp_path):
    from diffusers import UNet2DModel

    pretrained = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, block_out_channels=(16, 32),
                             layers_per_block=1, norm_num_groups=4, down_block_types=("DownBlock2D", "DownBlock2D"),
                             up_block_types=("UpBlock2D", "UpBlock2D"))
    pretrained.save_pretrained(tmp_path / "pre")
    run = tmp_path / "run"
    run_training("builtin:digits-lt", run, tiny(**{"train.steps": 3}), from_pretrained=tmp_path / "pre")
    state = load_file(run / "diffusion" / "checkpoints" / "step-3" / "model.safetensors")
    base = pretrained.state_dict()
    assert torch.equal(state["unet.conv_in.weight"], base["conv_in.weight"])
    assert torch.equal(state["unet.time_embedding.linear_1.weight"], base["time_embedding.linear_1.weight"])
    assert any(".general." in k for k in state) and any(".expert." in k for k in state)
    folded = UNet2DModel.from_pretrained(run / "diffusion" / "model")
    assert folded.config.num_class_embeds == 11
    # the pretrained UNet had no class table: the new one trains with the low-rank sets, nothing else does
    unet = build_model(tiny().train, 10, 1, str(tmp_path / "pre"))
    trainable = {name.split(".")[0] for name, p in unet.named_parameters() if p.requires_grad}
    assert "class_embedding" in trainable
    assert all(".general." in n or ".expert." in n or n.startswith("class_embedding")
               for n, p in unet.named_parameters() if p.requires_grad)


def test_two_process_gloo_run_keeps_identical_weights(tmp_path):
    run = tmp_path / "run"
    worker = Path(__file__).with_name("ddp_worker.py")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(worker), str(run)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    fingerprints = [json.loads((run / f"rank-{r}.json").read_text()) for r in range(2)]
    assert fingerprints[0]["world"] == 2 and fingerprints[1]["world"] == 2
    assert fingerprints[0]["weights"] == fingerprints[1]["weights"]
    assert fingerprints[0]["step"] == 4
    # `analyze capacity` reads the checkpoint written under DDP
    from typer.testing import CliRunner

    from capaug.cli.app import app

    out = CliRunner().invoke(app, ["analyze", "capacity", "--run", str(run), "--prune", "0,0.3",
                                   "--images-per-class", "2", "--draws", "1", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "theta_g alone" in out.output


def test_capacity_model_loads_from_compiled_and_ddp_checkpoint_keys(tmp_path):
    from safetensors.torch import save_file

    from capaug.augment.model_io import load_capacity_model

    run = tmp_path / "run"
    result = run_training("builtin:digits-lt", run, tiny(**{"train.steps": 2}))
    path = run / "diffusion" / "checkpoints" / "step-2" / "model.safetensors"
    # torch.compile and DDP name the trained module `_orig_mod` / `module` in what they save
    compiled = torch.compile(torch.nn.Sequential(torch.nn.Linear(1, 1)))
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    save_file({f"module._orig_mod.{k}": v for k, v in load_file(path).items()}, path)
    unet, _, saved = load_capacity_model(run, use_ema=False)
    trained = result.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in unet.state_dict().items())
    assert saved["train"]["method"] == "cm"


@pytest.mark.parametrize("key, value, says", [
    ("train.sample_every", 0, "'train.sample_every': Input should be greater than or equal to 1"),
    ("train.checkpoint_every", 0, "'train.checkpoint_every': Input should be greater than or equal to 1"),
    ("train.log_every", 0, "'train.log_every': Input should be greater than or equal to 1"),
    ("train.num_workers", -1, "'train.num_workers': Input should be greater than or equal to 0"),
    ("train.image_size", 17, "image_size 17 must be divisible by 2"),
])
def test_settings_that_cannot_work_are_refused_when_the_recipe_loads(key, value, says):
    with pytest.raises(CapaugError, match=f"^recipe quickstart: bad value for .*{says}"):
        load_recipe("quickstart", {key: value})


def test_train_cli_refuses_a_zero_interval_before_touching_the_run(tmp_path):
    run = tmp_path / "run"
    done = subprocess.run([sys.executable, "-m", "capaug.cli", "train", "builtin:digits-lt", "--run", str(run),
                           "--sample-every", "0"], capture_output=True, text=True)
    assert done.returncode == 2
    assert "train.sample_every" in done.stderr and "Traceback" not in done.stderr
    assert not run.exists()
