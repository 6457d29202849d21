"""bench/scaling.py: staged training is one run (bitwise), the curve end to end on digits, extended by a rerun."""

import csv
import json
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from capaug.augment.pipeline import run_training
from capaug.recipes import load_recipe
from conftest import load_bench_script

TINY = ["train.image_size=16", "train.unet.block_out_channels=[16, 32]", "train.unet.norm_num_groups=4",
        "train.batch_size=16", "train.warmup_steps=0", "train.log_every=1", "train.sample_every=1000",
        "train.checkpoint_every=1000", "synthesize.steps=2", "downstream.epochs=1", "downstream.seeds=1",
        "downstream.model=resnet10t", "downstream.image_size=16", "downstream.tune_grid=[synthetic, synthetic+la]"]


@pytest.fixture(scope="module")
def scaling():
    return load_bench_script("scaling")


def test_stages_are_increasing_step_counts(scaling):
    assert scaling.parse_stages("250,500,1000") == [250, 500, 1000]
    for bad in ("500,250", "0,10", "10,10", "ten", ""):
        with pytest.raises(ValueError):
            scaling.parse_stages(bad)


def test_training_in_two_stages_is_bitwise_one_run(tmp_path):
    """--steps 3, then --resume --steps 5: the same weights (EMA and raw) as 5 steps at once. The stage boundary
    differs from tests/test_resume.py's killed run: the first stage finishes (folds and saves its model) and
    the resume raises `steps`."""
    settings = {"train.image_size": 16, "train.unet.block_out_channels": [16, 32], "train.unet.norm_num_groups": 4,
                "train.batch_size": 16, "train.lr": 2e-3, "train.warmup_steps": 2, "train.log_every": 1,
                "train.sample_every": 10_000, "train.checkpoint_every": 10_000, "train.unet.dropout": 0.1,
                "train.hflip": True, "train.grad_accum": 2}
    recipe = lambda steps: load_recipe("quickstart", {**settings, "train.steps": steps})  # noqa: E731
    straight = run_training("builtin:digits-lt", tmp_path / "a", recipe(5))
    run_training("builtin:digits-lt", tmp_path / "b", recipe(3))
    staged = run_training("builtin:digits-lt", tmp_path / "b", recipe(5), resume=True)
    assert staged.step == straight.step == 5
    weights = [load_file(tmp_path / r / "diffusion" / "model" / "diffusion_pytorch_model.safetensors") for r in "ab"]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    trained = straight.unet.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in staged.unet.state_dict().items())


def run_script(scaling, monkeypatch, out: Path, stages: str) -> None:
    """`python bench/scaling.py ...` in this process (its imports are loaded once for both commands)."""
    argv = ["scaling.py", "--data", "builtin:digits-lt", "--recipe", "quickstart", "--stages", stages,
            "--per-class", "4", "--out", str(out)]
    for assignment in TINY:
        argv += ["--set", assignment]
    monkeypatch.setattr(sys, "argv", argv)
    scaling.main()


def test_scaling_curve_end_to_end_and_extended_by_a_rerun(scaling, monkeypatch, capsys, tmp_path):
    out = tmp_path / "scaling"
    run_script(scaling, monkeypatch, out, "3")
    stage3 = json.loads((out / "scaling.json").read_text())["stages"]["3"]
    capsys.readouterr()
    run_script(scaling, monkeypatch, out, "3,6")
    printed = capsys.readouterr().out
    assert len(re.findall(r"^downstream \d+/5: ", printed, re.M)) == 5  # stage 6's classifiers only
    cached = re.findall(r"^downstream \d+/5: (\S+) seed 0.*\(cached\)$", printed, re.M)
    assert cached == ["real", "reweight", "oversample"]  # trained at stage 3 only (OUT/classifier-cache)

    result = json.loads((out / "scaling.json").read_text())
    assert list(result["stages"]) == ["3", "6"] and result["stages"]["3"] == stage3  # read back, not measured again
    with open(out / "scaling.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["steps"], r["images_seen"]) for r in rows] == [("3", "48"), ("6", "96")]
    for row in result["stages"].values():
        assert set(row["recognition"]["per_class"]) == set(row["fid"]["per_class"]) and len(row["fid"]["per_class"]) == 10
        assert 0 <= row["recognition"]["overall"] <= 1 and row["fid"]["overall"] > 0
        down = row["downstream"]
        assert down["chosen"] in ("synthetic", "synthetic+la") and down["baseline"] in ("reweight", "oversample")
        assert down["gain"] == pytest.approx(down["balanced_accuracy"]["tuned"] - down["balanced_accuracy"][down["baseline"]])
    classic = [{a: r["downstream"]["balanced_accuracy"][a] for a in ("real", "reweight", "oversample")}
               for r in result["stages"].values()]
    assert classic[0] == classic[1]  # one baseline for every stage: the classic arms' cached results
    assert "| 3 | 48 |" in printed and "| 6 | 96 |" in printed and (out / "scaling.png").stat().st_size > 0

    run = out / "run" / "diffusion"
    with open(run / "train_log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]  # one continuous log
    history = yaml.safe_load((run / "config_history.yaml").read_text())
    assert [(e["event"], e["step"]) for e in history] == [("start", 0), ("resume", 3)]
    assert history[1]["changes"] == {"steps": {"from": 3, "to": 6}}
    for steps in (3, 6):  # each stage keeps its own model and checkpoint
        stage = out / f"stage-{steps}"
        assert json.loads((stage / "diffusion" / "model" / "capaug.json").read_text())["step"] == steps
        assert json.loads((stage / "checkpoint" / "state.json").read_text())["step"] == steps
    assert (out / "stage-3" / "diffusion" / "model" / "diffusion_pytorch_model.safetensors").read_bytes() != \
        (out / "stage-6" / "diffusion" / "model" / "diffusion_pytorch_model.safetensors").read_bytes()

    with pytest.raises(SystemExit, match=r"stage 4 lies below the run's last checkpoint \(step 6\)"):
        run_script(scaling, monkeypatch, out, "3,4,6")
