"""The losses of DESIGN.md, each next to its equation. Predictions are compared in float32."""

from __future__ import annotations

import math

import torch


def pixel_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over every non-batch dimension."""
    return x.float().flatten(1).mean(1)


def class_weights(counts) -> tuple[torch.Tensor, torch.Tensor]:
    """w_con(y) = N_y / AM, w_div(y) = HM / N_y, with AM = mean(N), HM = K / sum_c 1/N_c (both 1 when balanced)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    am, hm = n.mean(), len(n) / (1 / n).sum()
    return (n / am).float(), (hm / n).float()


def diversity_threshold(counts, lambda_con: float, lambda_div: float) -> float:
    """N* = sqrt(lambda_div / lambda_con * AM * HM): classes with fewer training images than N* diversify."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    am, hm = float(n.mean()), float(len(n) / (1 / n).sum())
    if lambda_con <= 0:
        return math.inf if lambda_div > 0 else 0.0
    return math.sqrt(lambda_div / lambda_con * am * hm)


def cm_coefficients(counts, lambda_con: float, lambda_div: float) -> torch.Tensor:
    """c(y) = lambda_con N_y/AM - lambda_div HM/N_y: L_CM's weight on d for class y; c(y) < 0 pushes theta_e apart."""
    w_con, w_div = class_weights(counts)
    return (lambda_con * w_con.double() - lambda_div * w_div.double()).float()


def auto_lambda_div(counts, groups, lambda_con: float) -> float:
    """`lambda_div: auto`: the lambda_div whose N* is the geometric mean of the largest Few count and the smallest
    Medium count, so every Few class diversifies and no Medium class does: lambda_div = lambda_con N*^2 / (AM HM).

    `groups` are `stats.class_stats` groups ("many"/"medium"/"few" per class). That grouping always has a Few
    class when K >= 2; Medium is empty only with two classes, and then the smallest count above the largest Few
    count (a Many class) bounds N* instead. Without a Few class the smallest count stands in for it. On balanced
    data N* = N and lambda_div = lambda_con (the paper's form: c(y) = 0 for every class)."""
    counts = [float(n) for n in counts]
    few = [n for n, g in zip(counts, groups) if g == "few"]
    lower = max(few) if few else min(counts)
    above = [n for n, g in zip(counts, groups) if g == "medium"] or [n for n in counts if n > lower] or [lower]
    n_star_sq = lower * min(above)
    n = torch.as_tensor(counts, dtype=torch.float64)
    am, hm = float(n.mean()), float(len(n) / (1 / n).sum())
    return lambda_con * n_star_sq / (am * hm)


def cm_class_report(classes, counts, groups, lambda_con: float, lambda_div: float, lambda_div_setting=None,
                    diversity_cap=None) -> dict:
    """Which classes L_CM pushes towards diversity (c(y) < 0) and which towards consistency, for logs and warnings.
    `lambda_div_setting`: what the config said (e.g. "auto"), recorded beside the resolved number."""
    c = cm_coefficients(counts, lambda_con, lambda_div).tolist()
    share = torch.as_tensor(counts, dtype=torch.float64) / sum(counts)
    rows = [{"class": name, "count": int(n), "group": g, "c": coef, "diversifies": coef < 0}
            for name, n, g, coef in zip(classes, counts, groups, c)]
    few = [r for r in rows if r["group"] == "few"]
    return {
        "lambda_con": lambda_con,
        "lambda_div": lambda_div,
        "lambda_div_setting": lambda_div if lambda_div_setting is None else lambda_div_setting,
        "diversity_cap": diversity_cap,
        "n_star": diversity_threshold(counts, lambda_con, lambda_div),
        "batch_mean_coefficient": float((share * torch.tensor(c, dtype=torch.float64)).sum()),
        "classes": rows,
        "few_diversify": bool(few) and any(r["diversifies"] for r in few),
    }


def min_snr_weights(snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-gamma (Hang et al., ICCV 2023) for epsilon prediction: w(t) = min(SNR(t), gamma) / SNR(t), so the
    easy low-noise steps stop dominating the gradient."""
    snr = snr.float()
    return torch.clamp(snr, max=gamma) / snr


def cm_loss(d, labels, w_con, w_div, lambda_con: float, lambda_div: float, diversity_cap=None) -> torch.Tensor:
    """L_CM = mean_i (lambda_con w_con(y_i) - lambda_div w_div(y_i)) d_i, y_i the TRUE label,
    d_i = pixel mean of (eps_on_i - eps_off_i)^2.

    `diversity_cap` m (not in DESIGN.md; None keeps its form): a diversifying sample (c < 0) counts min(d_i, m),
    so the push apart stops at d = m and L_CM is bounded below by m min_y c(y). The linear form is unbounded
    below, and diverged on RetinaMNIST once the batch-mean coefficient reached zero (bench/RESULTS.md)."""
    c = lambda_con * w_con[labels] - lambda_div * w_div[labels]
    if diversity_cap is not None:
        d = torch.where(c < 0, d.clamp(max=diversity_cap), d)
    return (c * d).mean()


def ddpm_loss(eps_pred, eps, weights=None) -> torch.Tensor:
    """L_ddpm = mean (eps_theta(x_t, t, y) - eps)^2, each sample's error times `weights` (min-SNR) when given."""
    per_sample = pixel_mean((eps_pred.float() - eps.float()) ** 2)
    return (per_sample if weights is None else per_sample * weights).mean()


def cbdm_pairs(cond, null_class: int, label_prob) -> tuple[torch.Tensor, torch.Tensor]:
    """CBDM's second labels: the samples whose conditioning label is not null, and y' ~ p(y) for each."""
    labelled = (cond != null_class).nonzero().squeeze(1)
    if len(labelled) == 0:
        return labelled, labelled.clone()
    return labelled, torch.multinomial(label_prob, len(labelled), replacement=True)


def cbdm_loss(eps_pred, eps, eps_other, labelled, t, num_train_timesteps: int, tau: float, gamma: float, weights=None):
    """L_ddpm + mean_i 1[y_i labelled] tau (t_i/T) [(eps(y_i) - sg eps(y'_i))^2 + gamma (sg eps(y_i) - eps(y'_i))^2].

    `eps_other` holds eps(y') for the rows `labelled` of the batch (null-label samples are skipped)."""
    eps_y, eps_y2 = eps_pred[labelled].float(), eps_other.float()
    pull = pixel_mean((eps_y - eps_y2.detach()) ** 2) + gamma * pixel_mean((eps_y.detach() - eps_y2) ** 2)
    regulariser = tau * (t[labelled].float() / num_train_timesteps) * pull
    return ddpm_loss(eps_pred, eps, weights) + regulariser.sum() / len(eps_pred)


@torch.no_grad()
def oc_partners(x_t, x0, alpha_bar, class_prob) -> torch.Tensor:
    """j_i ~ softmax_j(-|x_t^i / sqrt(abar_i) - x0^j|^2 / (2 s_i^2)), s_i^2 = 1/abar_i - 1 (log-space), then
    j_i := i where p(y_j) < p(y_i): knowledge only flows from head to tail. `class_prob`: p(y_i) per sample."""
    a = alpha_bar.float().view(-1, 1)
    dist2 = torch.cdist(x_t.flatten(1).float() / a.sqrt(), x0.flatten(1).float()) ** 2
    logits = -dist2 / (2 * (1 / a - 1))
    partners = torch.distributions.Categorical(logits=logits).sample()
    return torch.where(class_prob[partners] >= class_prob, partners, torch.arange(len(x0), device=x0.device))


def oc_loss(eps_pred, x_t, x0, alpha_bar, class_prob, weights=None) -> torch.Tensor:
    """mean (eps_theta(x_t^i, t, y_i) - eps~_i)^2, eps~_i = (x_t^i - sqrt(abar_i) x0^{j_i}) / sqrt(1 - abar_i)."""
    a = alpha_bar.float().view(-1, *[1] * (x0.dim() - 1))
    target = (x_t.float() - a.sqrt() * x0[oc_partners(x_t, x0, alpha_bar, class_prob)].float()) / (1 - a).sqrt()
    return ddpm_loss(eps_pred, target, weights)
