"""bench/protocol.py: method variants and generator seeds, then end to end on digits with a tiny budget."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import load_bench_script

PROTOCOL = Path(__file__).resolve().parents[1] / "bench" / "protocol.py"
TINY = ["train.image_size=16", "train.unet.block_out_channels=[16, 32]", "train.unet.norm_num_groups=4",
        "train.batch_size=16", "train.warmup_steps=0", "train.log_every=1", "train.sample_every=1000",
        "train.checkpoint_every=1000", "synthesize.steps=2", "downstream.epochs=1", "downstream.seeds=1",
        "downstream.model=resnet10t", "downstream.image_size=16"]


@pytest.fixture(scope="module")
def protocol():
    return load_bench_script("protocol")


def test_method_variants_and_generator_seeds(protocol):
    from capaug.recipes import load_recipe

    base = load_recipe("quickstart")
    r = protocol.method_recipe(base, "cm@lambda_div=auto@min_snr@synthesize.sampler=ddpm", steps=7, gen_seed=2)
    assert (r.train.method, r.train.lambda_div, r.train.loss_weighting, r.train.steps) == ("cm", "auto", "min_snr", 7)
    assert r.train.seed == base.train.seed + 2 and r.synthesize.sampler == "ddpm"
    low = protocol.method_recipe(base, "lowrank", steps=7)
    assert (low.train.method, low.train.base_loss, low.train.seed) == ("lowrank", "ddpm", base.train.seed)
    assert protocol.run_name("cm@lambda_div=0.2", 0) == "cm@lambda_div=0.2"
    assert protocol.run_name("cm@lambda_div=0.2", 1) == "cm@lambda_div=0.2-seed1"
    for bad in ("dpm", "cm@lambda_div", "cm@lambda_div=lots", "cm@no_such_key=1"):
        with pytest.raises(ValueError):
            protocol.method_recipe(base, bad, steps=7)
    assert protocol.label_and_seeds("cm@lambda_div=auto@seeds=3@min_snr", 1) == ("cm@lambda_div=auto@min_snr", 3)
    assert protocol.label_and_seeds("lowrank", 2) == ("lowrank", 2)
    for bad in ("cm@seeds=0", "cm@seeds=two"):
        with pytest.raises(ValueError):
            protocol.label_and_seeds(bad, 1)
    same = protocol.method_recipe(base, "cm@seeds=2@lambda_div=auto", steps=7)
    assert same == protocol.method_recipe(base, "cm@lambda_div=auto", steps=7)
    assert protocol.spread([3.0, 5.0]) == {"mean": 4.0, "std": pytest.approx(2 ** 0.5), "n": 2}
    assert protocol.spread([3.0]) == {"mean": 3.0, "std": None, "n": 1}
    assert protocol.downstream_arm("cm+oc-seed1", "+filter+la") == "cm&oc-seed1+la+filter"
    assert protocol.downstream_arm("cm@lambda_div=0.2", "") == "cm@lambda_div=0.2"


def test_the_generator_table_stands_alone_without_a_downstream_run(protocol):
    row = {"fid": {"many": 3.0, "medium": 4.0, "few": 5.0, "overall": 4.0}, "fid_class_mean": 4.5,
           "train_images_per_s": 50.0, "train_seconds": 600.0, "synthesis_seconds": 60.0, "d_final": {},
           "theta_g_increase": {"many": 0.01, "medium": 0.02, "few": 0.05, "per_class": {}}}
    runs = {"cm": row, "cm-seed1": row | {"fid": {**row["fid"], "few": 7.0}}}
    result = {"data": "d", "recipe": "r", "steps": 10, "gen_seeds": 2, "runs": runs,
              "methods": {"cm": protocol.summarize(runs)}}
    text = protocol.table(result)
    assert "| cm | 2 | 3.0 ± 0.0 | 4.0 ± 0.0 | 6.0 ± 1.4 |" in text and "+1.00% / +2.00% / +5.00%" in text
    assert "verdict" not in text


def test_protocol_runs_end_to_end_on_digits(tmp_path):
    out = tmp_path / "protocol"
    methods = ["lowrank", "cm@lambda_div=auto@min_snr"]
    cmd = [sys.executable, str(PROTOCOL), "--data", "builtin:digits-lt", "--recipe", "quickstart", "--steps", "3",
           "--methods", "lowrank,cm@lambda_div=auto@seeds=2@min_snr", "--gen-seeds", "1", "--eval-per-class", "6",
           "--synthetic-arm", "+la", "--out", str(out)]
    for assignment in TINY:
        cmd += ["--set", assignment]
    first = subprocess.run([*cmd, "--no-downstream", "--only", "cm@lambda_div=auto@min_snr-seed1"],
                           capture_output=True, text=True, timeout=1200)
    assert first.returncode == 0, first.stderr[-3000:]
    assert list(json.loads((out / "generators.json").read_text())) == ["cm@lambda_div=auto@min_snr-seed1"]
    assert "| cm@lambda_div=auto@min_snr | 1 |" in (out / "generators.md").read_text()
    assert not (out / "lowrank").exists() and not (out / "downstream-compare").exists()
    seconds = json.loads((out / "generators.json").read_text())["cm@lambda_div=auto@min_snr-seed1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    resumed = json.loads((out / "generators.json").read_text())["cm@lambda_div=auto@min_snr-seed1"]
    for stage in ("train_seconds", "synthesis_seconds"):  # a complete stage keeps the first command's time
        assert resumed[stage] == seconds[stage] > 0
    assert "downstream 1/6: " in done.stdout and "downstream 6/6: " in done.stdout and " test 0." in done.stdout
    reference = (out / "cm@lambda_div=auto@min_snr-seed1" / "eval" / "reference_classifier.safetensors").read_bytes()
    assert (out / "lowrank" / "eval" / "reference_classifier.safetensors").read_bytes() == reference
    result = json.loads((out / "protocol.json").read_text())
    runs = ["lowrank", "cm@lambda_div=auto@min_snr", "cm@lambda_div=auto@min_snr-seed1"]
    assert set(result["methods"]) == set(methods) and set(result["runs"]) == set(runs)
    assert set(result["downstream"]) == {"real", "reweight", "oversample", *(f"{r}+la" for r in runs)}
    for method, seeds in zip(methods, (1, 2)):
        fid = result["methods"][method]["fid"]
        assert fid["overall"]["n"] == seeds and (fid["overall"]["std"] is None) == (seeds == 1)
        assert fid["many"]["mean"] is not None and result["methods"][method]["train_images_per_s"] > 0
    assert result["runs"]["cm@lambda_div=auto@min_snr"]["d_final"] and not result["runs"]["lowrank"]["d_final"]
    dependence = result["runs"]["lowrank"]["theta_g_increase"]
    assert {"many", "few", "per_class"} <= set(dependence) and len(dependence["per_class"]) == 10
    table = (out / "protocol.md").read_text()
    assert set(json.loads((out / "generators.json").read_text())) == set(runs)
    assert "| lowrank | 1 |" in table and "| cm@lambda_div=auto@min_snr-seed1+la |" in table and "| cm@lambda_div=auto@min_snr | 2 |" in table and "| real |" in table and "verdict:" in table and " ± " in table


def fake_cifar_tar(path: Path, train: int = 10, test: int = 2) -> Path:
    """A CIFAR-10-images/{train,test}/<class>/NNNN.jpg archive with three classes."""
    import tarfile

    import numpy as np
    from PIL import Image

    root = path.parent / "tree" / "CIFAR-10-images"
    rng = np.random.default_rng(0)
    for part, n in (("train", train), ("test", test)):
        for name in ("airplane", "bird", "cat"):
            (root / part / name).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / part / name / f"{i:04d}.jpg")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(root, arcname="CIFAR-10-images")
    return path


def test_preset_data_is_extracted_once_and_made_long_tailed(protocol, tmp_path):
    tar = fake_cifar_tar(tmp_path / "cifar.tar.gz")
    cache = tmp_path / "cache"
    data = protocol.long_tailed_cifar10(tar, cache, ratio=4, head=8)
    assert data == cache / "cifar10-lt-r4-n8"
    assert [len(list((data / "train" / c).iterdir())) for c in ("airplane", "bird", "cat")] == [8, 4, 2]
    assert [len(list((data / "test" / c).iterdir())) for c in ("airplane", "bird", "cat")] == [2, 2, 2]
    assert sorted(p.name for p in cache.iterdir()) == ["CIFAR-10-images", "cifar10-lt-r4-n8"]  # no temporary left
    tar.unlink()  # both are reused from the cache now
    assert protocol.long_tailed_cifar10(tar, cache, ratio=4, head=8) == data
    assert protocol.long_tailed_cifar10(tar, cache, ratio=2, head=6) == cache / "cifar10-lt-r2-n6"


def test_preset_fills_in_data_recipe_and_settings(protocol, monkeypatch, tmp_path):
    import argparse

    from capaug.recipes import load_recipe, parse_assignment

    parser = argparse.ArgumentParser()
    protocol.add_data_options(parser)
    made = []
    monkeypatch.setattr(protocol, "long_tailed_cifar10", lambda tar, cache: made.append(cache) or tmp_path / "lt")
    args = parser.parse_args(["--preset", "cifar10-lt-small", "--size", "32", "--cache", str(tmp_path / "c"),
                              "--set", "downstream.epochs=2"])
    protocol.apply_preset(args, parser)
    assert (args.data, args.recipe, made) == (str(tmp_path / "lt"), "small", [tmp_path / "c"])
    recipe = load_recipe(args.recipe, dict(parse_assignment(s) for s in args.set))
    assert recipe.train.image_size == recipe.downstream.image_size == 32
    assert recipe.downstream.model == "resnet10t" and recipe.downstream.epochs == 2  # a --set wins over the preset
    for bad in (["--cache", str(protocol.REPO / "cache")], ["--data", "x"]):
        args = parser.parse_args(["--preset", "cifar10-lt-small", *bad])
        with pytest.raises(SystemExit):
            protocol.apply_preset(args, parser)
    plain = parser.parse_args([])
    protocol.apply_preset(plain, parser)
    assert plain.recipe == "quickstart" and plain.data is None
