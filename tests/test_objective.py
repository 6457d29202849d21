import math

import pytest
import torch
from diffusers import DDPMScheduler

from capaug.augment.capacity import add_capacity, capacity_parameters
from capaug.augment.config import TrainConfig, UNetConfig
from capaug.augment.losses import auto_lambda_div
from capaug.augment.objective import DiffusionObjective
from capaug.augment.unet import build_unet

COUNTS = [40, 10, 2]


def objective(targets=("up",), seed=0, **train):
    torch.manual_seed(seed)
    cfg = TrainConfig(
        image_size=16, unet=UNetConfig(block_out_channels=[16, 32], norm_num_groups=8, dropout=0.1), **train
    )
    unet = build_unet(cfg, len(COUNTS), channels=3)
    if cfg.method in ("cm", "lowrank"):
        add_capacity(unet, cfg.rho, targets=targets)
    return DiffusionObjective(unet, DDPMScheduler(), cfg, COUNTS)


def batch(n=8):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 16, 16, generator=g), torch.arange(n) % len(COUNTS)


def test_fast_path_is_the_default_and_two_passes_the_fallback():
    assert objective().fast_path
    assert not objective(targets=("up", "down")).fast_path
    assert not objective(targets=("mid",)).fast_path
    assert not objective(targets=("conv_in",)).fast_path
    assert objective(targets=("up", "up_blocks.*.attentions.*.to_q")).fast_path
    assert not objective(method="plain").fast_path


def test_fast_path_equals_two_passes_in_eval_mode():
    obj = objective(targets=("up", "up_blocks.*.attentions.*.to_q")).eval()
    with torch.no_grad():
        for p in capacity_parameters(obj.unet):
            p.normal_(0, 0.05)
    x0, _ = batch()
    t, labels, off = torch.randint(0, 1000, (8,)), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3]), torch.tensor([5, 1, 6])
    with torch.no_grad():
        fast_on, fast_off = obj.predict(x0, t, labels, off, fast=True)
        slow_on, slow_off = obj.predict(x0, t, labels, off, fast=False)
    assert (slow_on[off] - slow_off).abs().max() > 1e-3  # the comparison is not between equal branches
    torch.testing.assert_close(fast_on, slow_on, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast_off, slow_off, atol=1e-5, rtol=0)


@pytest.mark.parametrize("base_loss", ["ddpm", "cbdm", "oc"])
def test_step_outputs(base_loss):
    out = objective(base_loss=base_loss)(*batch())
    assert out["loss"].requires_grad and not out["loss_base"].requires_grad and not out["loss_cm"].requires_grad
    torch.testing.assert_close(out["loss"].detach(), out["loss_base"] + out["loss_cm"])
    assert out["d"].shape == (8,) and torch.isfinite(out["d"]).all()
    assert math.isfinite(out["loss"].item())


def test_plain_has_no_cm_term():
    out = objective(method="plain")(*batch())
    assert out["loss_cm"] == 0 and torch.isnan(out["d"]).all()


def test_cm_fraction_computes_the_off_branch_on_a_subset():
    out = objective(cm_fraction=0.25)(*batch(8))
    assert torch.isfinite(out["d"]).sum() == 2
    out = objective(cm_fraction=0.01)(*batch(8))
    assert torch.isfinite(out["d"]).sum() == 1


@pytest.mark.parametrize("targets", [("up",), ("up", "down")])
def test_gradients_reach_theta_g_and_theta_e(targets):
    obj = objective(targets=targets)
    up_conv = obj.unet.up_blocks[0].resnets[0].conv1
    down_conv = obj.unet.down_blocks[0].resnets[0].conv1
    down_weight = getattr(down_conv, "base", down_conv).weight
    term = up_conv.terms["expert"]

    # at init B = 0: dL/dB != 0 through L_base, and dL/dA = B^T (...) = 0 exactly
    obj(*batch())["loss"].backward()
    assert term.B.weight.grad.abs().sum() > 0 and term.A.weight.grad.abs().sum() == 0
    torch.optim.SGD(obj.parameters(), lr=0.1).step()
    obj.zero_grad()

    # once B != 0 every part gets gradient, and so does L_CM alone
    assert term.B.weight.abs().sum() > 0
    obj(*batch())["loss"].backward()
    for p in (term.A.weight, term.B.weight, up_conv.base.weight, down_weight):
        assert p.grad.abs().sum() > 0
    obj.zero_grad()
    x0, labels = batch()
    eps_on, eps_off = obj.predict(x0, torch.randint(0, 1000, (8,)), labels, torch.arange(8))
    ((eps_on - eps_off) ** 2).mean().backward()
    for p in (term.A.weight, term.B.weight, up_conv.base.weight, down_weight):
        assert p.grad.abs().sum() > 0


@pytest.mark.parametrize("fast", [True, False])
def test_on_and_off_branches_share_dropout_masks(fast):
    """With B = 0 the branches are the same model, so in train mode (dropout 0.1) they must agree exactly:
    d measures theta_e, not two different dropout masks."""
    obj = objective().train()
    x0, labels = batch()
    t, off = torch.randint(0, 1000, (8,)), torch.tensor([5, 1, 6])
    eps_on, eps_off = obj.predict(x0, t, labels, off, fast=fast)
    torch.testing.assert_close(eps_on[off], eps_off, atol=1e-5, rtol=0)
    again, _ = obj.predict(x0, t, labels, off, fast=fast)
    assert (again - eps_on).abs().max() > 1e-4  # dropout is really active: fresh masks every call


@pytest.mark.parametrize("fast", [True, False])
def test_d_under_bf16_autocast_matches_float32(fast):
    """d is a difference of nearly equal predictions: rounded to bf16 it became noise (30x too large here)."""
    obj = objective().eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer_b in (p for p in capacity_parameters(obj.unet) if p.shape[-2:] == (1, 1)):
            layer_b.copy_(torch.randn(layer_b.shape, generator=g) * 1e-3)  # a small, non-trivial theta_e
    x0, labels = batch()
    t, off = torch.randint(0, 1000, (8,), generator=g), torch.arange(8)
    d = {}
    for name, autocast in [("fp32", torch.autocast("cpu", enabled=False)),
                           ("bf16", torch.autocast("cpu", dtype=torch.bfloat16))]:
        with torch.no_grad(), autocast:
            eps_on, eps_off = obj.predict(x0, t, labels, off, fast=fast)
        d[name] = ((eps_on.float() - eps_off.float()) ** 2).mean().item()
        if name == "fp32":
            assert 1e-7 < d[name] / (eps_off ** 2).mean().item() < 1e-5  # d ~ 1e-6 of the prediction's power
    assert d["bf16"] == pytest.approx(d["fp32"], rel=0.1)


def test_lowrank_trains_the_terms_without_cm_loss():
    obj = objective(method="lowrank")
    assert capacity_parameters(obj.unet) and not obj.fast_path
    out = obj(*batch())
    assert out["loss_cm"] == 0 and torch.isnan(out["d"]).all()
    out["loss"].backward()
    assert obj.unet.up_blocks[0].resnets[0].conv1.terms["expert"].B.weight.grad.abs().sum() > 0


def test_lambda_div_auto_is_resolved_from_the_groups():
    assert objective().lambda_div == 0.2
    obj = objective(lambda_div="auto")
    assert obj.lambda_div == pytest.approx(auto_lambda_div(COUNTS, ["many", "medium", "few"], 1.0))
    assert objective(lambda_div="auto", lambda_con=2.0).lambda_div == pytest.approx(2 * obj.lambda_div)


def test_min_snr_weighting_downweights_low_noise_steps():
    losses = {}
    for weighting in ("none", "min_snr"):
        obj = objective(loss_weighting=weighting)
        torch.manual_seed(5)
        losses[weighting] = obj(*batch())["loss_base"].item()
    assert losses["min_snr"] < losses["none"]  # every weight is <= 1, low-noise ones far below
