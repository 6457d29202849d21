"""Stage entry points on a run folder: what each `capaug` command does, callable from Python.

    from capaug.recipes import load_recipe
    from capaug.augment.pipeline import run_training
    result = run_training("builtin:digits-lt", "runs/q", load_recipe("quickstart"))
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

import yaml

from .config import Recipe
from .errors import CapaugError
from .devices import process_state
from .io import write_json, write_yaml
from .model_io import ModelInfo
from .runlock import locks_run
from .split import prepare_split

RECORD = "pipeline.json"
RECORD_FORMAT = "capaug-pipeline/1"
RECIPE_FILE = "recipe.yaml"
TRAINING_SECTIONS = ("train", "data")  # recorded in RUN/diffusion/config.yaml only: the copy a resume checks


def data_spec(data: Optional[str], run_dir: Path, recipe: Recipe) -> Optional[str]:
    """The data a command trains on: DATA if given, else the run's own split (None) once it has one; a recipe's
    dataset is only a new run's default, so resuming a run never needs DATA repeated."""
    return data or (None if (Path(run_dir) / "split.json").is_file() else recipe.dataset)


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
    origin: Optional[str] = None,
):
    """Split (or reuse RUN/split.json), then train. On `resume`, `recipe` may differ from the run's recorded
    settings only in recovery settings (`resume.RECOVERY`); `resumed_recipe` builds it from the run itself.
    Once training has started or resumed, `recipe` becomes the run's recipe (`RUN/recipe.yaml`, see
    `record_recipe`; `origin`: the --recipe it came from)."""
    from .tracking import tracker_name
    from .train import train

    tracker_name(report_to)  # an unknown or uninstalled tracker is refused before the split is written
    run_dir = Path(run_dir)
    saved = run_dir / "diffusion" / "config.yaml"
    if resume and from_pretrained is None and saved.is_file():
        from_pretrained = yaml.safe_load(saved.read_text()).get("from_pretrained")
    spec = data_spec(data, run_dir, recipe)
    if spec is None and not (run_dir / "split.json").is_file():
        raise CapaugError("no data given: pass DATA (a folder, .npz, .csv or builtin:digits-lt) or a recipe with a dataset")
    split = prepare_split(spec, run_dir, recipe.data)
    before = _stamp(saved)
    try:
        return train(split, recipe.train, run_dir, data_cfg=recipe.data, resume=resume,
                     from_pretrained=str(from_pretrained) if from_pretrained else None, callback=callback,
                     report_to=report_to)
    finally:  # config.yaml rewritten = the run checks passed and training began (an interrupted one included)
        if _stamp(saved) != before and process_state().is_main_process:
            record_recipe(run_dir, recipe, origin, split.source["path"])


def resumed_recipe(run_dir: str | Path, overrides: Mapping[str, Any], base: Optional[Recipe] = None) -> Optional[Recipe]:
    """The run's recorded train and data settings (RUN/diffusion/config.yaml) with `overrides` ({"train.lr": 1e-4})
    applied, and the other sections from `base` (default: the run's recipe.yaml; an older run without it: the
    defaults): what `capaug train --resume` continues. None when the run has no recorded settings."""
    from capaug.recipes import set_dotted, validate

    saved = Path(run_dir) / "diffusion" / "config.yaml"
    if not saved.is_file():
        return None
    recorded = yaml.safe_load(saved.read_text())
    rest = base.model_dump(mode="json") if base is not None else _recipe_record(run_dir) or {}
    raw = {key: value for key, value in rest.items() if key != "origin"}
    raw |= {"train": recorded["train"], "data": recorded.get("data", {})}
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    return validate(raw, f"the settings recorded in {run_dir}")


def run_recipe(run_dir: str | Path, overrides: Optional[Mapping[str, Any]] = None) -> Optional[tuple[Recipe, Optional[str]]]:
    """The run's recipe with `overrides` applied, and its origin (the --recipe it was made with): what the later
    stages use when no --recipe is given. None for a run folder without RUN/recipe.yaml (made before it existed)."""
    record = _recipe_record(run_dir)
    if record is None:
        return None
    recipe = resumed_recipe(run_dir, overrides or {})
    if recipe is None:
        raise CapaugError(f"{Path(run_dir) / RECIPE_FILE} needs {Path(run_dir) / 'diffusion' / 'config.yaml'} "
                          "(the run's train and data settings), which is missing")
    return recipe, record.get("origin")


def recorded_origin(run_dir: str | Path) -> Optional[str]:
    """The --recipe a run was made with, as RUN/recipe.yaml records it; None without a record or a name."""
    record = _recipe_record(run_dir)
    return record.get("origin") if record else None


def record_recipe(run_dir: Path, recipe: Recipe, origin: Optional[str], dataset: Optional[str]) -> None:
    """Write RUN/recipe.yaml: `origin`, `dataset` (the run's data) and every section but train and data, which
    stay in RUN/diffusion/config.yaml alone (a resume checks and rewrites that copy); the file says so in their place."""
    sections = recipe.model_dump(mode="json")
    pointer = "recorded in diffusion/config.yaml"
    write_yaml(run_dir / RECIPE_FILE, {"origin": origin, **sections, "dataset": dataset,
                                       **{key: pointer for key in TRAINING_SECTIONS}})


def _recipe_record(run_dir: str | Path) -> Optional[dict]:
    """RUN/recipe.yaml without its train/data pointers; None when absent."""
    path = Path(run_dir) / RECIPE_FILE
    if not path.is_file():
        return None
    try:
        record = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise CapaugError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(record, dict):
        raise CapaugError(f"{path} must be a mapping of settings; delete it to fall back to --recipe")
    return {key: value for key, value in record.items() if key not in TRAINING_SECTIONS}


def _stamp(path: Path) -> Optional[tuple[int, int]]:
    """Which version of `path` is there (atomic writes replace the inode), None when absent."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


@dataclass
class PipelineResult:
    """What `run_pipeline` left in the run folder, and what this call did to each stage."""

    run_dir: Path
    stages: dict[str, str]  # stage -> "ran" | "resumed" | "skipped", in order
    model: ModelInfo
    synthesis: dict  # RUN/synthetic/plan.json
    downstream: dict  # RUN/downstream/metrics.json
    evaluation: Optional[dict] = None  # RUN/eval/metrics.json, with `evaluate`


@locks_run("pipeline", data=lambda args: args["data"] or args["recipe"].dataset)
def run_pipeline(
    data: Optional[str],
    run_dir: str | Path,
    recipe: Recipe,
    *,
    evaluate: bool = False,
    on_stage: Optional[Callable[[str, str], None]] = None,
    on_train: Optional[Callable[[dict], None]] = None,
    on_synthesis: Optional[Callable[[str, int, int], None]] = None,
    on_model: Optional[Callable[[str, int, dict], None]] = None,
    on_eval: Optional[Callable[[str], None]] = None,
    origin: Optional[str] = None,
) -> PipelineResult:
    """train -> synthesize -> downstream (-> evaluate) on one run folder, under one run lock.

    Rerunning picks up where an earlier call stopped: a finished model is reused (its recorded settings must
    agree with `recipe` as a resume's would), an unfinished training run resumes from its last checkpoint,
    synthesis completes its plan, and a stage whose output `RUN/pipeline.json` records as made from the same
    request is skipped. `on_stage(stage, message)` gets one line per stage decision; the other callbacks are
    the stages' own progress callbacks. Once the train stage has passed, `recipe` is the run's recipe
    (`RUN/recipe.yaml`; `origin`: the --recipe it came from).
    """
    from capaug.classifier.downstream import planned_models, run_downstream

    from .model_io import read_model_info
    from .split import load_split
    from .synthesize import plan_for, synthesize

    run_dir = Path(run_dir)
    say = on_stage or (lambda stage, message: None)
    model_dir, synthetic = run_dir / "diffusion" / "model", run_dir / "synthetic"
    stages = {"train": _train_stage(data, run_dir, recipe, say, on_train, origin)}
    split, model = load_split(run_dir), read_model_info(model_dir)
    record = _Record(run_dir)

    def make_synthetic(before: dict) -> str:
        # a set this pipeline made from a model that has since been retrained (more --steps) is remade whole
        made = _digest(synthetic / "plan.json")
        stale = (made is not None and before.get("output") == made
                 and before["request"]["model_hash"] != model.model_hash)
        resumed = (synthetic / "plan.json").is_file() and not stale
        planned = sum(p.generate for p in plan_for(model_dir, recipe.synthesize.target)[1])
        say("synthesize", f"target {recipe.synthesize.target}: {planned} images, "
            + ("remaking the set of the earlier model in " if stale else "completing " if resumed else "into ")
            + str(synthetic))
        result = synthesize(model_dir, synthetic, recipe.synthesize, split=split, overwrite=stale,
                            on_progress=on_synthesis)
        say("synthesize", f"finished: {result.made} new images")
        return "resumed" if resumed else "ran"

    stages["synthesize"] = record.stage(
        "synthesize", {"settings": recipe.synthesize, "model_hash": model.model_hash},
        synthetic / "plan.json", make_synthetic, say)
    shared = {"data": recipe.data, "split_hash": split.hash, "synthetic": _digest(synthetic / "manifest.csv")}

    def classify(_previous: dict) -> str:
        say("downstream", f"{planned_models(recipe.downstream, run_dir=run_dir)} models planned")
        run_downstream(run_dir, recipe.downstream, data_cfg=recipe.data, on_model=on_model,
                       synth_cfg=recipe.synthesize, on_synthesis=on_synthesis)
        return "ran"

    stages["downstream"] = record.stage(
        "downstream", {"settings": recipe.downstream, **shared}, run_dir / "downstream" / "metrics.json", classify,
        say)
    if evaluate:
        from .evaluate import evaluate_run

        def score(_previous: dict) -> str:
            evaluate_run(run_dir, downstream=recipe.downstream, data_cfg=recipe.data,
                         audit_threshold=recipe.synthesize.audit_threshold, on_stage=on_eval)
            return "ran"

        stages["evaluate"] = record.stage(
            "evaluate", {"downstream": recipe.downstream, "audit_threshold": recipe.synthesize.audit_threshold,
                         **shared}, run_dir / "eval" / "metrics.json", score, say)
    read = lambda path: json.loads(path.read_text())  # noqa: E731
    return PipelineResult(run_dir, stages, model, read(synthetic / "plan.json"),
                          read(run_dir / "downstream" / "metrics.json"),
                          read(run_dir / "eval" / "metrics.json") if evaluate else None)


def _train_stage(data: Optional[str], run_dir: Path, recipe: Recipe, say, on_train, origin: Optional[str]) -> str:
    """Skip a finished model trained with these settings, resume an interrupted run, or train from scratch."""
    from .checkpoints import checkpoint_dirs
    from .model_io import read_model_info

    model_dir = run_dir / "diffusion" / "model"
    steps = recipe.train.steps
    if (model_dir / "capaug.json").is_file() and read_model_info(model_dir).step == steps:
        split = _check_finished_run(data, run_dir, recipe, steps)
        record_recipe(run_dir, recipe, origin, split.source["path"])
        say("train", f"skipped: {model_dir} is finished ({steps} steps)")
        return "skipped"
    found = checkpoint_dirs(run_dir)
    say("train", f"resuming from {found[-1].name} to {steps} steps" if found else f"training {steps} steps")
    result = run_training(data, run_dir, recipe, resume=bool(found), callback=on_train, origin=origin)
    say("train", f"finished: {result.step} steps in {result.seconds / 60:.1f} min, final loss {result.final_loss:.4f}")
    return "resumed" if found else "ran"


def _check_finished_run(data: Optional[str], run_dir: Path, recipe: Recipe, step: int):
    """A finished model is reused only for the same data and settings a resume would accept; -> the run's split."""
    from .resume import recorded_settings, resume_changes, saved_settings

    split = prepare_split(data_spec(data, run_dir, recipe), run_dir, recipe.data, check=False)  # refuses other data
    saved = yaml.safe_load((run_dir / "diffusion" / "config.yaml").read_text())
    run = {key: saved.get(key) for key in ("split_hash", "from_pretrained")}
    try:
        resume_changes(saved_settings(saved), recorded_settings(recipe.train, recipe.data, run), step)
    except CapaugError as e:
        raise CapaugError(f"the finished model in {run_dir / 'diffusion'} does not fit the recipe: {e}") from None
    return split


class _Record:
    """`RUN/pipeline.json`: per stage, the request it was made from and a digest of the file it wrote, so a
    rerun skips a stage only when both still hold (a stage rerun by its own command changes the digest)."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / RECORD
        self.stages = json.loads(self.path.read_text())["stages"] if self.path.is_file() else {}

    def stage(self, name: str, request: dict, output: Path, work: Callable[[dict], str], say) -> str:
        """Skip stage `name`, or run `work(the stage's previous entry or {})` and record it."""
        request = json.loads(json.dumps(request, default=lambda v: v.model_dump(mode="json")))
        entry = self.stages.pop(name, {})
        if entry.get("request") == request and output.is_file() and entry.get("output") == _digest(output):
            self.stages[name] = entry
            say(name, f"skipped: {output} is up to date")
            return "skipped"
        self._write()  # a crash in `work` must not leave the old entry standing for a half-written output
        status = work(entry)
        self.stages[name] = {"request": request, "output": _digest(output)}
        self._write()
        return status

    def _write(self) -> None:
        write_json(self.path, {"format": RECORD_FORMAT, "stages": self.stages})


def _digest(path: Path) -> Optional[str]:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
