import math

import pytest
import torch

from capaug.augment.losses import (
    auto_lambda_div,
    cbdm_loss,
    cbdm_pairs,
    class_weights,
    cm_class_report,
    cm_coefficients,
    cm_loss,
    ddpm_loss,
    diversity_threshold,
    min_snr_weights,
    oc_loss,
    oc_partners,
)


def test_class_weights_on_known_counts():
    w_con, w_div = class_weights([100, 10, 1])
    am, hm = 111 / 3, 3 / (1 / 100 + 1 / 10 + 1)
    torch.testing.assert_close(w_con, torch.tensor([100 / am, 10 / am, 1 / am]))
    torch.testing.assert_close(w_div, torch.tensor([hm / 100, hm / 10, hm / 1]))


def test_balanced_counts_give_unit_weights_and_zero_cm_loss():
    w_con, w_div = class_weights([7, 7, 7, 7])
    assert torch.allclose(w_con, torch.ones(4)) and torch.allclose(w_div, torch.ones(4))
    d, labels = torch.rand(8), torch.arange(8) % 4
    assert cm_loss(d, labels, w_con, w_div, 0.5, 0.5).abs() < 1e-7


def test_cm_loss_uses_the_given_labels():
    w_con, w_div = torch.tensor([2.0, 0.5]), torch.tensor([0.25, 4.0])
    d, labels = torch.tensor([1.0, 3.0]), torch.tensor([0, 1])
    expected = ((1.0 * 2.0 - 0.2 * 0.25) * 1.0 + (1.0 * 0.5 - 0.2 * 4.0) * 3.0) / 2
    assert cm_loss(d, labels, w_con, w_div, 1.0, 0.2).item() == pytest.approx(expected)


def test_diversity_cap_stops_only_the_push_apart():
    w_con, w_div = torch.tensor([2.0, 0.5]), torch.tensor([0.25, 4.0])  # c = +1.95 (consistency), -0.3 (diversity)
    c = torch.tensor([2.0 - 0.2 * 0.25, 0.5 - 0.2 * 4.0])
    labels = torch.tensor([0, 1, 1])
    d = torch.tensor([5.0, 3.0, 0.5], requires_grad=True)
    loss = cm_loss(d, labels, w_con, w_div, 1.0, 0.2, diversity_cap=1.0)
    assert loss.item() == pytest.approx((c[0] * 5.0 + c[1] * 1.0 + c[1] * 0.5).item() / 3)
    loss.backward()
    torch.testing.assert_close(d.grad, torch.stack([c[0], torch.tensor(0.0), c[1]]) / 3)
    linear = cm_loss(d.detach(), labels, w_con, w_div, 1.0, 0.2)
    assert linear.item() == pytest.approx((c[0] * 5.0 + c[1] * 3.5).item() / 3)
    assert cm_loss(d.detach() * 1e6, labels[1:2].repeat(3), w_con, w_div, 1.0, 0.2, 1.0) >= c[1] * 1.0 - 1e-6


def test_ddpm_loss_is_the_mean_squared_error():
    a, b = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert ddpm_loss(a, b).item() == pytest.approx(((a - b) ** 2).mean().item(), rel=1e-6)


def test_cbdm_skips_null_label_samples():
    null = 3
    cond = torch.tensor([0, null, 2, null, 1])
    labelled, y_other = cbdm_pairs(cond, null, torch.tensor([0.7, 0.2, 0.1]))
    assert labelled.tolist() == [0, 2, 4] and len(y_other) == 3 and (y_other < null).all()
    nobody, none = cbdm_pairs(torch.full((4,), null), null, torch.tensor([0.7, 0.2, 0.1]))
    assert len(nobody) == len(none) == 0

    eps_pred, eps = torch.randn(5, 1, 2, 2), torch.randn(5, 1, 2, 2)
    t = torch.full((5,), 500)
    assert cbdm_loss(eps_pred, eps, eps_pred[nobody], nobody, t, 1000, 1.0, 0.25) == ddpm_loss(eps_pred, eps)


def test_cbdm_regulariser_value_and_stop_gradients():
    eps_pred = torch.zeros(2, 1, 1, 1, requires_grad=True)
    eps_other = torch.ones(1, 1, 1, 1, requires_grad=True)
    labelled, t = torch.tensor([1]), torch.tensor([0, 500])
    loss = cbdm_loss(eps_pred, torch.zeros(2, 1, 1, 1), eps_other, labelled, t, 1000, tau=1.0, gamma=0.25)
    assert loss.item() == pytest.approx(0.5 * (1 + 0.25) / 2)  # tau t/T (1 + gamma), averaged over the batch
    loss.backward()
    # eps(y) is pulled by the first term only, eps(y') by the gamma term only
    assert eps_pred.grad[1].item() == pytest.approx(0.5 * 2 * (0 - 1) / 2)
    assert eps_other.grad.item() == pytest.approx(0.5 * 0.25 * 2 * (1 - 0) / 2)


def test_oc_partner_is_never_of_a_rarer_class():
    torch.manual_seed(0)
    n = 32
    x0 = torch.randn(n, 1, 4, 4) * 0.1
    labels = torch.arange(n) % 4
    class_prob = torch.tensor([0.6, 0.25, 0.1, 0.05])[labels]
    alpha_bar = torch.full((n,), 0.02)  # heavy noise: partners are nearly uniform over the batch
    x_t = alpha_bar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * torch.randn_like(x0)
    moved = 0
    for _ in range(20):
        j = oc_partners(x_t, x0, alpha_bar, class_prob)
        assert (class_prob[j] >= class_prob).all()
        moved += (j != torch.arange(n)).sum().item()
    assert moved > 0  # the gate is not vacuous


def test_oc_is_numerically_safe_and_reduces_to_ddpm_at_low_noise():
    torch.manual_seed(0)
    x0, eps = torch.randn(8, 3, 8, 8), torch.randn(8, 3, 8, 8)
    alpha_bar = torch.full((8,), 1 - 1e-4)
    x_t = alpha_bar.sqrt().view(-1, 1, 1, 1) * x0 + (1 - alpha_bar).sqrt().view(-1, 1, 1, 1) * eps
    class_prob = torch.full((8,), 0.1)
    assert torch.equal(oc_partners(x_t, x0, alpha_bar, class_prob), torch.arange(8))
    eps_pred = torch.randn_like(eps)
    expected = ddpm_loss(eps_pred, eps).item()
    assert oc_loss(eps_pred, x_t, x0, alpha_bar, class_prob).item() == pytest.approx(expected, rel=1e-3)


RETINA = [486, 128, 206, 194, 66]  # RetinaMNIST training counts, grades 0..4


def retina_groups():
    from capaug.augment.stats import class_stats

    return class_stats([f"grade{k}" for k in range(5)], RETINA).groups


def test_released_lambda_div_leaves_only_the_smallest_retina_class_diversifying():
    report = cm_class_report([f"grade{k}" for k in range(5)], RETINA, retina_groups(), 1.0, 0.2)
    assert [r["diversifies"] for r in report["classes"]] == [False, False, False, False, True]
    assert report["classes"][4]["c"] == pytest.approx(-0.13, abs=0.01)
    assert report["batch_mean_coefficient"] == pytest.approx(1.31, abs=0.01)
    assert report["n_star"] == pytest.approx(79, abs=1)
    assert report["few_diversify"]  # grade 4 is Few and diversifies, weakly


def test_auto_lambda_div_puts_n_star_between_few_and_medium_on_retinamnist():
    groups = retina_groups()
    assert groups == ["many", "few", "many", "medium", "few"]  # terciles: no class under 20 images
    lam = auto_lambda_div(RETINA, groups, lambda_con=1.0)
    assert diversity_threshold(RETINA, 1.0, lam) == pytest.approx(math.sqrt(128 * 194))
    report = cm_class_report([f"grade{k}" for k in range(5)], RETINA, groups, 1.0, lam)
    assert [r["diversifies"] for r in report["classes"]] == [False, True, False, False, True]
    assert all(r["diversifies"] == (r["group"] == "few") for r in report["classes"])


def test_auto_lambda_div_edge_cases():
    # two classes: no Medium group, the Many count bounds N*
    assert diversity_threshold([100, 10], 1.0, auto_lambda_div([100, 10], ["many", "few"], 1.0)) == pytest.approx(
        math.sqrt(1000))
    # balanced data: the paper's form lambda_div = lambda_con, nobody is pushed either way
    assert auto_lambda_div([50, 50, 50], ["many", "medium", "few"], 2.0) == pytest.approx(2.0)
    # no Few group given: the smallest class stands in for it
    lam = auto_lambda_div([300, 200, 40], ["many", "many", "medium"], 1.0)
    assert diversity_threshold([300, 200, 40], 1.0, lam) == pytest.approx(math.sqrt(40 * 40))
    assert diversity_threshold([10, 1], 0.0, 0.0) == 0.0 and diversity_threshold([10, 1], 0.0, 1.0) == math.inf


def test_cm_coefficients_match_the_loss_weights():
    w_con, w_div = class_weights(RETINA)
    torch.testing.assert_close(cm_coefficients(RETINA, 1.0, 0.2), w_con - 0.2 * w_div)


def test_min_snr_weights_and_weighted_mse():
    snr = torch.tensor([100.0, 5.0, 0.5])
    torch.testing.assert_close(min_snr_weights(snr, 5.0), torch.tensor([0.05, 1.0, 1.0]))
    a, b = torch.zeros(3, 1, 2, 2), torch.ones(3, 1, 2, 2)
    assert ddpm_loss(a, b, torch.tensor([0.05, 1.0, 1.0])).item() == pytest.approx(2.05 / 3)
