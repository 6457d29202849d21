"""Synthetic-arm settings, the fair budget, --tune's val-only choice, and the statistics (issue 9)."""

import json

import numpy as np
import pytest
import torch
from scipy import stats as scipy_stats

from capaug.augment.config import DataConfig, DownstreamConfig
from capaug.augment.errors import CapaugError
from capaug.augment.split import load_split, prepare_split
from capaug.classifier import downstream as downstream_module
from capaug.classifier.arm_plan import effective_counts
from capaug.classifier.arms import parse_arm, parse_arms
from capaug.classifier.data import FolderReader, ResizedReader, SyntheticSet
from capaug.classifier.experiment import Experiment
from capaug.classifier.filtering import FilterScores, apply_band
from capaug.classifier.losses import make_loss
from capaug.classifier.metrics import model_metrics
from capaug.classifier.sampling import MixedBatchSampler
from capaug.classifier.stats import bootstrap_interval, t_interval
from capaug.cli.app import main

from test_classifier_downstream import write_synthetic

COUNTS = {"big": 16, "mid": 8, "rare": 6}
TINY = dict(model="resnet10t", image_size=16, epochs=2, batch_size=8, seeds=1, bootstrap=50)


@pytest.fixture
def run(tmp_path, make_tree, make_images):
    data = make_tree(tmp_path / "data", COUNTS, mode="L")
    run = tmp_path / "run"
    split = prepare_split(str(data), run, DataConfig())
    write_synthetic(run / "synthetic", make_images, split, {"mid": 4, "rare": 6}, seed=50)
    return run


def test_arm_syntax_is_canonical_and_refuses_unknown_settings():
    specs = parse_arms("real,synthetic+la[w=.5],synthetic+la[w=0.5],synthetic+crt+la+filter[low=0.3,share=0.25]")
    assert [s.name for s in specs] == ["real", "synthetic+la[w=0.5]",
                                       "synthetic+la+filter+crt[share=0.25,low=0.3]"]
    assert specs[1].w == 0.5 and specs[1].tau == 1.0 and specs[2].low == 0.3 and specs[2].crt_frac == 0.1
    assert parse_arm("ddpm+la", ("synthetic", "ddpm")).base == "ddpm"
    for bad, message in [("mixup", "unknown arm"), ("synthetic+mixup", r"unknown setting \+mixup"),
                         ("synthetic[lr=1]", "unknown setting 'lr=1'"), ("synthetic[w=0]", r"outside \(0, 1\]"),
                         ("synthetic[low=0.2]", r"needs \+filter"), ("reweight+la", "synthetic arms only"),
                         ("synthetic+filter[low=0.8,high=0.5]", "low <= high"), ("synthetic[w=a]", "not a number")]:
        with pytest.raises(CapaugError, match=message):
            parse_arm(bad)


def test_a_compare_set_is_listed_plain_only_when_no_arm_names_it():
    cfg, compare = DownstreamConfig(), {"ddpm": None, "cm": None}
    specs, _, _ = downstream_module.plan_specs(cfg, ["real", "ddpm+la"], compare, tune=False)
    assert [s.name for s in specs] == ["real", "ddpm+la", "cm"]


def test_every_arm_trains_the_same_number_of_optimizer_steps(run):
    cfg = DownstreamConfig(**TINY)
    arms = ["real", "oversample", "synthetic", "synthetic[share=0.5]", "synthetic+la+filter+crt[w=0.5,crt_frac=0.5]"]
    result = downstream_module.run_downstream(run, cfg, arms=arms)
    budget = result["settings"]["budget"]
    assert budget["steps_per_epoch"] == int(np.ceil(len(load_split(run).train) / 8))
    assert budget["optimizer_steps"] == 2 * budget["steps_per_epoch"]
    assert [r["optimizer_steps"] for r in result["runs"]] == [budget["optimizer_steps"]] * len(arms)
    assert all(a["optimizer_steps"] == budget["optimizer_steps"] for a in result["arms"].values())
    stacked = result["arms"]["synthetic+la+filter+crt[w=0.5,crt_frac=0.5]"]["settings"]
    assert stacked["weight"] == 0.5 and stacked["crt"]["steps"] == budget["optimizer_steps"] // 2
    kept, dropped = sum(stacked["filter"]["kept"]), sum(map(sum, stacked["filter"]["dropped"].values()))
    assert kept + dropped == 10
    assert sum(stacked["logit_adjust"]["prior"]) == pytest.approx(1.0)
    assert result["arms"]["synthetic[share=0.5]"]["sampler"] == "share"
    saved = json.loads((run / "downstream" / "metrics.json").read_text())
    assert saved["runs"][0]["optimizer_steps"] == budget["optimizer_steps"]


def test_real_and_synthetic_images_of_the_same_size_get_identical_transforms(run, tmp_path):
    from PIL import Image

    split = load_split(run)
    experiment = Experiment.prepare(split, DownstreamConfig(**TINY))
    key = split.train[0][0]
    pixels = experiment.reader.read(key)
    (tmp_path / "syn").mkdir()
    Image.fromarray(pixels[:, :, 0]).save(tmp_path / "syn" / "same.png")
    big = Image.fromarray(pixels[:, :, 0]).resize((32, 32), Image.NEAREST)
    big.save(tmp_path / "syn" / "big.png")
    synthetic = ResizedReader(FolderReader(tmp_path / "syn", split.mode), experiment.real_size)
    assert synthetic.read("big.png").shape == pixels.shape  # generator's size -> the real images' size
    for train in (True, False):
        real_item = experiment.dataset([(key, 0)], train=train, seed=3)[0][0]
        synthetic_item = experiment.dataset([("same.png", 0)], train=train, seed=3, reader=synthetic)[0][0]
        assert torch.equal(real_item, synthetic_item)


def test_tune_chooses_on_val_and_only_the_chosen_setting_reads_the_test_split(run, monkeypatch):
    split = load_split(run)
    test_size = len(split.test)
    tested = []
    original = downstream_module.predict

    def counting_predict(model, dataset, cfg, accelerator):
        if len(dataset) == test_size:
            tested.append(model)
        return original(model, dataset, cfg, accelerator)

    monkeypatch.setattr(downstream_module, "predict", counting_predict)
    cfg = DownstreamConfig(**{**TINY, "seeds": 2}, tune=True, tune_grid=["synthetic", "synthetic[w=0.5]"])
    result = downstream_module.run_downstream(run, cfg, arms=["real"])
    tuning = result["tuning"]
    means = {row["spec"]: row["val_balanced_accuracy"]["mean"] for row in tuning["grid"]}
    assert tuning["chosen"] == max(means, key=means.get) and list(result["arms"]) == ["real", "tuned"]
    assert len(tested) == 2 * 2  # real's two models and the chosen setting's two; no other grid member
    assert result["arms"]["tuned"]["spec"] == tuning["chosen"]
    assert all(r["arm"] in ("real", "tuned") for r in result["runs"])
    assert result["verdict"]["candidate"] == "tuned"


def test_cli_tune_with_a_grid_and_bad_specs(run, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["downstream", "--run", str(run), "--arms", "real,synthetic+bogus", "--model", "resnet10t"])
    assert exit_.value.code == 2 and "unknown setting +bogus" in capsys.readouterr().err.replace("\n", " ")
    assert not (run / "downstream").exists()
    with pytest.raises(SystemExit) as exit_:
        main(["downstream", "--run", str(run), "--arms", "real", "--tune", "--tune-grid", "synthetic,synthetic+la",
              "--model", "resnet10t", "--image-size", "16", "--epochs", "1", "--seeds", "2", "--batch-size", "8"])
    assert exit_.value.code == 0
    result = json.loads((run / "downstream" / "metrics.json").read_text())
    assert [row["spec"] for row in result["tuning"]["grid"]] == ["synthetic", "synthetic+la"]


def test_a_class_without_test_images_is_missing_not_zero():
    labels = np.array([0, 0, 1, 1])
    probs = np.eye(3)[[0, 1, 1, 1]] * 0.9 + 0.05
    m = model_metrics(labels, probs, ["many", "few", "few"])
    assert m["per_class_recall"] == [0.5, 1.0, None]
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["recall_few"] == pytest.approx(1.0)  # class 2 (few, no test image) is left out, not counted as 0


def test_intervals_t_over_seeds_and_paired_bootstrap_over_images():
    diffs = [0.01, 0.03, -0.01, 0.02, 0.04]
    low, high = t_interval(diffs)
    half = scipy_stats.t.ppf(0.975, 4) * np.std(diffs, ddof=1) / np.sqrt(5)
    assert (low, high) == pytest.approx((np.mean(diffs) - half, np.mean(diffs) + half))
    assert t_interval([0.1]) is None and t_interval([0.1, None]) is None
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], [50, 20, 5])
    base = rng.random((3, 75)) < 0.6
    assert bootstrap_interval(base, base, labels, 200) == [0.0, 0.0]
    better = base | (labels == 2)  # the rare class always right
    low, high = bootstrap_interval(better, base, labels, 200)
    assert 0 < low <= high


def test_sample_weights_share_sampler_effective_prior_and_filter_band():
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    ce = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    weighted = make_loss("cross-entropy", [1, 1])(logits, target, torch.tensor([1.0, 0.5]))
    assert weighted.item() == pytest.approx(((ce[0] + 0.5 * ce[1]) / 1.5).item())
    batches = list(MixedBatchSampler(10, 4, 8, 0.25, 5, torch.Generator().manual_seed(0)))
    assert len(batches) == 5 and all(sum(i >= 10 for i in b) == 2 and len(b) == 8 for b in batches)
    assert effective_counts([8, 2], [0, 8], 0.5, None, 8) == [8.0, 6.0]
    assert effective_counts([8, 2], [0, 8], 1.0, 0.5, 8) == pytest.approx([3.2, 0.8 + 4.0])
    items = [("a", 1), ("b", 1), ("c", 1), ("d", 1)]
    scores = FilterScores({"a": 0.05, "b": 0.5, "c": 0.99, "d": 0.5}, {"a": 0.3, "b": 0.3, "c": 0.3, "d": 0.001})
    kept, record = apply_band(SyntheticSet("s", None, items), scores, 0.2, 0.95, 0.02, 2)
    assert kept.items == [("b", 1)]
    assert record["dropped"] == {"near_copy": [0, 1], "below_band": [0, 1], "above_band": [0, 1]}


def test_the_terminal_table_names_every_arm_at_80_columns():
    from rich.console import Console

    from capaug.cli.downstream_cmd import summary_table

    spread = {"mean": 0.4, "std": 0.01}
    diff = {"balanced_accuracy": {"mean": 0.01, "std": 0.02, "interval95": [-0.01, 0.03]}}
    names = ["real", "reweight", "synthetic+la+filter+crt", "synthetic[w=0.5]", "tuned"]
    arms = {n: {"train_images": 1080, "summary": {"balanced_accuracy": spread, "recall_few": spread},
                "vs_real": None if n == "real" else diff, "vs_best_classic": diff} for n in names}
    result = {"settings": {"model": "resnet10t", "seeds": 5, "budget": {"optimizer_steps": 255}},
              "best_classic": "reweight", "verdict": {"winner": "reweight"}, "arms": arms}
    console = Console(width=80, record=True)
    console.print(summary_table(result))
    text = console.export_text()
    assert all(name[:12] in text for name in names) and "synthetic[w=0.5]" in text
