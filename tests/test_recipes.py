"""Recipes: every shipped recipe validates, unknown keys are named, overrides win."""

import pytest

from capaug.augment.errors import CapaugError
from capaug.recipes import load_recipe, parse_assignment, recipe_names


def test_shipped_recipes_validate():
    assert {"quickstart", "retinamnist", "cifar10-lt"} <= set(recipe_names())
    for name in recipe_names():
        assert load_recipe(name).description


def test_cifar10_lt_is_the_papers_setting():
    train = load_recipe("cifar10-lt").train
    assert train.unet.block_out_channels == [128, 256, 256, 256]
    assert train.unet.attention_levels == [False, True, False, False]
    assert (train.batch_size, train.lr, train.warmup_steps, train.ema_decay) == (64, 2e-4, 5000, 0.9999)
    assert train.unet.dropout == 0.1


def test_unknown_key_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lrr: 0.1\n")
    with pytest.raises(CapaugError, match=r"unknown key 'train.lrr'"):
        load_recipe(str(bad))


def test_unknown_override_is_named():
    with pytest.raises(CapaugError, match=r"unknown key 'train.not_a_setting'"):
        load_recipe("quickstart", {"train.not_a_setting": 1})


def test_bad_value_is_named():
    with pytest.raises(CapaugError, match=r"'train.method'"):
        load_recipe("quickstart", {"train.method": "magic"})


def test_overrides_win_and_none_is_ignored():
    r = load_recipe("quickstart", {"train.lr": 0.5, "train.steps": None, "synthesize.sampler": "ddim"})
    assert r.train.lr == 0.5 and r.train.steps == load_recipe("quickstart").train.steps
    assert r.synthesize.sampler == "ddim"


def test_parse_assignment_reads_yaml_values():
    assert parse_assignment("train.targets=[up, mid]") == ("train.targets", ["up", "mid"])
    assert parse_assignment("train.steps=7") == ("train.steps", 7)
    with pytest.raises(CapaugError):
        parse_assignment("train.steps")


def test_unknown_recipe_name():
    with pytest.raises(CapaugError, match="unknown recipe 'nope'"):
        load_recipe("nope")
