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


def run_pipeline(
    data: Optional[str],
    run_dir: str | Path,
    recipe: Recipe,
    *,
    on_train: Optional[Callable[[dict], None]] = None,
    on_synthesis=None,
    on_model: Optional[Callable[[str, int, dict], None]] = None,
) -> dict:
    """train -> synthesize -> downstream on one run folder; returns the downstream `metrics.json` content.

    Rerunning picks up where an earlier call stopped: a finished model is reused, an unfinished training run
    resumes from its last checkpoint, and synthesis completes its plan.
    """
    from capaug.classifier.downstream import run_downstream

    from .split import load_split
    from .synthesize import synthesize
    from .train import checkpoint_dirs

    run_dir = Path(run_dir)
    model_dir = run_dir / "diffusion" / "model"
    if not (model_dir / "capaug.json").is_file():
        run_training(data, run_dir, recipe, resume=bool(checkpoint_dirs(run_dir)), callback=on_train)
    synthesize(model_dir, run_dir / "synthetic", recipe.synthesize, split=load_split(run_dir), on_progress=on_synthesis)
    return run_downstream(run_dir, recipe.downstream, data_cfg=recipe.data, on_model=on_model)
