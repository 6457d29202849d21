"""Generative metrics on constructed feature sets: known answers, no images, no models."""

import numpy as np
import pytest

from capaug.augment import genmetrics


def gaussian(n, d=4, shift=0.0, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d)) + shift


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    real = gaussian(200)
    assert genmetrics.fid(real, real) == pytest.approx(0.0, abs=1e-6)
    near, far = genmetrics.fid(real, gaussian(200, shift=0.5, seed=1)), genmetrics.fid(real, gaussian(200, shift=3.0, seed=1))
    assert 0.5 < near < far
    assert far == pytest.approx(4 * 3.0**2, rel=0.2)  # |mu1 - mu2|^2 dominates: 4 dims shifted by 3


def test_kid_is_near_zero_for_the_same_distribution_and_larger_after_a_shift():
    real = gaussian(300)
    same, _ = genmetrics.kid(real, gaussian(300, seed=1), subsets=20, subset_size=100)
    shifted, _ = genmetrics.kid(real, gaussian(300, shift=2.0, seed=1), subsets=20, subset_size=100)
    assert abs(same) < 0.05 < shifted
    assert genmetrics.kid(real, real[:10], subsets=5)[0] == genmetrics.kid(real, real[:10], subsets=5)[0]


def test_precision_recall_on_constructed_point_sets():
    grid = np.stack(np.meshgrid(np.arange(10.0), np.arange(10.0)), -1).reshape(-1, 2)  # spacing 1, k=5 radius >= 1
    inside = grid[:50] + 0.25
    outside = grid + 100.0
    pr = genmetrics.precision_recall(grid, inside, k=5)
    assert pr["precision"] == 1.0  # every fake point sits inside the real manifold
    assert pr["recall"] < 0.7  # the fakes cover only half of the real grid
    far = genmetrics.precision_recall(grid, outside, k=5)
    assert far["precision"] == far["recall"] == 0.0
    assert genmetrics.precision_recall(grid, grid, k=5) == {"precision": 1.0, "recall": 1.0, "k": 5}


def test_k_shrinks_for_tiny_sets_and_single_points_give_none():
    assert genmetrics.precision_recall(gaussian(4), gaussian(10), k=5)["k"] == 3
    assert genmetrics.set_metrics(gaussian(1), gaussian(10))["fid"] is None


def test_grouped_metrics_report_classes_groups_and_overall():
    real = {"a": gaussian(40, seed=1), "b": gaussian(30, seed=2), "c": gaussian(8, seed=3)}
    fake = {"a": gaussian(40, seed=4), "b": gaussian(30, shift=3.0, seed=5), "c": gaussian(1, seed=6)}
    out = genmetrics.grouped_set_metrics(real, fake, {"a": "many", "b": "many", "c": "few"}, kid_subsets=5)
    assert out["per_class"]["a"]["fid"] < out["per_class"]["b"]["fid"]
    assert out["per_class"]["c"]["fid"] is None and out["per_class"]["c"]["n_real"] == 8
    assert out["per_group"]["many"]["n_fake"] == 70 and out["per_group"]["few"]["fid"] is None
    assert out["overall"]["n_real"] == 78 and out["overall"]["fid"] > 0
    mean_fid = (out["per_class"]["a"]["fid"] + out["per_class"]["b"]["fid"]) / 2
    assert out["overall"]["class_mean"]["fid"] == pytest.approx(mean_fid)  # c has no FID and is left out


def test_pools_leave_out_classes_without_synthetic_images():
    real = {"a": gaussian(40, seed=1), "b": gaussian(30, seed=2)}
    out = genmetrics.grouped_set_metrics(real, {"a": gaussian(0), "b": gaussian(30, seed=3)},
                                         {"a": "many", "b": "few"}, kid_subsets=5)
    assert out["overall"]["classes"] == ["b"] and out["overall"]["n_real"] == 30
    many = out["per_group"]["many"]
    assert many["classes"] == [] and many["n_real"] == 0 and many["fid"] is None and many["class_mean"]["fid"] is None


def test_grouped_rates_pool_counts_and_average_class_rates():
    out = genmetrics.grouped_rates({"a": 9, "b": 0, "c": 1}, {"a": 10, "b": 0, "c": 2}, {"a": "many", "b": "few", "c": "few"})
    assert out["per_class"]["b"]["rate"] is None
    assert out["per_group"]["few"] == {"n": 2, "rate": 0.5, "mean_class_rate": 0.5}
    assert out["overall"]["rate"] == pytest.approx(10 / 12)
    assert out["overall"]["mean_class_rate"] == pytest.approx((0.9 + 0.5) / 2)
