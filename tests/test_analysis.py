"""Capacity analysis on a tiny class-conditional UNet: the probe is fixed, pruning at p = 0 changes nothing."""

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from capaug.augment import analysis
from capaug.augment.config import TrainConfig, UNetConfig
from capaug.augment.unet import build_unet

NUM_CLASSES = 3


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    cfg = TrainConfig(image_size=16, unet=UNetConfig(block_out_channels=[8, 16], attention_levels=[False, False], norm_num_groups=4))
    return build_unet(cfg, NUM_CLASSES, channels=1).eval()


@pytest.fixture(scope="module")
def probe():
    x0 = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    return analysis.make_probe(x0, torch.tensor([0, 0, 0, 1, 1, 2]), num_train_timesteps=100, draws=2, seed=3)


def test_probe_is_seeded_and_repeats_each_image(probe):
    again = analysis.make_probe(probe.x0[::2], probe.labels[::2], num_train_timesteps=100, draws=2, seed=3)
    assert torch.equal(again.timesteps, probe.timesteps) and torch.equal(again.noise, probe.noise)
    assert probe.labels.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


def test_per_class_loss_is_deterministic_and_nan_for_absent_classes(unet, probe):
    scheduler = DDPMScheduler(num_train_timesteps=100)
    loss = analysis.per_class_loss(unet, scheduler, probe, NUM_CLASSES + 1, batch_size=5)
    assert np.isfinite(loss[:3]).all() and np.isnan(loss[3])
    again = analysis.per_class_loss(unet, scheduler, probe, NUM_CLASSES + 1, batch_size=12)
    assert np.allclose(loss, again, rtol=1e-5, equal_nan=True)


def test_pruning_at_zero_changes_nothing(unet, probe):
    pruned = analysis.prune_smallest(unet, 0.0)
    original, after = unet.state_dict(), pruned.state_dict()
    assert original.keys() == after.keys() and all(torch.equal(original[k], after[k]) for k in original)
    result = analysis.pruning_sensitivity(unet, DDPMScheduler(num_train_timesteps=100), probe, NUM_CLASSES, [0.0])
    assert np.array_equal(result["relative_increase"][0.0], np.zeros(NUM_CLASSES))


def test_pruning_zeroes_the_smallest_weights_globally_and_leaves_the_original_alone(unet):
    pruned = analysis.prune_smallest(unet, 0.5)
    layers = lambda m: [x.weight for x in m.modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]
    before, after = torch.cat([w.flatten() for w in layers(unet)]), torch.cat([w.flatten() for w in layers(pruned)])
    assert (after == 0).double().mean() == pytest.approx(0.5, abs=1e-3)
    assert after[after != 0].abs().min() >= before.abs().median()
    assert (before != 0).all()


def test_group_means_and_rank_correlation():
    values = np.array([0.1, 0.2, 0.9, 1.5])
    assert analysis.group_means(values, ["many", "many", "few", "few"]) == pytest.approx({"many": 0.15, "few": 1.2})
    assert analysis.rank_correlation([500, 100, 20, 5], values) == pytest.approx(-1.0)
    assert analysis.rank_correlation([5, 5, 5, 5], values) is None


def test_capacity_figure_draws_without_a_cm_split():
    result = {"train_counts": [100, 10], "groups": ["many", "few"], "capacity_split": None,
              "capacity_split_note": "method is 'plain'", "pruning": {"relative_increase": {"0.1": [0.1, 0.5]}}}
    assert len(analysis.capacity_figure(result).axes) == 2


def test_analyze_capacity_on_a_trained_cm_run(tmp_path, lt_folder):
    import json

    from capaug.augment.pipeline import run_training
    from capaug.recipes import load_recipe

    run = tmp_path / "run"
    tiny = {"train.image_size": 16, "train.unet.block_out_channels": [8, 16], "train.unet.norm_num_groups": 4,
            "train.unet.attention_levels": [False, False], "train.batch_size": 4, "train.steps": 2,
            "train.warmup_steps": 0, "train.ema_decay": 0.5}
    run_training(str(lt_folder), run, load_recipe("quickstart", tiny))
    result = analysis.analyze_capacity(run, (0, 0.5), images_per_class=3, draws=2, device="cpu")
    assert json.loads((run / "analysis" / "capacity.json").read_text()) == result
    assert (run / "analysis" / "capacity.png").stat().st_size > 0
    assert result["pruning"]["relative_increase"]["0.0"] == [0.0, 0.0, 0.0]
    assert set(result["pruning"]["group_mean_relative_increase"]["0.5"]) == set(result["groups"])
    split = result["capacity_split"]
    # the folded model and the unfolded one with theta_e switched on are the same network (same EMA weights)
    assert np.allclose(split["loss_theta_g_plus_e"], result["pruning"]["base_loss"], rtol=1e-4)
    assert all(loss > 0 for loss in split["loss_theta_g"])

    from typer.testing import CliRunner

    from capaug.cli.app import app

    out = CliRunner().invoke(app, ["analyze", "capacity", "--run", str(run), "--prune", "0,0.3",
                                   "--images-per-class", "2", "--draws", "1", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "pruned 30%" in out.output and "theta_g alone" in out.output
