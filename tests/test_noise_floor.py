"""bench/noise_floor.py: the seeds a half-width needs, and the figures of a tiny classic-arms run on digits."""

import json
import sys
import statistics

import pytest

from conftest import load_bench_script


@pytest.fixture(scope="module")
def noise_floor():
    return load_bench_script("noise_floor")


@pytest.mark.parametrize("sd", [0.004, 0.02, 0.05])
def test_seeds_needed_is_the_smallest_count_that_reaches_the_target(noise_floor, sd):
    n = noise_floor.seeds_needed(sd, 0.01)
    assert noise_floor.t_half_width(sd, n) <= 0.01
    assert n == 2 or noise_floor.t_half_width(sd, n - 1) > 0.01
    assert noise_floor.seeds_needed(0.0, 0.01) == 2


def test_noise_floor_of_the_classic_arms_on_digits(noise_floor, monkeypatch, capsys, tmp_path):
    out = tmp_path / "floor"
    argv = ["noise_floor.py", "--data", "builtin:digits-lt", "--seeds", "2", "--out", str(out)]
    for assignment in ("downstream.epochs=1", "downstream.model=resnet10t", "downstream.image_size=16"):
        argv += ["--set", assignment]
    monkeypatch.setattr(sys, "argv", argv)
    noise_floor.main()
    result = json.loads((out / "noise_floor.json").read_text())
    metrics = json.loads((out / "downstream" / "metrics.json").read_text())
    assert set(result["arms"]) == {"real", "reweight", "oversample"} and result["seeds"] == 2
    best = metrics["best_classic"]
    other = "reweight" if best == "oversample" else "oversample"
    assert set(result["pairs"]) == {"reweight - real", "oversample - real", f"{other} - {best}"}
    per_seed = {(r["arm"], r["seed"]): r["balanced_accuracy"] for r in metrics["runs"]}
    for name, pair in result["pairs"].items():
        arm, baseline = name.split(" - ")
        diffs = [per_seed[arm, s] - per_seed[baseline, s] for s in (0, 1)]
        assert pair["per_seed"] == pytest.approx(diffs) and pair["sd"] == pytest.approx(statistics.stdev(diffs))
        assert pair["t_half_width"] == pytest.approx(noise_floor.t_half_width(pair["sd"], 2))
        assert pair["bootstrap_half_width"] > 0
        assert pair["seeds_needed"] == noise_floor.seeds_needed(pair["sd"], 0.01)
    assert result["seeds_needed_max"] == max(p["seeds_needed"] for p in result["pairs"].values())
    assert result["test_images"] == sum(metrics["counts"]["test"])
    printed = capsys.readouterr().out
    assert "| oversample - real |" in printed and "seeds needed (the largest over the pairs)" in printed
