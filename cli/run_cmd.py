"""`capaug run`: train, synthesize, downstream (and evaluate) on one run folder in one command, resumable."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer

from capaug.classifier.arms import split_specs

from .common import (ArmsOption, DataArgument, MixedPrecisionOption, RecipeOption, SeedsOption, SetOption,
                     TargetOption, TrainStepsOption, TuneOption, console, human_output_on_stderr, recipe_for_run)
from .progress import Progress

FORMAT = "capaug-run/1"


def run(
    data: Optional[str] = DataArgument,
    run: Path = typer.Option(..., "--run", help="Run folder (created if needed; rerun the command to resume)."),
    recipe: Optional[str] = RecipeOption,
    steps: Optional[int] = TrainStepsOption,
    target: Optional[str] = TargetOption,
    arms: Optional[str] = ArmsOption,
    tune: Optional[bool] = TuneOption,
    seeds: Optional[int] = SeedsOption,
    mixed_precision: Optional[str] = MixedPrecisionOption,
    evaluate: bool = typer.Option(False, "--evaluate", help="Also score RUN/synthetic (FID, KID, precision/recall, memorization, CAS) into RUN/eval/."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout at the end; everything else goes to stderr."),
    sets: Optional[list[str]] = SetOption,
) -> None:
    """Train, synthesize and compare classifiers in one go; a rerun skips finished stages and resumes the rest."""
    options = {
        "train.steps": steps, "synthesize.target": target,
        "downstream.arms": split_specs(arms) if arms is not None else None, "downstream.tune": tune,
        "downstream.seeds": seeds, "train.mixed_precision": mixed_precision,
        "downstream.mixed_precision": mixed_precision,
    }
    # a rerun without --recipe continues with the run's recipe; a given one must agree with its train settings
    cfg, origin = recipe_for_run(recipe, run, sets, new_run=True, **options)
    run_all(data, run, cfg, origin=origin, evaluate=evaluate, json_output=json_output)


def run_all(data: Optional[str], run: Path, recipe, *, origin: Optional[str], evaluate: bool = False,
            json_output: bool = False, title: str = "capaug run") -> None:
    """`run_pipeline` with progress, the stages' summaries, and the `--json` object (`capaug quickstart` too);
    `origin`: the --recipe that `recipe` came from, recorded in RUN/recipe.yaml."""
    from capaug.augment.pipeline import data_spec, run_pipeline
    from capaug.classifier.downstream import plan_specs

    from .downstream_cmd import print_summary

    plan_specs(recipe.downstream, None, {}, recipe.downstream.tune)  # bad arm specs fail before training
    with human_output_on_stderr(json_output):
        console.rule(f"{title}: {data_spec(data, run, recipe) or 'the run split'} -> {run}")
        with Progress() as progress:
            result = run_pipeline(
                data, run, recipe, evaluate=evaluate, origin=origin,
                on_stage=progress.on_stage, on_train=progress.on_train, on_synthesis=progress.on_synthesis,
                on_model=progress.on_model, on_eval=progress.on_eval)
        print_summary(result.downstream, run)
        if result.evaluation is not None:
            from .evaluate_cmd import summary_table

            console.print(summary_table(result.evaluation))
        console.print("stages: " + ", ".join(f"{stage} {status}" for stage, status in result.stages.items()),
                      highlight=False)
    if json_output:
        sys.stdout.write(json.dumps(run_summary(result)) + "\n")
        sys.stdout.flush()


def run_summary(result) -> dict:
    """The `--json` object (schema: docs/run.md)."""
    metrics, run = result.downstream, result.run_dir.resolve()
    verdict = metrics["verdict"]

    def score(arm: Optional[str]) -> Optional[float]:
        return metrics["arms"][arm]["summary"]["balanced_accuracy"]["mean"] if arm in metrics["arms"] else None

    numbers = {
        "train_steps": result.model.step,
        "synthetic_images": sum(c["generate"] for c in result.synthesis["classes"]),
        "classifier_seeds": metrics["settings"]["seeds"],
        "candidate_balanced_accuracy": score(verdict["candidate"]),
        "baseline_balanced_accuracy": score(verdict["baseline"]),
        "difference": verdict["mean"], "interval95": verdict["interval95"], "bootstrap95": verdict["bootstrap95"],
    }
    if result.evaluation is not None:
        generative, cas = result.evaluation["generative"], result.evaluation["cas"]
        numbers |= {"fid": generative["overall"]["fid"],
                    "fid_few": generative["per_group"].get("few", {}).get("fid"),
                    "cas_accuracy": cas["overall"]["rate"] if cas else None}
    return {
        "format": FORMAT,
        "status": "complete",
        "stages": result.stages,
        "verdict": {key: verdict[key] for key in ("status", "text", "candidate", "baseline", "winner")},
        "numbers": numbers,
        "paths": {
            "run": str(run), "model": str(run / "diffusion" / "model"), "synthetic": str(run / "synthetic"),
            "downstream_metrics": str(run / "downstream" / "metrics.json"),
            "downstream_report": str(run / "downstream" / "report.md"),
            "eval_metrics": str(run / "eval" / "metrics.json") if result.evaluation is not None else None,
        },
    }


def register(app: typer.Typer) -> None:
    app.command("run")(run)
