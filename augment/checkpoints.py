"""Training checkpoints `RUN/diffusion/checkpoints/step-N/`: listed, written atomically, orphans removed.

A checkpoint is written under a temporary name (`.tmp-step-N`) and renamed once `state.json` is in it, so a
crash or a full disk mid-write never leaves a folder that looks finished.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .io import write_json


def checkpoint_dirs(run_dir: Path) -> list[Path]:
    """Finished checkpoints, oldest first (a half-written one has a temporary name and is never listed)."""
    folder = Path(run_dir) / "diffusion" / "checkpoints"
    found = [p for p in folder.glob("step-*") if p.is_dir() and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def remove_orphans(run_dir: Path) -> None:
    """Delete `.tmp-step-N` folders a crash or a full disk left behind mid-checkpoint (capaug's own temp names)."""
    for orphan in (Path(run_dir) / "diffusion" / "checkpoints").glob(".tmp-step-*"):
        shutil.rmtree(orphan, ignore_errors=True)


def save_checkpoint(accelerator, run_dir: Path, step: int, keep: int) -> Path:
    """Accelerate's state (model, optimizer, schedule, EMA, RNGs) as `step-N`; only the last `keep` stay."""
    final = Path(run_dir) / "diffusion" / "checkpoints" / f"step-{step}"
    tmp = final.with_name(f".tmp-step-{step}")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json(tmp / "state.json", {"step": step})
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoint_dirs(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
