"""Experiment tracking (`--report-to tensorboard|mlflow|wandb`) through Accelerate's trackers, as diffusers'
training scripts do. Runs log under `RUN/tracking/<stage>/` (TensorBoard event files, an MLflow file store);
Weights & Biases logs to its own service under the project name `<stage>`.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from .errors import CapaugError

REPORT_TO = ("none", "tensorboard", "mlflow", "wandb")


def tracker_name(report_to: Optional[str]) -> Optional[str]:
    """The Accelerate tracker for `--report-to` (None for none), refusing unknown or uninstalled ones."""
    if report_to in (None, "none"):
        return None
    if report_to not in REPORT_TO:
        raise CapaugError(f"--report-to {report_to!r}: choose one of {', '.join(REPORT_TO)}")
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "mlflow": is_mlflow_available, "wandb": is_wandb_available}
    if not available[report_to]():
        raise CapaugError(f"--report-to {report_to} needs the {report_to} package: pip install {report_to}")
    return report_to


def logging_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "tracking"


def scalars(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numbers of a (nested) dict as flat `prefix + a/b` keys; lists, text and NaN are left out."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(scalars(value, f"{prefix}{key}/"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[f"{prefix}{key}"] = float(value)
    return out


def hyperparameters(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A settings dict flattened to the scalar types every tracker stores (lists and None become text)."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(hyperparameters(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


@contextlib.contextmanager
def tracker(report_to: Optional[str], run_dir: str | Path, stage: str,
            config: dict[str, Any]) -> Iterator[Callable[[dict[str, float], int], None]]:
    """A `log(values, step)` for code without an `Accelerator` of its own (e.g. `downstream`); a no-op for none."""
    name = tracker_name(report_to)
    if name is None:
        yield lambda values, step: None
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    kwargs = {} if name == "wandb" else {"logging_dir": str(logging_dir(run_dir))}
    run = LOGGER_TYPE_TO_CLASS[name](stage, **kwargs)
    run.start()
    run.store_init_configuration(hyperparameters(config))
    try:
        yield lambda values, step: run.log(values, step=step)
    finally:
        run.finish()
