"""What L_CM does to each class, told before step 1 and followed during training (DESIGN.md, The CM method).

Before training: every class's coefficient c(y), N* and whether it diversifies (`losses.cm_class_report`),
written to RUN/diffusion/cm_classes.json, with a warning when no Few class diversifies (L_CM is then a pure
consistency penalty on the rare classes too) or when diversity outweighs consistency (L_CM is then unbounded).
During training: per-class d columns in train_log.csv and their curves in RUN/diffusion/d_by_class.png, and
one warning when a class's d runs away (the linear L_CM diverging).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

from .stats import GROUPS


def d_column(class_name: str) -> str:
    """train_log.csv column of a class's d: `d_<class>` (`d_class_<class>` for a class named like a group)."""
    return f"d_class_{class_name}" if class_name in GROUPS else f"d_{class_name}"


def describe(report: dict) -> str:
    """A few lines for the console: N*, then class, count, group, c(y) and the push it gets."""
    setting = "" if report["lambda_div_setting"] == report["lambda_div"] else f" ({report['lambda_div_setting']})"
    lines = [f"L_CM: lambda_con {report['lambda_con']:g}, lambda_div {report['lambda_div']:.4g}{setting}; "
             f"classes under N* = {report['n_star']:.1f} images diversify; "
             f"batch-mean coefficient {report['batch_mean_coefficient']:+.2f}"
             + (f"; diversity capped at d = {report['diversity_cap']:g}" if report.get("diversity_cap") else "")]
    for row in report["classes"]:
        push = "diversify" if row["diversifies"] else "consistency"
        lines.append(f"  {row['class']:<20} {row['count']:>7}  {row['group']:<6}  c = {row['c']:+.3f}  {push}")
    return "\n".join(lines)


def warn_about_cm_balance(report: dict) -> None:
    """Warn, before step 1, about the two settings where L_CM cannot do its job: no Few class diversifies
    (a pure consistency penalty), or diversity outweighs consistency over a batch: L_CM is linear in d, so with
    no net consistency pull it is unbounded below (RetinaMNIST at lambda_div 2.19 diverged, bench/RESULTS.md),
    unless a diversity cap bounds it."""
    if not report["few_diversify"]:
        warnings.warn(
            f"no Few-group class diversifies (N* = {report['n_star']:.1f} images, lambda_div "
            f"{report['lambda_div']:.4g}): L_CM only pushes theta_e towards zero; try --lambda-div auto",
            stacklevel=3,
        )
    if report["batch_mean_coefficient"] <= 0 and report.get("diversity_cap") is None:
        hint = "set a smaller --lambda-div" if report["lambda_div_setting"] == "auto" else "try --lambda-div auto"
        hint += " or bound it with --diversity-cap"
        warnings.warn(
            f"the batch-mean L_CM coefficient is {report['batch_mean_coefficient']:+.3f} (lambda_div "
            f"{report['lambda_div']:.4g}): diversity outweighs consistency, L_CM is unbounded below and training "
            f"is expected to diverge; {hint}",
            stacklevel=3,
        )


RUNAWAY_D = 1.0  # the on and off predictions disagree by more than the noise they predict (unit variance)


def warn_if_running_away(row: dict, classes: list[str]) -> bool:
    """Warn (and return True) when a logged class's d exceeds RUNAWAY_D: L_CM is then pushing theta_g and
    theta_e apart without bound (RetinaMNIST at lambda_div 1.73 got there by step 300, its FID-11,000 end
    state by step 1,000), so the user can stop early instead of finishing a run of noise images."""
    d = {name: row.get(d_column(name), math.nan) for name in classes}
    name = max(d, key=lambda n: d[n] if math.isfinite(d[n]) else -math.inf)
    worst = d[name]
    if not worst > RUNAWAY_D:  # NaN (no off-branch sample of the class in the window) never warns
        return False
    warnings.warn(
        f"step {row['step']}: d of class {name} is {worst:.3g} (the on and off predictions disagree by more than "
        f"the noise itself): L_CM is running away and training is diverging; retrain with --diversity-cap 0.01 "
        f"or a smaller --lambda-div",
        stacklevel=3,
    )
    return True


def d_by_class_figure(rows: list[dict], classes: list[str], groups: list[str]):
    """d of each class over training steps, log scale, one line per class, dashed for Few classes."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), layout="tight")
    ax = fig.subplots()
    steps = [int(r["step"]) for r in rows]
    for name, group in zip(classes, groups):
        values = [float(r.get(d_column(name)) or "nan") for r in rows]
        points = [(s, v) for s, v in zip(steps, values) if math.isfinite(v) and v > 0]
        if points:
            ax.plot(*zip(*points), "--" if group == "few" else "-", label=f"{name} ({group})")
    ax.set(yscale="log", xlabel="step", ylabel="d = mean (eps_on - eps_off)^2",
           title="on/off disagreement by class (CM)")
    if ax.get_lines():
        ax.legend(fontsize="small")
    return fig


def save_d_by_class(path: Path, rows: list[dict], classes: list[str], groups: list[str]) -> None:
    from .io import save_figure

    save_figure(path, d_by_class_figure(rows, classes, groups))
