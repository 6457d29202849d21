"""What `capaug train --resume` may change, and the run's config history (`RUN/diffusion/config_history.yaml`).

A resumed run continues one experiment, so anything that defines what is being trained (method, losses and
their weights, data, batch, model shape, parameterization (eps / edm) and noise schedule, seed, EMA) is fixed at
the first start. Recovery settings may change: a lower (or higher) learning rate after a NaN, more (or fewer)
steps, gradient clipping, weight decay and the execution knobs (intervals, workers, memory layout). Precision and
`compile` stay fixed too: a checkpoint's state (gradient scaler, compiled module names) belongs to them. Every
start and every resume is appended to the history with the changes it brought.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any

import yaml

from .config import DataConfig, TrainConfig
from .errors import CapaugError
from .io import write_yaml

RECOVERY = ("lr", "steps", "grad_clip", "weight_decay", "channels_last", "num_workers", "log_every", "sample_every",
            "checkpoint_every", "keep_checkpoints")


def _flat(prefix: str, values: dict) -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flat(f"{prefix}{key}.", value))
        else:
            out[f"{prefix}{key}"] = value
    return out


def recorded_settings(cfg: TrainConfig, data_cfg: DataConfig, run: dict) -> dict[str, Any]:
    """Flat `{"lr": ..., "unet.block_out_channels": ..., "data.few_threshold": ..., "split_hash": ...}`."""
    return _flat("", cfg.model_dump()) | _flat("data.", data_cfg.model_dump()) | run


def saved_settings(saved: dict) -> dict[str, Any]:
    """The same flat view of a `RUN/diffusion/config.yaml` (older files: missing keys take today's defaults)."""
    run = {k: saved.get(k) for k in ("split_hash", "from_pretrained")}
    return recorded_settings(TrainConfig.model_validate(saved["train"]), DataConfig.model_validate(saved.get("data", {})), run)


def resume_changes(saved: dict[str, Any], wanted: dict[str, Any], step: int) -> dict[str, dict]:
    """{key: {"from", "to"}} of the accepted changes; a `CapaugError` naming every change that is not allowed."""
    changes = {k: {"from": saved.get(k), "to": v} for k, v in wanted.items() if saved.get(k) != v}
    refused = [k for k in changes if k not in RECOVERY]
    if refused:
        listed = ", ".join(f"{k} ({changes[k]['from']} -> {changes[k]['to']})" for k in refused)
        raise CapaugError(f"--resume cannot change {listed}: the run would no longer be one experiment; "
                          f"start a new --run (a resume may change only {', '.join(RECOVERY)})")
    if wanted["steps"] < step:
        raise CapaugError(f"--steps {wanted['steps']} is below the last checkpoint's step {step}; "
                          f"give at least {step} to resume")
    return changes


def append_history(path: Path, event: str, step: int, changes: dict[str, dict]) -> None:
    """One entry per start or resume: time (UTC), step it starts from, and the settings it changed."""
    history = yaml.safe_load(path.read_text()) if path.is_file() else None
    entry = {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "event": event,
             "step": step, "changes": changes}
    write_yaml(path, [*(history or []), entry])
