"""Stage entry points on a run folder: what each `capaug` command does, callable from Python.

    from capaug.recipes import load_recipe
    from capaug.augment.pipeline import run_training
    result = run_training("builtin:digits-lt", "runs/q", load_recipe("quickstart"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import yaml

from .config import Recipe, TrainConfig
from .errors import CapaugError
from .split import prepare_split


def run_training(
    data: Optional[str],
    run_dir: str | Path,
    recipe: Recipe,
    *,
    resume: bool = False,
    from_pretrained: Optional[str | Path] = None,
    callback: Optional[Callable[[dict], None]] = None,
    extend_steps: Optional[int] = None,
):
    """Split (or reuse RUN/split.json), then train. On `resume` the run's own config wins; only the number of
    steps may be raised (`extend_steps`), so a resumed run cannot silently change its recipe."""
    from .train import train

    run_dir = Path(run_dir)
    cfg = recipe.train
    saved = run_dir / "diffusion" / "config.yaml"
    if resume and saved.is_file():
        cfg = TrainConfig.model_validate(yaml.safe_load(saved.read_text())["train"])
        if extend_steps:
            cfg.steps = extend_steps
    spec = data or recipe.dataset
    if spec is None and not (run_dir / "split.json").is_file():
        raise CapaugError("no data given: pass DATA (a folder, .npz, .csv or builtin:digits-lt) or a recipe with a dataset")
    split = prepare_split(spec, run_dir, recipe.data)
    return train(split, cfg, run_dir, data_cfg=recipe.data, resume=resume,
                 from_pretrained=str(from_pretrained) if from_pretrained else None, callback=callback)
