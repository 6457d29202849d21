"""`evaluate_run` on a tiny run folder: every level of the report, memorization, CAS, feature choices."""

import csv
import json

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from capaug.augment.config import DataConfig, DownstreamConfig
from capaug.augment.errors import CapaugError
from capaug.augment.evaluate import evaluate_run
from capaug.classifier.reference import REFERENCE
from capaug.augment.features import load_features
from capaug.augment.model_io import ModelInfo, save_diffusion_model
from capaug.augment.split import prepare_split
from capaug.classifier.data import MANIFEST_COLUMNS

TINY_CLASSIFIER = DownstreamConfig(model="test_resnet", epochs=1, batch_size=8, seeds=1, cache_mb=64)


def write_synthetic(run, split, per_class: dict[str, list[np.ndarray]], split_hash=None):
    rows = []
    for name, images in per_class.items():
        for i, image in enumerate(images):
            file = f"{name}/{name}_{i:06d}.png"
            (run / "synthetic" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(run / "synthetic" / file)
            rows.append({"file": file, "class": name, "seed": i, "sampler": "ddim", "steps": 2, "guidance": 1.0,
                         "model_hash": "m", "split_hash": split_hash or split.hash})
    with open(run / "synthetic" / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, MANIFEST_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A split of a 16x16 folder, a random folded model, and synthetic images: 2 of mid's are training copies."""
    root = tmp_path_factory.mktemp("eval")
    data, run = root / "data", root / "run"
    rng = np.random.default_rng(0)
    for name, n in {"big": 12, "mid": 6, "rare": 4}.items():
        (data / name).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(data / name / f"{i}.png")
    split = prepare_split(str(data), run, DataConfig())
    unet = UNet2DModel(sample_size=16, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(8, 16),
                       down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, num_class_embeds=4)
    info = ModelInfo(classes=split.classes, train_counts=split.counts(), split_hash=split.hash, image_size=16, channels=3)
    save_diffusion_model(unet, DDPMScheduler(num_train_timesteps=100), info, run / "diffusion" / "model")
    reader, label = split.reader(), {c: i for i, c in enumerate(split.classes)}
    mid_train = [reader.read(key) for key, y in split.train if y == label["mid"]]
    noise = lambda n: list(rng.integers(0, 256, (n, 16, 16, 3), dtype=np.uint8))
    write_synthetic(run, split, {"mid": mid_train[:2] + noise(2), "rare": noise(3)})
    return run


@pytest.fixture(scope="module")
def feature_file(tmp_path_factory):
    """A torch.export program: a fixed random conv and average pooling, 6 features per image."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    program = torch.export.export(net, (torch.rand(2, 3, 16, 16),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path_factory.mktemp("features") / "features.pt2"
    torch.export.save(program, str(path))
    return path


def test_metrics_per_class_group_and_overall_with_a_feature_file(run, feature_file):
    result = evaluate_run(run, features=str(feature_file), cas=False, kid_subsets=5, device="cpu")
    assert json.loads((run / "eval" / "metrics.json").read_text()) == result
    assert (run / "eval" / "fid_by_class.png").stat().st_size > 0
    assert result["features"]["kind"] == "module"
    per_class = result["generative"]["per_class"]
    assert per_class["big"]["n_fake"] == 0 and per_class["big"]["fid"] is None  # the largest class gets no synthesis
    assert per_class["mid"]["n_fake"] == 4 and per_class["mid"]["fid"] >= 0 and per_class["mid"]["k"] >= 1
    assert set(result["generative"]["per_group"]) == set(result["groups"])
    assert result["generative"]["overall"]["n_fake"] == 7
    memorization = result["memorization"]
    assert memorization["per_class"]["mid"]["rate"] == 0.5 and memorization["per_class"]["rare"]["rate"] == 0.0
    assert memorization["overall"]["rate"] == pytest.approx(2 / 7) and result["cas"] is None


def test_cas_and_reference_classifier_features(run):
    result = evaluate_run(run, features="classifier", downstream=TINY_CLASSIFIER, kid_subsets=5, device="cpu")
    assert (run / "eval" / REFERENCE).is_file() and result["features"]["kind"] == "classifier"
    cas = result["cas"]
    assert cas["classes_without_synthetic_images"] == ["big"] and cas["per_class"]["big"]["rate"] is None
    assert 0.0 <= cas["overall"]["rate"] <= 1.0 and cas["per_class"]["rare"]["n"] >= 1


def test_a_synthetic_set_from_another_split_is_refused(tmp_path, run):
    other = tmp_path / "run"
    (other / "diffusion").mkdir(parents=True)
    (other / "split.json").write_bytes((run / "split.json").read_bytes())
    (other / "diffusion" / "model").symlink_to(run / "diffusion" / "model")
    split = prepare_split(None, other, DataConfig())
    write_synthetic(other, split, {"rare": [np.zeros((16, 16, 3), np.uint8)] * 2}, split_hash="0" * 64)
    with pytest.raises(CapaugError, match="split"):
        evaluate_run(other, features="inception", cas=False)


def test_feature_choices_fail_with_one_clear_line(tmp_path):
    with pytest.raises(CapaugError, match="classifier, inception or an existing file"):
        load_features(str(tmp_path / "missing.pt"), reference=lambda: None)
    (tmp_path / "junk.bin").write_bytes(b"not a model")
    with pytest.raises(CapaugError, match="junk.bin"):
        load_features(str(tmp_path / "junk.bin"), reference=lambda: None)


def test_inception_needs_torch_fidelity():
    from torchmetrics.utilities.imports import _TORCH_FIDELITY_AVAILABLE

    if _TORCH_FIDELITY_AVAILABLE:
        pytest.skip("torch-fidelity is installed here")
    with pytest.raises(CapaugError, match="torch-fidelity"):
        load_features("inception", reference=lambda: None)


def test_the_command_prints_groups_and_writes_the_report(run, feature_file):
    from typer.testing import CliRunner

    from capaug.cli.app import app

    out = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--features", str(feature_file), "--no-cas",
                                   "--kid-subsets", "5", "--device", "cpu"])
    assert out.exit_code == 0, out.output
    assert "overall" in out.output and "metrics.json" in out.output
