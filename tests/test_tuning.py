"""`--tune` at a bounded cost (tune_seeds) and over synthesis settings (tune_sets): counts, val-only choice."""

import json

import pytest

from capaug.augment.config import DataConfig, DownstreamConfig
from capaug.augment.split import prepare_split
from capaug.classifier import downstream as downstream_module
from capaug.classifier.experiment import Experiment

from test_classifier_downstream import write_synthetic

COUNTS = {"big": 16, "mid": 8, "rare": 6}
TINY = dict(model="resnet10t", image_size=16, epochs=1, batch_size=8, bootstrap=20)


@pytest.fixture
def run(tmp_path, make_tree, make_images):
    data = make_tree(tmp_path / "data", COUNTS, mode="L")
    run = tmp_path / "run"
    split = prepare_split(str(data), run, DataConfig())
    write_synthetic(run / "synthetic", make_images, split, {"mid": 4, "rare": 6}, seed=50)
    return run


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
    assert tuning["chosen"] == max(means, key=means.get) and "seeds 0..0" in tuning["selector"]
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
