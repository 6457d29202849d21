"""The downstream model cache (classifier/model_cache.py): a rerun trains only the models it lacks, a change of
what decides a model misses, a damaged entry is recomputed, run folders can share one cache."""

import json
import re
import shutil

import pytest

from capaug.augment.config import DownstreamConfig
from capaug.augment.split import load_split
from capaug.classifier import downstream as downstream_module
from capaug.classifier.model_cache import FOLDER
from capaug.cli.app import main

from test_classifier_arms import run  # noqa: F401 (the fixture: a tiny split with a synthetic set)
from test_classifier_downstream import write_synthetic
from test_tuning import TINY, watch  # noqa: F401 (the fixture counting trained and tested models)


def saved_metrics(run) -> dict:
    saved = json.loads((run / "downstream" / "metrics.json").read_text())
    del saved["created"]
    return saved


def recorder(seen: list):
    return lambda arm, seed, info: seen.append((arm, seed, info.get("cached", False)))


def test_an_identical_rerun_trains_nothing_and_reports_the_same_numbers(run, watch):
    cfg = DownstreamConfig(**TINY, seeds=2, tune=True, tune_seeds=1, tune_grid=["synthetic[w=0.5]", "synthetic+la"])
    arms = ["real", "oversample", "synthetic"]
    planned = downstream_module.planned_models(cfg, arms, run_dir=run)
    downstream_module.run_downstream(run, cfg, arms=arms)
    first, per_seed = saved_metrics(run), (run / "downstream" / "per_seed.csv").read_text()
    assert watch["trained"] == planned == 3 * 2 + 2 * 1 + 1
    assert len(list((run / FOLDER).glob("*.npz"))) == planned  # one entry per model, beside RUN/downstream
    tested, seen = watch["tested"], []
    downstream_module.run_downstream(run, cfg, arms=arms, on_model=recorder(seen))
    assert watch["trained"] == planned and watch["tested"] == tested  # nothing trained, nothing tested again
    assert len(seen) == planned and all(cached for *_, cached in seen)
    again = saved_metrics(run)
    assert again["runs"] == first["runs"] and again["verdict"] == first["verdict"]
    assert again["tuning"] == first["tuning"]
    assert {n: a["summary"] for n, a in again["arms"].items()} == {n: a["summary"] for n, a in first["arms"].items()}
    assert again == first and (run / "downstream" / "per_seed.csv").read_text() == per_seed  # bootstrap included


def test_cli_a_changed_setting_misses_and_no_cache_trains_again_but_stores(run, watch, capsys, monkeypatch):
    monkeypatch.setenv("CAPAUG_PROGRESS_SECONDS", "0")  # a line per model

    def downstream(*extra) -> int:
        with pytest.raises(SystemExit) as ended:
            main(["downstream", "--run", str(run), "--arms", "real", "--no-tune", "--model", "resnet10t",
                  "--image-size", "16", "--epochs", "1", "--seeds", "1", "--batch-size", "8", *extra])
        assert ended.value.code == 0
        return watch["trained"]

    assert downstream() == 1
    capsys.readouterr()
    assert downstream("--set", "downstream.cache_mb=0", "--set", "downstream.bootstrap=10") == 1  # no outcome
    assert re.search(r"real seed 0: val bal\. acc\. [\d.]+, test [\d.]+ \(cached\)", capsys.readouterr().out)
    assert downstream("--lr", "0.0037") == 2
    assert downstream("--epochs", "2") == 3
    for entry in (run / FOLDER).glob("*.npz"):
        entry.unlink()
    assert downstream("--no-cache") == 4
    assert downstream() == 4  # --no-cache stored what it trained


def test_a_changed_synthetic_set_misses_only_the_arm_that_reads_it(run, watch, make_images):
    cfg = DownstreamConfig(**TINY, seeds=1)
    arms = ["real", "reweight", "synthetic"]
    downstream_module.run_downstream(run, cfg, arms=arms)
    shutil.rmtree(run / "synthetic")
    write_synthetic(run / "synthetic", make_images, load_split(run), {"mid": 3, "rare": 6}, seed=70)
    seen = []
    downstream_module.run_downstream(run, cfg, arms=arms, on_model=recorder(seen))
    assert watch["trained"] == 3 + 1
    assert seen == [("real", 0, True), ("reweight", 0, True), ("synthetic", 0, False)]


def test_an_interrupted_run_resumes_with_its_finished_models(run, watch):
    cfg = DownstreamConfig(**TINY, seeds=2)
    arms = ["real", "oversample"]

    class Interrupted(Exception):
        pass

    def interrupt_after_three(arm, seed, info):
        if info["done"] == 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        downstream_module.run_downstream(run, cfg, arms=arms, on_model=interrupt_after_three)
    assert watch["trained"] == 3 and not (run / "downstream").exists()
    seen = []
    downstream_module.run_downstream(run, cfg, arms=arms, on_model=recorder(seen))
    assert watch["trained"] == 4
    assert seen == [("real", 0, True), ("real", 1, True), ("oversample", 0, True), ("oversample", 1, False)]


def test_a_damaged_entry_is_recomputed_and_rewritten(run, watch):
    cfg = DownstreamConfig(**TINY, seeds=2)
    downstream_module.run_downstream(run, cfg, arms=["real"])
    first = saved_metrics(run)["runs"]
    truncated, foreign = sorted((run / FOLDER).glob("*.npz"))
    shutil.copy(truncated, foreign)  # a readable entry under another model's name
    truncated.write_bytes(truncated.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable model cache entry"):
        downstream_module.run_downstream(run, cfg, arms=["real"])
    assert watch["trained"] == 2 + 2
    downstream_module.run_downstream(run, cfg, arms=["real"])
    assert watch["trained"] == 2 + 2  # the recomputed entries were written anew
    timeless = [[{k: v for k, v in r.items() if k != "seconds"} for r in runs]
                for runs in (first, saved_metrics(run)["runs"])]
    assert timeless[0] == timeless[1]  # a retrained model gives the same numbers (what the cache relies on)


def test_run_folders_sharing_one_cache_reuse_the_classic_arms(run, watch, make_images, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(run / "split.json", other / "split.json")
    write_synthetic(other / "synthetic", make_images, load_split(run), {"rare": 5}, seed=60)
    cfg, cache = DownstreamConfig(**TINY, seeds=1), tmp_path / "classifier-cache"
    arms = ["real", "reweight", "synthetic"]
    for folder in (run, other):
        downstream_module.run_downstream(folder, cfg, arms=arms, model_cache=cache)
    assert watch["trained"] == 3 + 1 and len(list(cache.glob("*.npz"))) == 4
    assert not (run / FOLDER).exists() and not (other / FOLDER).exists()
    classic = [[r for r in saved_metrics(folder)["runs"] if r["arm"] != "synthetic"] for folder in (run, other)]
    assert classic[0] == classic[1] and len(classic[0]) == 2
