"""The `synthetic-features` arm (issue 18): the CM feature denoiser, its samples, the budget, the frozen encoder."""

import json
import re

import pytest
import torch

from capaug.augment.capacity import capacity_gate, capacity_layers, fold_capacity
from capaug.augment.config import DataConfig, DownstreamConfig, FeatureSynthesisConfig
from capaug.augment.errors import CapaugError
from capaug.augment.feature_diffusion import synthesize_features, train_denoiser
from capaug.augment.split import load_split, prepare_split
from capaug.classifier import downstream as downstream_module
from capaug.classifier import engine
from capaug.classifier.arm_plan import PreparedArm
from capaug.classifier.arms import parse_arm
from capaug.classifier.experiment import Experiment
from capaug.cli.app import main

COUNTS = {"big": 16, "mid": 8, "rare": 6}
TINY = dict(model="resnet10t", image_size=16, batch_size=8, bootstrap=20)
SMALL_GENERATOR = dict(steps=20, hidden=32, depth=1, batch_size=32, sample_steps=10)


def toy_features(counts=(40, 15, 5), dim=8, seed=0):
    """Gaussian blobs, one per class, with `counts` points each."""
    generator = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(len(counts), dim, generator=generator)
    features = torch.cat([centers[k] + torch.randn(n, dim, generator=generator) for k, n in enumerate(counts)])
    labels = torch.cat([torch.full((n,), k) for k, n in enumerate(counts)])
    return features, labels


@pytest.fixture
def run(tmp_path, make_tree):
    """A tiny split and no RUN/synthetic: the arm makes its own features."""
    run = tmp_path / "run"
    prepare_split(str(make_tree(tmp_path / "data", COUNTS, mode="L")), run, DataConfig())
    return run


def test_the_cm_denoiser_trains_its_terms_and_folds_to_the_same_function():
    features, labels = toy_features()
    cfg = FeatureSynthesisConfig(**SMALL_GENERATOR, targets=["blocks.*", "input"])
    fitted = train_denoiser(features, labels, 3, cfg, seed=0)
    layers = capacity_layers(fitted.model)
    assert sorted(layers) == ["blocks.0.linear1", "blocks.0.linear2", "input"]
    assert all(layer.terms["expert"].B.weight.abs().sum() > 0 for layer in layers.values())  # theta_e learned
    assert fitted.lambda_div > 0 and len(fitted.d_by_class) == 3 and torch.isfinite(torch.tensor(fitted.final_loss))
    x, t, y = torch.randn(16, 8), torch.randint(1000, (16,)), torch.tensor([0, 1, 2, 3] * 4)  # 3: the null class
    with torch.no_grad():
        unfolded = fitted.model(x, t, y)
        with capacity_gate(fitted.model, 0.0):
            without_terms = fitted.model(x, t, y)
        folded = fold_capacity(fitted.model)(x, t, y)
    assert not capacity_layers(fitted.model)
    assert (unfolded - without_terms).abs().max() > 1e-4  # the terms change the prediction...
    assert torch.allclose(folded, unfolded, atol=1e-5, rtol=0)  # ...and folding keeps it
    plain = train_denoiser(features, labels, 3, FeatureSynthesisConfig(**SMALL_GENERATOR, method="plain"), seed=0)
    assert not capacity_layers(plain.model) and plain.lambda_div is None and plain.d_by_class is None


def test_bad_capacity_targets_are_one_clear_error():
    features, labels = toy_features()
    with pytest.raises(CapaugError, match="matches no conv or linear layer of the FeatureDenoiser"):
        train_denoiser(features, labels, 3, FeatureSynthesisConfig(**SMALL_GENERATOR, targets=["up"]), seed=0)


def test_sampled_features_have_the_planned_counts_and_depend_only_on_the_seed():
    features, labels = toy_features()
    cfg = FeatureSynthesisConfig(**SMALL_GENERATOR, guidance=2.0)
    state = torch.get_rng_state()
    made, made_labels, record = synthesize_features(features, labels, [0, 25, 35], cfg, seed=3)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random stream is untouched
    assert made.shape == (60, 8) and made.dtype == torch.float32 and torch.isfinite(made).all()
    assert torch.bincount(made_labels, minlength=3).tolist() == [0, 25, 35] == record["generated"]
    assert record["steps"] == 20 and record["seconds"] > 0 and record["sampling_seconds"] > 0
    again, again_labels, _ = synthesize_features(features, labels, [0, 25, 35], cfg, seed=3)
    assert torch.equal(made, again) and torch.equal(made_labels, again_labels)
    other, _, _ = synthesize_features(features, labels, [0, 25, 35], cfg, seed=4)
    assert not torch.equal(made, other)
    # back in the features' own space: the scale of the real features, not of the standardized ones
    assert made.abs().mean() > 0.5 * features.abs().mean()


def test_the_arm_trains_exactly_the_budget_and_its_head_phase_moves_only_the_final_layer(run, monkeypatch):
    split = load_split(run)
    cfg = DownstreamConfig(**TINY, epochs=2, features=FeatureSynthesisConfig(**SMALL_GENERATOR))
    experiment = Experiment.prepare(split, cfg)
    arm = PreparedArm(parse_arm("synthetic-features+la[head_frac=0.5,w=0.5]"))
    phases = arm.phases(experiment, seed=0)
    assert [p.steps for p in phases] == [experiment.budget // 2] * 2 and phases[1].features
    states = {}
    build = phases[1].loader

    def snapshot_then_build(model):
        states["phase 1 end"] = {k: v.clone() for k, v in model.state_dict().items()}
        return build(model)

    predict = engine.predict

    def snapshot_predict(model, *args):
        states["last val"] = {k: v.clone() for k, v in model.state_dict().items()}
        return predict(model, *args)

    phases[1].loader = snapshot_then_build
    monkeypatch.setattr(engine, "predict", snapshot_predict)
    trained = experiment.fit_phases(phases, seed=0)
    assert trained.optimizer_steps == experiment.budget
    head = {f"{name}.{key}" for name, module in trained.model.named_modules()
            if module is trained.model.get_classifier() for key in module.state_dict()}
    before, after = states["phase 1 end"], states["last val"]  # the last val score comes after the last step
    assert head and all(torch.equal(before[k], after[k]) for k in before if k not in head)  # encoder, BN stats
    assert any(not torch.equal(before[k], after[k]) for k in head)
    counts = split.counts("train")
    generated = trained.record["feature_synthesis"]["generated"]
    assert generated == [max(counts) - c for c in counts] and generated[0] == 0
    record = arm.describe(experiment)
    assert record["synthetic_counts"] == generated and record["optimizer_steps"] == experiment.budget
    assert record["settings"]["head"] == {"fraction": 0.5, "steps": experiment.budget // 2, "loss": "logit-adjusted",
                                          "generate": generated}
    prior = record["settings"]["logit_adjust"]["prior"]
    effective = [c + 0.5 * g for c, g in zip(counts, generated)]
    assert prior == pytest.approx([e / sum(effective) for e in effective])
    again = experiment.fit_phases(arm.phases(experiment, seed=0), seed=0)  # the seed decides everything on a CPU
    assert all(torch.equal(v, again.model.state_dict()[k]) for k, v in trained.model.state_dict().items())
    assert again.record["feature_synthesis"]["final_loss"] == trained.record["feature_synthesis"]["final_loss"]


def test_real_and_synthetic_features_end_to_end_on_digits(tmp_path, monkeypatch):
    run = tmp_path / "run"
    split = prepare_split("builtin:digits-lt", run, DataConfig())
    tested = []
    predict = downstream_module.predict

    def counting_predict(model, dataset, cfg, accelerator):
        tested.append(len(dataset))  # run_downstream predicts on the test split only
        return predict(model, dataset, cfg, accelerator)

    monkeypatch.setattr(downstream_module, "predict", counting_predict)
    cfg = DownstreamConfig(**{**TINY, "batch_size": 64}, epochs=1, seeds=2,
                           features=FeatureSynthesisConfig(**SMALL_GENERATOR))
    result = downstream_module.run_downstream(run, cfg, arms=["real", "synthetic-features"])
    assert not (run / "synthetic").exists() and result["synthetic_sets"] == {}
    assert tested == [len(split.test)] * 4  # 2 arms x 2 seeds, each model read the test split once
    budget = result["settings"]["budget"]["optimizer_steps"]
    assert [r["optimizer_steps"] for r in result["runs"]] == [budget] * 4
    counts = split.counts("train")
    made = [r["feature_synthesis"] for r in result["runs"] if r["arm"] == "synthetic-features"]
    assert [m["generated"] for m in made] == [[max(counts) - c for c in counts]] * 2
    assert all(m["steps"] == 20 and m["seconds"] > 0 for m in made)
    arm = result["arms"]["synthetic-features"]
    assert arm["base"] == "synthetic-features" and arm["synthetic_set"] is None
    assert arm["synthetic_images"] == sum(max(counts) - c for c in counts)
    assert result["verdict"]["candidate"] == "synthetic-features"
    saved = json.loads((run / "downstream" / "metrics.json").read_text())
    assert saved["settings"]["features"]["steps"] == 20 and saved["runs"][-1]["feature_synthesis"]["generated"]


def test_tune_grids_take_feature_arms_without_a_synthetic_set(run):
    cfg = DownstreamConfig(**TINY, epochs=1, seeds=1, tune=True, tune_seeds=1,
                           tune_grid=["synthetic-features", "synthetic-features[head_frac=0.3]"],
                           features=FeatureSynthesisConfig(**SMALL_GENERATOR))
    assert downstream_module.planned_models(cfg, ["real"], run_dir=run) == 3
    result = downstream_module.run_downstream(run, cfg, arms=["real"])
    assert result["tuning"]["chosen"] in ("synthetic-features", "synthetic-features[head_frac=0.3]")
    assert result["arms"]["tuned"]["base"] == "synthetic-features"
    assert result["verdict"]["candidate"] == "tuned"


@pytest.mark.parametrize("args, message", [
    (["--arms", "synthetic-features+crt"], r"synthetic-features takes \+la and w=, tau=, head_frac= only"),
    (["--arms", "synthetic-features[share=0.5]"], r"synthetic-features takes \+la"),
    (["--arms", "synthetic[head_frac=0.2]"], "head_frac= applies to synthetic-features only"),
    (["--arms", "synthetic-features[head_frac=0]"], r"head_frac=0 is outside \(0, 1\]"),
    (["--arms", "real", "--compare", "synthetic-features=elsewhere"], "is an arm name"),
    (["--arms", "synthetic-features", "--set", "downstream.features.target=bogus"], "unknown target 'bogus'"),
    (["--arms", "synthetic-features", "--set", "downstream.features.method=lowrank"], "method"),
])
def test_bad_settings_are_one_line(run, capsys, args, message):
    with pytest.raises(SystemExit) as ended:
        main(["downstream", "--run", str(run), *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert ended.value.code == 2 and "Traceback" not in err and len(lines) == 1, err
    assert re.search(message, lines[0]), lines[0]
