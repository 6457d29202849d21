"""What L_CM does to each class: the report before step 1, the warning, d per class in the log and its plot;
the lowrank ablation and lambda_div auto through a real (tiny) training run."""

import csv
import json
import subprocess
import sys
import warnings

import pytest
import yaml

from capaug.augment.cm_report import d_column, describe
from capaug.augment.losses import auto_lambda_div
from capaug.augment.pipeline import run_training
from capaug.recipes import load_recipe

TINY = {"train.image_size": 16, "train.unet.block_out_channels": [8, 16], "train.unet.norm_num_groups": 4,
        "train.unet.attention_levels": [False, False], "train.batch_size": 8, "train.warmup_steps": 0,
        "train.log_every": 1, "train.sample_every": 10_000, "train.checkpoint_every": 10_000, "train.steps": 2}


def tiny(**extra):
    return load_recipe("quickstart", {**TINY, **extra})


def test_cm_run_reports_classes_before_step_one_and_logs_d_per_class(tmp_path):
    rows = []
    run = tmp_path / "run"
    run_training("builtin:digits-lt", run, tiny(**{"train.lambda_div": "auto"}), callback=rows.append)
    report = json.loads((run / "diffusion" / "cm_classes.json").read_text())
    assert rows[0]["step"] == 0 and rows[0]["cm_classes"] == report and "cm_classes" not in rows[1]
    assert report["lambda_div_setting"] == "auto"
    groups = [r["group"] for r in report["classes"]]
    assert report["lambda_div"] == pytest.approx(auto_lambda_div([r["count"] for r in report["classes"]], groups, 1.0))
    assert all(r["diversifies"] == (r["group"] == "few") for r in report["classes"])  # auto's promise
    saved = yaml.safe_load((run / "diffusion" / "config.yaml").read_text())
    assert saved["train"]["lambda_div"] == "auto" and saved["lambda_div_resolved"] == report["lambda_div"]
    with open(run / "diffusion" / "train_log.csv") as f:
        log = list(csv.DictReader(f))
    columns = [d_column(r["class"]) for r in report["classes"]]
    assert {"d_many", "d_medium", "d_few", *columns} <= set(log[0])
    assert any(log[-1][c] not in ("", "nan") for c in columns)
    assert (run / "diffusion" / "d_by_class.png").stat().st_size > 0
    assert "diversify" in describe(report) and "N* =" in describe(report)


def test_warns_when_no_few_class_diversifies(tmp_path):
    with pytest.warns(UserWarning, match="no Few-group class diversifies"):
        run_training("builtin:digits-lt", tmp_path / "run", tiny(**{"train.lambda_div": 0.0, "train.steps": 1}))


def test_warns_when_diversity_outweighs_consistency(tmp_path):
    with pytest.warns(UserWarning, match="diversity outweighs consistency, L_CM is unbounded below") as caught:
        run_training("builtin:digits-lt", tmp_path / "run", tiny(**{"train.lambda_div": 10.0, "train.steps": 1}))
    report = json.loads((tmp_path / "run" / "diffusion" / "cm_classes.json").read_text())
    assert report["batch_mean_coefficient"] < 0
    assert not any("no Few-group class" in str(w.message) for w in caught)


def test_a_diversity_cap_bounds_l_cm_so_the_divergence_warning_goes(tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run_training("builtin:digits-lt", tmp_path / "run",
                     tiny(**{"train.lambda_div": 10.0, "train.diversity_cap": 0.01, "train.steps": 1}))
    assert not any("unbounded" in str(w.message) for w in caught)
    report = json.loads((tmp_path / "run" / "diffusion" / "cm_classes.json").read_text())
    assert report["batch_mean_coefficient"] < 0 and report["diversity_cap"] == 0.01
    assert "diversity capped at d = 0.01" in describe(report)


def test_warns_once_d_runs_away():
    from capaug.augment.cm_report import warn_if_running_away

    classes = ["0", "many"]  # a class named like a group logs as d_class_many
    healthy = {"step": 200, "d_0": 3e-5, "d_class_many": 0.03}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_running_away(healthy, classes) is False
        assert warn_if_running_away({"step": 10, "d_0": float("nan"), "d_class_many": float("nan")}, classes) is False
    with pytest.warns(UserWarning, match=r"step 300: d of class many is 1.45e\+03 .*--diversity-cap"):
        assert warn_if_running_away({"step": 300, "d_0": 11.0, "d_class_many": 1450.0}, classes) is True


def test_lowrank_run_trains_the_terms_without_cm_and_keeps_them_for_analysis(tmp_path):
    from capaug.augment.capacity import capacity_layers, capacity_parameters
    from capaug.augment.model_io import load_capacity_model

    run = tmp_path / "run"
    result = run_training("builtin:digits-lt", run, tiny(**{"train.method": "lowrank"}))
    assert not (run / "diffusion" / "cm_classes.json").exists()
    with open(result.log_path) as f:
        assert all(float(r["loss_cm"]) == 0 for r in csv.DictReader(f))
    unet, _, _ = load_capacity_model(run)
    assert capacity_layers(unet) and any(p.abs().sum() > 0 for p in capacity_parameters(unet, "expert")[1::2])


def test_cli_prints_the_class_table_and_accepts_lambda_div_auto(tmp_path):
    sets = [a for k, v in TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
    done = subprocess.run([sys.executable, "-m", "capaug.cli", "train", "builtin:digits-lt", "--run", str(tmp_path / "r"),
                           "--recipe", "quickstart", "--lambda-div", "auto", "--diversity-cap", "0.05", "--loss-weighting", "min_snr", *sets],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(auto)" in done.stdout and "diversify" in done.stdout and "capped at d = 0.05" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "capaug.cli", "train", "builtin:digits-lt", "--run", str(tmp_path / "b"),
                          "--lambda-div", "lots"], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "number or 'auto'" in bad.stderr and "Traceback" not in bad.stderr
    capped = subprocess.run([sys.executable, "-m", "capaug.cli", "train", "builtin:digits-lt", "--run",
                             str(tmp_path / "c"), "--diversity-cap", "0"], capture_output=True, text=True, timeout=600)
    assert capped.returncode == 2 and "diversity_cap" in capped.stderr and "Traceback" not in capped.stderr
