"""The losses of DESIGN.md, each next to its equation. Predictions are compared in float32."""

from __future__ import annotations

import torch


def pixel_mean(x: torch.Tensor) -> torch.Tensor:
    """Per-sample mean over every non-batch dimension."""
    return x.float().flatten(1).mean(1)


def class_weights(counts) -> tuple[torch.Tensor, torch.Tensor]:
    """w_con(y) = N_y / AM, w_div(y) = HM / N_y, with AM = mean(N), HM = K / sum_c 1/N_c (both 1 when balanced)."""
    n = torch.as_tensor(counts, dtype=torch.float64)
    am, hm = n.mean(), len(n) / (1 / n).sum()
    return (n / am).float(), (hm / n).float()


def cm_loss(d, labels, w_con, w_div, lambda_con: float, lambda_div: float) -> torch.Tensor:
    """L_CM = mean_i (lambda_con w_con(y_i) - lambda_div w_div(y_i)) d_i, y_i the TRUE label,
    d_i = pixel mean of (eps_on_i - eps_off_i)^2."""
    return ((lambda_con * w_con[labels] - lambda_div * w_div[labels]) * d).mean()


def ddpm_loss(eps_pred, eps) -> torch.Tensor:
    """L_ddpm = mean (eps_theta(x_t, t, y) - eps)^2."""
    return pixel_mean((eps_pred.float() - eps.float()) ** 2).mean()


def cbdm_pairs(cond, null_class: int, label_prob) -> tuple[torch.Tensor, torch.Tensor]:
    """CBDM's second labels: the samples whose conditioning label is not null, and y' ~ p(y) for each."""
    labelled = (cond != null_class).nonzero().squeeze(1)
    if len(labelled) == 0:
        return labelled, labelled.clone()
    return labelled, torch.multinomial(label_prob, len(labelled), replacement=True)


def cbdm_loss(eps_pred, eps, eps_other, labelled, t, num_train_timesteps: int, tau: float, gamma: float):
    """L_ddpm + mean_i 1[y_i labelled] tau (t_i/T) [(eps(y_i) - sg eps(y'_i))^2 + gamma (sg eps(y_i) - eps(y'_i))^2].

    `eps_other` holds eps(y') for the rows `labelled` of the batch (null-label samples are skipped)."""
    eps_y, eps_y2 = eps_pred[labelled].float(), eps_other.float()
    pull = pixel_mean((eps_y - eps_y2.detach()) ** 2) + gamma * pixel_mean((eps_y.detach() - eps_y2) ** 2)
    regulariser = tau * (t[labelled].float() / num_train_timesteps) * pull
    return ddpm_loss(eps_pred, eps) + regulariser.sum() / len(eps_pred)


@torch.no_grad()
def oc_partners(x_t, x0, alpha_bar, class_prob) -> torch.Tensor:
    """j_i ~ softmax_j(-|x_t^i / sqrt(abar_i) - x0^j|^2 / (2 s_i^2)), s_i^2 = 1/abar_i - 1 (log-space), then
    j_i := i where p(y_j) < p(y_i): knowledge only flows from head to tail. `class_prob`: p(y_i) per sample."""
    a = alpha_bar.float().view(-1, 1)
    dist2 = torch.cdist(x_t.flatten(1).float() / a.sqrt(), x0.flatten(1).float()) ** 2
    logits = -dist2 / (2 * (1 / a - 1))
    partners = torch.distributions.Categorical(logits=logits).sample()
    return torch.where(class_prob[partners] >= class_prob, partners, torch.arange(len(x0), device=x0.device))


def oc_loss(eps_pred, x_t, x0, alpha_bar, class_prob) -> torch.Tensor:
    """mean (eps_theta(x_t^i, t, y_i) - eps~_i)^2, eps~_i = (x_t^i - sqrt(abar_i) x0^{j_i}) / sqrt(1 - abar_i)."""
    a = alpha_bar.float().view(-1, *[1] * (x0.dim() - 1))
    target = (x_t.float() - a.sqrt() * x0[oc_partners(x_t, x0, alpha_bar, class_prob)].float()) / (1 - a).sqrt()
    return ddpm_loss(eps_pred, target)
