"""Classifier checkpoints round-trip, the offline --weights path, and the reference classifier."""

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from capaug.augment.config import DataConfig, DownstreamConfig
from capaug.augment.errors import CapaugError
from capaug.augment.split import prepare_split
from capaug.classifier.checkpoint import ClassifierInfo, load_classifier, save_classifier
from capaug.classifier.models import create_classifier
from capaug.classifier.reference import train_reference

MODEL = "resnet10t"


def test_checkpoint_round_trip_gives_the_same_probabilities_and_features(tmp_path):
    model = create_classifier(MODEL, 3, 1)
    info = ClassifierInfo(model=MODEL, classes=["a", "b", "c"], channels=1, image_size=16, mean=[0.5], std=[0.25])
    save_classifier(tmp_path / "clf.safetensors", model, info)
    bundle = load_classifier(tmp_path / "clf.safetensors")
    images = np.random.default_rng(0).integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)  # RGB, other size
    probs = bundle.predict_proba(images)
    assert probs.shape == (5, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert bundle.classes == ["a", "b", "c"]
    assert bundle.features(images).shape == (5, model.num_features)
    again = load_classifier(tmp_path / "clf.safetensors")
    assert np.array_equal(again.predict_proba(images), probs)


def test_local_weights_initialise_the_backbone_and_adapt_channels(tmp_path):
    source = timm.create_model(MODEL, num_classes=1000, in_chans=3)
    save_file(source.state_dict(), str(tmp_path / "w.safetensors"))
    model = create_classifier(MODEL, 4, 1, weights=str(tmp_path / "w.safetensors"))
    assert model.get_classifier().out_features == 4
    name = source.pretrained_cfg["first_conv"] + ".weight"
    assert torch.allclose(model.state_dict()[name], source.state_dict()[name].sum(1, keepdim=True))


def test_unusable_weights_and_names_are_clear_errors(tmp_path):
    save_file(timm.create_model("resnet18", num_classes=10).state_dict(), str(tmp_path / "r18.safetensors"))
    with pytest.raises(CapaugError, match="do not fit the model"):
        create_classifier(MODEL, 4, 1, weights=str(tmp_path / "r18.safetensors"))
    with pytest.raises(CapaugError, match="does not exist"):
        create_classifier(MODEL, 4, 1, weights=str(tmp_path / "missing.pth"))
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CapaugError, match="cannot read classifier weights"):
        create_classifier(MODEL, 4, 1, weights=str(tmp_path / "junk.pth"))
    with pytest.raises(CapaugError, match="unknown timm model"):
        create_classifier("no_such_net", 4, 1)
    with pytest.raises(CapaugError, match="not a capaug classifier checkpoint"):
        load_classifier(tmp_path / "junk.pth")


def test_reference_classifier_trains_on_the_real_split_and_reloads(tmp_path, make_tree):
    data = make_tree(tmp_path / "data", {"big": 12, "mid": 8, "rare": 6}, mode="L")
    split = prepare_split(str(data), tmp_path / "run", DataConfig())
    cfg = DownstreamConfig(model=MODEL, epochs=1, batch_size=8, image_size=16)
    bundle = train_reference(split, cfg, tmp_path / "run" / "reference.safetensors")
    loaded = load_classifier(tmp_path / "run" / "reference.safetensors")
    images = np.stack([split.reader().read(key) for key, _ in split.test])
    assert np.allclose(loaded.predict_proba(images), bundle.predict_proba(images), atol=1e-5)
    assert loaded.info.extra["split_hash"] == split.hash
    assert loaded.classes == split.classes
