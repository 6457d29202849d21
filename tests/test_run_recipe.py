"""A run folder remembers its recipe: `capaug train --recipe R` writes RUN/recipe.yaml, and the later stages use
it when no --recipe is given; an older run without it falls back to quickstart with a warning; --recipe wins."""

import json
import shutil

import pytest
import yaml

from capaug.augment.errors import CapaugError
from capaug.augment.pipeline import run_recipe, run_training
from capaug.recipes import load_recipe

from test_run_cmd import TINY_TRAIN, Interrupt, capaug_here

# the small recipe (32 px, a 3-level UNet) cut down to the tiny test model; its own synthesize/downstream stay
SMALL_TINY = {**TINY_TRAIN, "train.steps": 2, "train.image_size": 16, "train.unet.layers_per_block": 1,
              "train.unet.attention_levels": [False, True], "train.unet.dropout": 0.0}
SETS = [a for k, v in SMALL_TINY.items() for a in ("--set", f"{k}={json.dumps(v)}")]
FALLBACK = "using the quickstart recipe"  # the warning of a run without a recorded recipe


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """`capaug train --recipe small` with a downstream and a synthesis override, 2 steps, then a resume to 3."""
    run = tmp_path_factory.mktemp("recipe") / "run"
    trained = capaug_here("train", "builtin:digits-lt", "--run", str(run), "--recipe", "small", *SETS,
                          "--set", "downstream.epochs=1", "--set", "synthesize.target=balanced:20")
    assert trained.returncode == 0, trained.stderr
    resumed = capaug_here("train", "--run", str(run), "--resume", "--steps", "3")
    assert resumed.returncode == 0, resumed.stderr
    assert FALLBACK not in resumed.stderr
    return run


def test_train_records_the_resolved_recipe_and_keeps_train_settings_in_config_yaml(run):
    small, quickstart = load_recipe("small"), load_recipe("quickstart")
    recorded = yaml.safe_load((run / "recipe.yaml").read_text())
    assert recorded["origin"] == "small"  # kept by the resume, which was given no --recipe
    assert recorded["dataset"] == "builtin:digits-lt"
    assert recorded["downstream"]["epochs"] == 1 and recorded["downstream"]["lr"] == small.downstream.lr
    assert small.downstream.lr != quickstart.downstream.lr
    assert recorded["synthesize"] == {**small.synthesize.model_dump(mode="json"), "target": "balanced:20"}
    # one copy of the training settings: config.yaml, which the resume rewrote with its new step count
    assert all(isinstance(recorded[key], str) and "config.yaml" in recorded[key] for key in ("train", "data"))
    config = yaml.safe_load((run / "diffusion" / "config.yaml").read_text())
    assert config["train"]["steps"] == 3 and config["train"]["unet"]["block_out_channels"] == [16, 32]


def test_downstream_without_recipe_uses_the_runs_recipe(run):
    result = capaug_here("downstream", "--run", str(run), "--arms", "reweight", "--no-tune", "--seeds", "1")
    assert result.returncode == 0, result.stderr
    assert FALLBACK not in result.stderr
    settings = json.loads((run / "downstream" / "metrics.json").read_text())["settings"]
    small, quickstart = load_recipe("small").downstream, load_recipe("quickstart").downstream
    assert (settings["lr"], settings["epochs"]) == (small.lr, 1)
    # small has no classifier size (the data's), quickstart's is 16 px
    assert settings["image_size"] == settings["real_size"][0] != quickstart.image_size


def test_synthesize_without_recipe_uses_the_runs_recipe_and_an_explicit_one_wins(run):
    plan = capaug_here("synthesize", "--run", str(run), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "plan: balanced:20" in plan.stdout and FALLBACK not in plan.stderr
    given = capaug_here("synthesize", "--run", str(run), "--dry-run", "--recipe", "quickstart")
    assert given.returncode == 0, given.stderr
    assert "plan: balanced " in given.stdout.replace("\n", " ") and "balanced:20" not in given.stdout
    assert "made with small" in given.stdout


def test_a_run_without_recipe_yaml_falls_back_to_quickstart_with_a_warning(run, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns("recipe.yaml", "checkpoints", "downstream"))
    plan = capaug_here("synthesize", "--run", str(old), "--dry-run")
    assert plan.returncode == 0, plan.stderr
    assert "plan: balanced " in plan.stdout.replace("\n", " ")
    lines = [line for line in plan.stderr.splitlines() if FALLBACK in line]
    assert len(lines) == 1 and "recipe.yaml" in lines[0] and "--recipe" in lines[0]
    outside = capaug_here("synthesize", "--model", str(old / "diffusion" / "model"), "--out", str(tmp_path / "syn"),
                          "--dry-run")
    assert outside.returncode == 0, outside.stderr
    assert "no --run" in outside.stderr and FALLBACK in outside.stderr


def test_an_interrupted_training_records_its_recipe_and_a_refused_resume_changes_nothing(tmp_path):
    run = tmp_path / "run"

    def stop_at_step_3(row):
        if row["step"] == 3:
            raise Interrupt

    with pytest.raises(Interrupt):
        run_training("builtin:digits-lt", run, load_recipe("quickstart", {**TINY_TRAIN, "downstream.seeds": 2}),
                     callback=stop_at_step_3, origin="quickstart")
    recipe, origin = run_recipe(run)
    assert (origin, recipe.downstream.seeds, recipe.train.unet.block_out_channels) == ("quickstart", 2, [16, 32])
    before = (run / "recipe.yaml").read_bytes()
    other = load_recipe("quickstart", {**TINY_TRAIN, "train.method": "plain", "downstream.seeds": 4})
    with pytest.raises(CapaugError, match="cannot change method"):
        run_training(None, run, other, resume=True, origin="mine.yaml")
    assert (run / "recipe.yaml").read_bytes() == before
