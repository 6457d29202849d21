"""`--tune` at a bounded cost (tune_seeds) and over synthesis settings (tune_sets): counts, val-only choice."""

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel

from capaug.augment import synthesize as synthesize_module
from capaug.augment.config import DataConfig, DownstreamConfig, SynthesisConfig
from capaug.augment.errors import CapaugError
from capaug.augment.model_io import ModelInfo, save_diffusion_model
from capaug.augment.split import load_split, prepare_split
from capaug.classifier import downstream as downstream_module
from capaug.classifier.experiment import Experiment
from capaug.classifier.tuning import parse_tune_sets
from capaug.cli.app import main

from test_classifier_arms import run  # noqa: F401 (the pytest fixture: a tiny split with a synthetic set)

COUNTS = {"big": 16, "mid": 8, "rare": 6}
TINY = dict(model="resnet10t", image_size=16, epochs=1, batch_size=8, bootstrap=20)




@pytest.fixture
def watch(monkeypatch):
    """Counts every model trained and every model that reads the test split."""
    seen = {"trained": 0, "tested": 0, "totals": []}
    fit_phases, predict = Experiment.fit_phases, downstream_module.predict

    def counting_fit(self, phases, seed):
        seen["trained"] += 1
        return fit_phases(self, phases, seed)

    def counting_predict(model, dataset, cfg, accelerator):
        seen["tested"] += 1  # run_downstream predicts on the test split only (val is scored inside training)
        return predict(model, dataset, cfg, accelerator)

    monkeypatch.setattr(Experiment, "fit_phases", counting_fit)
    monkeypatch.setattr(downstream_module, "predict", counting_predict)
    seen["on_model"] = lambda arm, seed, info: seen["totals"].append((info["done"], info["total"]))
    return seen


def test_tune_seeds_scores_the_grid_on_fewer_seeds_and_the_choice_trains_every_seed(run, watch):
    cfg = DownstreamConfig(**TINY, seeds=3, tune=True, tune_seeds=1, tune_grid=["synthetic", "synthetic[w=0.5]"])
    planned = downstream_module.planned_models(cfg, ["real"], run_dir=run)
    result = downstream_module.run_downstream(run, cfg, arms=["real"], on_model=watch["on_model"])
    assert planned == watch["trained"] == 3 + 2 * 1 + (3 - 1) < 3 + 2 * 3  # real, the grid on seed 0, the rest
    assert watch["totals"][-1] == (planned, planned)
    tuning = result["tuning"]
    assert tuning["tune_seeds"] == 1 and tuning["seeds"] == 3
    assert [len(row["per_seed"]) for row in tuning["grid"]] == [1, 1]
    means = {row["spec"]: row["val_balanced_accuracy"]["mean"] for row in tuning["grid"]}
    assert tuning["chosen"] == max(means, key=means.get) and "over seed 0 of" in tuning["selector"]
    assert sorted(r["seed"] for r in result["runs"] if r["arm"] == "tuned") == [0, 1, 2]
    assert watch["tested"] == 3 + 3  # real and the chosen setting only: no other grid model read the test split
    assert {r["arm"] for r in result["runs"]} == {"real", "tuned"}
    saved = json.loads((run / "downstream" / "metrics.json").read_text())
    assert saved["settings"]["tune_seeds"] == 1 and saved["tuning"]["chosen"] == tuning["chosen"]


def test_a_choice_that_is_a_listed_arm_shares_its_models(run, watch, monkeypatch):
    monkeypatch.setattr(downstream_module, "best", lambda scores: "synthetic")
    cfg = DownstreamConfig(**TINY, seeds=2, tune=True, tune_seeds=1, tune_grid=["synthetic", "synthetic[w=0.5]"])
    planned = downstream_module.planned_models(cfg, ["synthetic"], run_dir=run)
    result = downstream_module.run_downstream(run, cfg, arms=["synthetic"], on_model=watch["on_model"])
    assert planned == 2 + 1 + 1 and watch["trained"] == planned - 1  # tuned = synthetic: no extra seed
    assert watch["totals"][-1] == (planned - 1, planned - 1)
    tuned = [r for r in result["runs"] if r["arm"] == "tuned"]
    listed = [r for r in result["runs"] if r["arm"] == "synthetic"]
    assert [r["balanced_accuracy"] for r in tuned] == [r["balanced_accuracy"] for r in listed]
    assert watch["tested"] == 2


def test_planned_models_resolves_the_default_seeds_from_the_split(run):
    cfg = DownstreamConfig(**TINY, tune=True, tune_grid=["synthetic", "synthetic+la", "synthetic[w=0.5]"])
    seeds = 5  # the default for a 16 px classifier input
    assert downstream_module.planned_models(cfg, ["real", "reweight"], run_dir=run) == 2 * seeds + 3 * 2 + seeds - 2
    everything = cfg.model_copy(update={"tune_seeds": None})
    assert downstream_module.planned_models(everything, ["real"], run_dir=run) == seeds + 3 * seeds


# ------------------------------------------------------------------ tuning over synthesis settings


SYNTH = SynthesisConfig(steps=2, batch_size=8)


@pytest.fixture
def model_run(tmp_path, make_tree):
    """A run with a split and a random tiny folded diffusion model (no RUN/synthetic)."""
    data = make_tree(tmp_path / "data", COUNTS, mode="L")
    run = tmp_path / "run"
    split = prepare_split(str(data), run, DataConfig())
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=16, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(16, 32),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=len(split.classes) + 1)
    info = ModelInfo(classes=split.classes, train_counts=split.counts(), split_hash=split.hash, image_size=16,
                     channels=1)
    save_diffusion_model(unet, DDPMScheduler(num_train_timesteps=100), info, run / "diffusion" / "model")
    return run


def test_tune_sets_make_each_set_once_choose_on_val_and_record_the_set(model_run, watch, monkeypatch):
    made, synthesize = [], synthesize_module.synthesize

    def recording(model_dir, out_dir, cfg, **kwargs):
        result = synthesize(model_dir, out_dir, cfg, **kwargs)
        made.append((Path(out_dir).name, cfg.source, list(cfg.strength), result.made))
        return result

    monkeypatch.setattr(synthesize_module, "synthesize", recording)
    cfg = DownstreamConfig(**TINY, seeds=2, tune=True, tune_seeds=1, tune_grid=["synthetic", "synthetic+la"],
                           tune_sets=["noise", "minority@0.5"])
    planned = downstream_module.planned_models(cfg, ["real", "reweight"], run_dir=model_run)
    result = downstream_module.run_downstream(model_run, cfg, arms=["real", "reweight"], synth_cfg=SYNTH,
                                              on_model=watch["on_model"])
    assert [(name, source) for name, source, _, _ in made] == [("synthetic-noise", "noise"),
                                                                 ("synthetic-minority-0.5", "minority")]
    assert made[1][2] == [0.5] and all(n > 0 for *_, n in made)
    tuning = result["tuning"]
    assert [row["spec"] for row in tuning["grid"]] == ["noise:synthetic", "noise:synthetic+la",
                                                        "minority@0.5:synthetic", "minority@0.5:synthetic+la"]
    means = {row["spec"]: row["val_balanced_accuracy"]["mean"] for row in tuning["grid"]}
    chosen = tuning["chosen"]
    assert chosen == max(means, key=means.get)
    assert (tuning["chosen_set"], tuning["chosen_setting"]) == tuple(chosen.split(":"))
    assert result["arms"]["tuned"]["synthetic_set"] == tuning["chosen_set"]
    assert result["arms"]["tuned"]["spec"] == chosen and chosen in result["verdict"]["text"]
    assert {"noise", "minority@0.5"} <= set(result["synthetic_sets"])
    # + 1: the reference classifier (RUN/eval) that judges each set's label fidelity, trained once
    assert planned + 1 == watch["trained"] == 2 * 2 + 4 * 1 + 1 + 1 and watch["tested"] == 2 * 2 + 2
    report = (model_run / "downstream" / "report.md").read_text()
    assert chosen in report and "Label fidelity" in report
    for tune_set in tuning["sets"]:  # judged by the reference classifier, per class made
        plan = json.loads((Path(tune_set["folder"]) / "plan.json").read_text())
        made_classes = {c["name"] for c in plan["classes"] if c["generate"]}
        assert set(tune_set["label_fidelity"]) == made_classes
        assert all(0 <= rate <= 1 for rate in tune_set["label_fidelity"].values())

    made.clear()  # a second call reuses the sets
    again = downstream_module.make_sets(model_run, parse_tune_sets(["minority@0.5", "noise"]), SYNTH,
                                        load_split(model_run))
    assert [n for *_, n in made] == [0, 0] and again["noise"] == model_run / "synthetic-noise"


@pytest.mark.parametrize("entry, message", [
    ("bogus", "unknown source 'bogus'"), ("minority@x", "strengths must be numbers"),
    ("minority@1.5", r"\(0, 1\]"), ("minority@0.5,,noise@", "strengths must be numbers"),
    ("noise@0.5", "takes no strength"),
])
def test_bad_tune_sets_are_one_line_exit_2(model_run, entry, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["downstream", "--run", str(model_run), "--arms", "real", "--tune-sets", entry, "--model", "resnet10t"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and re.search(message, err.replace("\n", " ")) and "Traceback" not in err
    assert not (model_run / "downstream").exists() and not list(model_run.glob("synthetic-*"))
    with pytest.raises(CapaugError, match="settings on synthetic"):
        downstream_module.plan_specs(DownstreamConfig(tune_grid=["ddpm+la"], tune_sets=["noise"]), None,
                                     {"ddpm": model_run}, True)
