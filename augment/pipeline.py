"""Stage entry points on a run folder: what each `capaug` command does, callable from Python.

    from capaug.recipes import load_recipe
    from capaug.augment.pipeline import run_training
    result = run_training("builtin:digits-lt", "runs/q", load_recipe("quickstart"))
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from .config import Recipe
from .errors import CapaugError
from .runlock import locks_run
from .split import prepare_split


@locks_run("train", data=lambda args: args["data"] or args["recipe"].dataset)
def run_training(
    data: Optional[str],
    run_dir: str | Path,
    recipe: Recipe,
    *,
    resume: bool = False,
    from_pretrained: Optional[str | Path] = None,
    callback: Optional[Callable[[dict], None]] = None,
    report_to: Optional[str] = None,
):
    """Split (or reuse RUN/split.json), then train. On `resume`, `recipe` may differ from the run's recorded
    settings only in recovery settings (`resume.RECOVERY`); `resumed_recipe` builds it from the run itself."""
    from .tracking import tracker_name
    from .train import train

    tracker_name(report_to)  # an unknown or uninstalled tracker is refused before the split is written
    run_dir = Path(run_dir)
    saved = run_dir / "diffusion" / "config.yaml"
    if resume and from_pretrained is None and saved.is_file():
        from_pretrained = yaml.safe_load(saved.read_text()).get("from_pretrained")
    spec = data or recipe.dataset
    if spec is None and not (run_dir / "split.json").is_file():
        raise CapaugError("no data given: pass DATA (a folder, .npz, .csv or builtin:digits-lt) or a recipe with a dataset")
    split = prepare_split(spec, run_dir, recipe.data)
    return train(split, recipe.train, run_dir, data_cfg=recipe.data, resume=resume,
                 from_pretrained=str(from_pretrained) if from_pretrained else None, callback=callback,
                 report_to=report_to)


def resumed_recipe(run_dir: str | Path, overrides: Mapping[str, Any]) -> Optional[Recipe]:
    """The run's recorded train and data settings with `overrides` ({"train.lr": 1e-4}) applied: what
    `capaug train --resume` continues. None when the run has no recorded settings (nothing to resume)."""
    from capaug.recipes import set_dotted, validate

    saved = Path(run_dir) / "diffusion" / "config.yaml"
    if not saved.is_file():
        return None
    recorded = yaml.safe_load(saved.read_text())
    raw = {"train": recorded["train"], "data": recorded.get("data", {})}
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return validate(raw, f"--resume of {run_dir}")


@locks_run("pipeline", data=lambda args: args["data"])
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
    from .checkpoints import checkpoint_dirs

    run_dir = Path(run_dir)
    model_dir = run_dir / "diffusion" / "model"
    if not (model_dir / "capaug.json").is_file():
        run_training(data, run_dir, recipe, resume=bool(checkpoint_dirs(run_dir)), callback=on_train)
    synthesize(model_dir, run_dir / "synthetic", recipe.synthesize, split=load_split(run_dir), on_progress=on_synthesis)
    return run_downstream(run_dir, recipe.downstream, data_cfg=recipe.data, on_model=on_model)
