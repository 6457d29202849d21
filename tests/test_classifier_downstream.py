"""A tiny end-to-end `capaug downstream`: every arm, a --compare set, every output file with its schema."""

import csv
import json

import pytest

from capaug.augment.config import DataConfig, DownstreamConfig
from capaug.augment.errors import CapaugError
from capaug.augment.split import prepare_split
from capaug.classifier.data import MANIFEST_COLUMNS
from capaug.classifier.downstream import run_downstream
from capaug.classifier.metrics import SCALARS
from capaug.cli.app import main

COUNTS = {"big": 16, "mid": 8, "rare": 6}
OUTPUTS = ("metrics.json", "per_seed.csv", "report.md", "balanced_accuracy.png", "recall_by_arm.png", "confusion.png",
           "class_histogram.png", "real_vs_synthetic.png")


def write_synthetic(folder, make_images, split, per_class, seed):
    rows = []
    for name, n in per_class.items():
        for i, path in enumerate(make_images(folder / name, n, mode="L", seed=seed)):
            rows.append([f"{name}/{path.name}", name, i, "dpmsolver++", 25, 1.0, "abc", split.hash])
    with open(folder / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(MANIFEST_COLUMNS)
        writer.writerows(rows)
    return folder


@pytest.fixture
def run(tmp_path, make_tree, make_images):
    data = make_tree(tmp_path / "data", COUNTS, mode="L")
    run = tmp_path / "run"
    split = prepare_split(str(data), run, DataConfig())
    write_synthetic(run / "synthetic", make_images, split, {"mid": 4, "rare": 6}, seed=50)
    write_synthetic(tmp_path / "ddpm_run" / "synthetic", make_images, split, {"rare": 5}, seed=60)
    return run


def test_downstream_cli_writes_every_output_with_the_documented_schema(run, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        main(["downstream", "--run", str(run), "--model", "resnet10t", "--image-size", "16", "--epochs", "1",
              "--seeds", "2", "--batch-size", "8", "--compare", f"ddpm={tmp_path / 'ddpm_run'}",
              "--arms", "real,reweight,oversample,synthetic", "--no-tune"])
    assert exit_.value.code == 0
    out = run / "downstream"
    assert all((out / name).is_file() for name in OUTPUTS)

    result = json.loads((out / "metrics.json").read_text())
    assert result["format"] == "capaug-downstream/2"
    arms = ["real", "reweight", "oversample", "synthetic", "ddpm"]
    assert list(result["arms"]) == arms and result["settings"]["arms"] == arms
    assert result["classes"] == sorted(COUNTS) and len(result["groups"]) == 3
    assert result["synthetic_sets"]["synthetic"]["counts"] == [0, 4, 6]  # classes sorted: big, mid, rare
    assert result["synthetic_sets"]["ddpm"]["counts"] == [0, 0, 5]
    assert result["best_classic"] in ("reweight", "oversample")
    for name, arm in result["arms"].items():
        assert set(arm) == {"spec", "base", "loss", "sampler", "synthetic_set", "train_images", "synthetic_images",
                            "synthetic_counts", "settings", "optimizer_steps", "summary", "vs_real", "vs_best_classic"}
        assert set(SCALARS) <= set(arm["summary"])
        assert arm["summary"]["balanced_accuracy"]["n"] == 2
        assert len(arm["summary"]["confusion_mean"]) == 3
        assert (arm["vs_real"] is None) == (name == "real")
        assert (arm["vs_best_classic"] is None) == (name == result["best_classic"])
    assert result["arms"]["synthetic"]["synthetic_images"] == 10
    assert result["arms"]["ddpm"]["loss"] == "cross-entropy"
    assert result["arms"]["reweight"]["loss"] == "logit-adjusted"
    assert result["arms"]["oversample"]["sampler"] == "class-balanced"
    diff = result["arms"]["synthetic"]["vs_real"]["balanced_accuracy"]
    assert len(diff["per_seed"]) == 2 and {"mean", "std", "wins", "losses", "interval95", "bootstrap95"} <= set(diff)
    low, high = result["arms"]["synthetic"]["vs_best_classic"]["balanced_accuracy"]["interval95"]
    assert low <= high
    assert result["verdict"]["baseline"] == result["best_classic"] and result["verdict"]["picked_on_test"]
    verdict = result["verdict"]
    assert verdict["winner"] == verdict["ranking"][0] and verdict["status"] in (
        "clear win", "clear loss", "no clear difference")
    assert len(result["runs"]) == 10
    test_images = sum(result["counts"]["test"])
    assert all(sum(map(sum, r["confusion"])) == test_images for r in result["runs"])  # the whole test split
    budget = result["settings"]["budget"]
    assert budget["optimizer_steps"] == 1 * budget["steps_per_epoch"]
    assert {r["optimizer_steps"] for r in result["runs"]} == {budget["optimizer_steps"]}  # fair: same steps

    with open(out / "per_seed.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10
    assert list(rows[0])[:2 + len(SCALARS)] == ["arm", "seed", *SCALARS]
    assert "recall[rare]" in rows[0]
    report = (out / "report.md").read_text()
    assert verdict["text"] in report and "real_vs_synthetic.png" in report


def test_downstream_refuses_a_synthetic_set_of_another_split(run, tmp_path, make_images):
    other = tmp_path / "other"
    other.mkdir()
    make_images(other / "rare", 1, mode="L", seed=70)
    with open(other / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([MANIFEST_COLUMNS, ["rare/000.png", "rare", 0, "ddim", 10, 1.0, "m", "0" * 64]])
    cfg = DownstreamConfig(model="resnet10t", epochs=1, seeds=1, batch_size=8)
    with pytest.raises(CapaugError, match="made from split 000000000000"):
        run_downstream(run, cfg, compare={"other": other}, arms=["real"])
    with pytest.raises(CapaugError, match="unknown arm"):
        run_downstream(run, cfg, arms=["mixup"])
    with pytest.raises(CapaugError, match="unknown setting \\+mixup"):
        run_downstream(run, cfg, arms=["synthetic+mixup"])
    with pytest.raises(CapaugError, match="is an arm name"):
        run_downstream(run, cfg, compare={"real": other})
    assert not (run / "downstream").exists()


def test_downstream_refuses_a_test_image_copied_into_the_synthetic_set(run):
    from PIL import Image

    from capaug.augment.split import load_split

    split = load_split(run)
    key, label = next((k, y) for k, y in split.test if split.classes[y] == "rare")
    name = split.classes[label]
    Image.fromarray(split.reader().read(key)[:, :, 0]).save(run / "synthetic" / name / "copy.png")
    with open(run / "synthetic" / "manifest.csv", "a", newline="") as f:
        csv.writer(f).writerow([f"{name}/copy.png", name, 99, "ddim", 10, 1.0, "abc", split.hash])
    cfg = DownstreamConfig(model="resnet10t", epochs=1, seeds=1, batch_size=8)
    with pytest.raises(CapaugError, match="also appear in synthetic set 'synthetic'"):
        run_downstream(run, cfg, arms=["real", "synthetic"])
