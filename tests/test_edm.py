"""parameterization edm (augment/edm.py): the paper's coefficients, training, CM's d on F, the folded model folder,
EDM sampling, resume and the settings it refuses."""

import json
import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from capaug.augment.capacity import add_capacity, capacity_gate, capacity_parameters
from capaug.augment.config import SynthesisConfig, TrainConfig, UNetConfig
from capaug.augment.edm import SIGMA_DATA, EDMParameterization, edm_sampler, edm_schedule
from capaug.augment.errors import CapaugError
from capaug.augment.losses import cm_loss, pixel_mean
from capaug.augment.objective import DiffusionObjective
from capaug.augment.pipeline import run_training
from capaug.augment.sampling import generate
from capaug.augment.unet import build_unet
from capaug.recipes import load_recipe

COUNTS = [40, 10, 2]
SIGMAS = [0.002, 0.1, 0.5, 1.0, 80.0]
TINY = {
    "train.parameterization": "edm",
    "train.image_size": 16,
    "train.unet.block_out_channels": [16, 32],
    "train.unet.norm_num_groups": 4,
    "train.batch_size": 8,
    "train.warmup_steps": 0,
    "train.log_every": 1,
    "train.sample_every": 10_000,
    "train.checkpoint_every": 2,
}


def edm_objective(method="cm", seed=0, **train):
    torch.manual_seed(seed)
    cfg = TrainConfig(parameterization="edm", method=method, image_size=16,
                      unet=UNetConfig(block_out_channels=[16, 32], norm_num_groups=8), **train)
    unet = build_unet(cfg, len(COUNTS), channels=3)
    if method == "cm":
        add_capacity(unet, cfg.rho, cfg.targets)
    return DiffusionObjective(unet, edm_schedule(), cfg, COUNTS)


def batch(n=8):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1, torch.arange(n) % len(COUNTS)


@pytest.mark.parametrize("sigma", SIGMAS)
def test_preconditioning_is_table_1_of_the_paper_and_matches_the_diffusers_sampler(sigma):
    edm, sd = EDMParameterization(), 0.5
    assert SIGMA_DATA == sd
    assert edm.c_skip(sigma) == pytest.approx(sd**2 / (sigma**2 + sd**2), rel=1e-12)
    assert edm.c_out(sigma) == pytest.approx(sigma * sd / math.sqrt(sd**2 + sigma**2), rel=1e-12)
    assert edm.c_in(sigma) == pytest.approx(1 / math.sqrt(sigma**2 + sd**2), rel=1e-12)
    assert float(edm.c_noise(sigma)) == pytest.approx(math.log(sigma) / 4, rel=1e-6)
    assert edm.loss_weight(sigma) == pytest.approx((sigma**2 + sd**2) / (sigma * sd) ** 2, rel=1e-12)
    assert edm.loss_weight(sigma) * edm.c_out(sigma) ** 2 == pytest.approx(1.0)  # F regresses a unit-scale target
    # what training feeds F is what diffusers' EDM samplers feed it, and D is formed the same way
    x, f = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    for sampler in ("dpmsolver++", "ddim", "ddpm"):
        scheduler = edm_sampler(edm_schedule(), sampler)
        torch.testing.assert_close(scheduler.precondition_inputs(x, sigma), edm.c_in(sigma) * x)
        torch.testing.assert_close(scheduler.precondition_noise(torch.tensor(sigma)), edm.c_noise(sigma))
        torch.testing.assert_close(scheduler.precondition_outputs(x, f, sigma),
                                   edm.c_skip(sigma) * x + edm.c_out(sigma) * f)


def test_training_noise_levels_are_log_normal():
    torch.manual_seed(0)
    log_sigma = EDMParameterization().sample_sigma(20_000, "cpu").log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.05)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.05)


def test_an_edm_model_learns_a_fixed_batch():
    obj = edm_objective(method="plain")
    x0, y = batch()
    optimizer = torch.optim.AdamW(obj.parameters(), lr=2e-3)
    losses = []
    for _ in range(20):
        torch.manual_seed(1)  # the same noise levels and noise every step
        out = obj(x0, y)
        out["loss"].backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(float(out["loss"].detach()))
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])


def test_cm_measures_d_on_the_network_outputs_f():
    obj = edm_objective(p_uncond=0.0, cm_fraction=1.0).eval()  # eval: no dropout, so d is reproducible
    with torch.no_grad():
        for p in capacity_parameters(obj.unet):
            p.normal_(0, 0.05)
    x0, y = batch()
    torch.manual_seed(5)
    out = obj(x0, y)
    torch.manual_seed(5)
    noised = obj.parameterization.noise(x0)
    with torch.no_grad(), capacity_gate(obj.unet, 1.0):
        f_on = obj.unet(noised.model_in, noised.timestep, y).sample
    with torch.no_grad(), capacity_gate(obj.unet, 0.0):
        f_off = obj.unet(noised.model_in, noised.timestep, y).sample
    d = pixel_mean((f_on - f_off) ** 2)
    assert d.min() > 0
    torch.testing.assert_close(out["d"], d, rtol=1e-4, atol=1e-9)
    # d on F is the loss-weighted difference of the denoised outputs D: the scale L_base judges errors on
    d_denoised = obj.parameterization.loss_weight(noised.level) * pixel_mean(
        (obj.parameterization.denoise(f_on, noised) - obj.parameterization.denoise(f_off, noised)) ** 2)
    torch.testing.assert_close(d, d_denoised, rtol=1e-3, atol=1e-9)
    expected_cm = cm_loss(d, y, obj.w_con, obj.w_div, obj.cfg.lambda_con, obj.lambda_div)
    torch.testing.assert_close(out["loss_cm"], expected_cm, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(out["loss_base"], obj.parameterization.loss(f_on, noised), rtol=1e-4, atol=1e-6)
    obj.train()
    out = obj(x0, y)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in capacity_parameters(obj.unet))


@pytest.mark.parametrize("setting, says", [
    ({"loss_weighting": "min_snr"}, "loss_weighting min_snr is for parameterization eps"),
    ({"base_loss": "cbdm"}, "base_loss cbdm is defined on the DDPM schedule"),
    ({"base_loss": "oc"}, "base_loss oc is defined on the DDPM schedule"),
])
def test_edm_refuses_the_eps_only_settings(setting, says):
    with pytest.raises(ValidationError, match=says):
        TrainConfig(parameterization="edm", **setting)
    TrainConfig(parameterization="eps", **setting)  # fine with eps
    with pytest.raises(CapaugError, match=says):
        load_recipe("quickstart", {"train.parameterization": "edm", **{f"train.{k}": v for k, v in setting.items()}})


def test_folded_edm_model_round_trips_samples_with_the_edm_schedulers_and_resumes_only_as_edm(tmp_path):
    from diffusers import EDMDPMSolverMultistepScheduler, EDMEulerScheduler, UNet2DModel

    from capaug.augment.model_io import load_diffusion_model, save_diffusion_model
    from capaug.augment.split import load_split
    from capaug.augment.synthesize import synthesize

    run = tmp_path / "run"
    result = run_training("builtin:digits-lt", run, load_recipe("quickstart", {**TINY, "train.steps": 2,
                                                                               "train.sample_every": 2}))
    assert (run / "diffusion" / "samples" / "step-2.png").is_file()  # the training grid sampled the EDM way
    unet, schedule, info = load_diffusion_model(result.model_dir)
    assert info.parameterization == "edm"
    assert isinstance(schedule, EDMEulerScheduler) and schedule.config.sigma_data == SIGMA_DATA
    plain = UNet2DModel.from_pretrained(result.model_dir)
    rebuilt = EDMDPMSolverMultistepScheduler.from_pretrained(result.model_dir / "scheduler")
    assert (rebuilt.config.sigma_min, rebuilt.config.sigma_max) == (schedule.config.sigma_min, schedule.config.sigma_max)

    again = tmp_path / "again"
    save_diffusion_model(plain, schedule, info, again)
    reloaded, _, _ = load_diffusion_model(again)
    x, t, y = torch.randn(2, 1, 16, 16), torch.tensor([-1.0, 0.5]), torch.tensor([0, 10])  # 10: the null class
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, t, y).sample, unet(x, t, y).sample, rtol=0, atol=0)

    labels, seeds = [0, 3, 9], [1, 2, 3]
    for sampler in ("dpmsolver++", "ddim", "ddpm"):
        images = generate(unet, schedule, labels, seeds, sampler=sampler, steps=3, guidance=2.0,
                          null_class=info.null_class)
        assert images.shape == (3, 16, 16, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, generate(reloaded, schedule, labels, seeds, sampler=sampler, steps=3,
                                                       guidance=2.0, null_class=info.null_class))
    split = load_split(run)
    target = tmp_path / "one_more.json"  # one image per class
    target.write_text(json.dumps({c: n + 1 for c, n in zip(split.classes, split.counts())}))
    made = synthesize(result.model_dir, run / "synthetic", SynthesisConfig(target=str(target), steps=2, batch_size=8))
    assert made.made == 10 == len(list((run / "synthetic").glob("*/*.png")))

    # the run's checkpoint (step 2) cannot be resumed as another parameterization
    with pytest.raises(CapaugError, match=r"parameterization \(edm -> eps\)"):
        run_training("builtin:digits-lt", run, load_recipe("quickstart", {**TINY, "train.steps": 4,
                                                                          "train.parameterization": "eps"}),
                     resume=True)

