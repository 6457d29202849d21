"""`--report-to`: Accelerate trackers get the figures of train_log.csv and each downstream model's metrics."""

import csv

import pytest

from capaug.augment import tracking
from capaug.augment.errors import CapaugError
from capaug.augment.pipeline import run_training
from capaug.recipes import load_recipe

pytest.importorskip("tensorboard")


def events(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = list(folder.rglob("events.out.tfevents.*"))
    assert found, f"no event file under {folder}"
    scalars = {}
    for path in found:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in acc.Scalars(tag))
    return scalars


def test_train_reports_the_log_figures_to_tensorboard(tmp_path):
    run = tmp_path / "run"
    recipe = load_recipe("quickstart", {"train.image_size": 16, "train.unet.block_out_channels": [16, 32],
                                        "train.unet.norm_num_groups": 4, "train.batch_size": 8, "train.steps": 3,
                                        "train.warmup_steps": 0, "train.log_every": 1, "train.sample_every": 100})
    run_training("builtin:digits-lt", run, recipe, report_to="tensorboard")
    logged = events(run / "tracking" / "train")
    with open(run / "diffusion" / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    for key in ("loss", "loss_base", "loss_cm", "lr", "images_per_s"):
        assert [step for step, _ in logged[key]] == [1, 2, 3], key
    assert [v for _, v in logged["loss"]] == pytest.approx([float(r["loss"]) for r in rows], rel=1e-5)


def test_downstream_tracker_logs_each_model_under_its_arm(tmp_path):
    with tracking.tracker("tensorboard", tmp_path, "downstream", {"model": "resnet10t", "arms": ["real"]}) as log:
        for seed in range(2):
            log(tracking.scalars({"balanced_accuracy": 0.5 + seed / 10, "recall": {"few": 0.25},
                                  "per_class_recall": [0.1], "auroc": float("nan")}, "real/"), seed)
    logged = events(tmp_path / "tracking" / "downstream")
    assert logged["real/balanced_accuracy"] == [(0, 0.5), (1, pytest.approx(0.6))]
    assert logged["real/recall/few"][0][1] == 0.25
    assert "real/per_class_recall" not in logged and "real/auroc" not in logged


def test_no_tracker_by_default_and_unknown_ones_refused(tmp_path):
    with tracking.tracker("none", tmp_path, "downstream", {}) as log:
        log({"x": 1.0}, 0)
    assert not (tmp_path / "tracking").exists()
    with pytest.raises(CapaugError, match="--report-to 'neptune': choose one of none, tensorboard, mlflow, wandb"):
        tracking.tracker_name("neptune")
