"""bench/sampler_check.py on a tiny trained run: per-sampler share of samples the reference classifier misreads."""

import pytest

from capaug.augment.pipeline import run_training
from capaug.recipes import load_recipe
from conftest import load_bench_script

TINY = {"train.image_size": 16, "train.unet.block_out_channels": [8, 16], "train.unet.norm_num_groups": 4,
        "train.unet.attention_levels": [False, False], "train.batch_size": 8, "train.warmup_steps": 0,
        "train.steps": 2, "train.sample_every": 10_000, "train.checkpoint_every": 10_000,
        "downstream.model": "resnet10t", "downstream.epochs": 1, "downstream.image_size": 16}


def test_sampler_check_scores_every_sampler_on_the_same_seeds(tmp_path):
    check = load_bench_script("sampler_check")
    assert check.parse_samplers("dpmsolver++:25,ddim:50,ddpm:100") == [("dpmsolver++", 25), ("ddim", 50), ("ddpm", 100)]
    for bad in ("euler:10", "ddpm", "ddpm:0", "ddim:x"):
        with pytest.raises(ValueError):
            check.parse_samplers(bad)

    recipe = load_recipe("quickstart", TINY)
    run = tmp_path / "run"
    run_training("builtin:digits-lt", run, recipe)
    result = check.check_samplers(run, [("dpmsolver++", 2), ("ddpm", 3)], per_class=2, downstream_cfg=recipe.downstream)
    assert list(result["samplers"]) == ["dpmsolver++ 2", "ddpm 3"]
    for row in [result["real_val"], *result["samplers"].values()]:
        assert 0 <= row["overall"] <= 1 and len(row["per_class"]) == len(result["classes"])
    assert (run / "eval" / "reference_classifier.safetensors").is_file()  # trained once, reused next time
    table = check.table(result)
    assert "| real val images |" in table and "| ddpm 3 |" in table
