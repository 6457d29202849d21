"""Real-anchored synthesis (`--source minority|majority --strength`): SDEdit limits, source choice, resume, CLI."""

import json

import numpy as np
import pytest
from diffusers import DDPMScheduler
from PIL import Image

from capaug.augment.anchors import Anchors
from capaug.augment.config import SynthesisConfig
from capaug.augment.errors import CapaugError
from capaug.augment.sampling import denoising_steps, generate
from capaug.augment.synthesize import MANIFEST_COLUMNS, image_seed, synthesize
from conftest import LONG_TAIL
from test_synthesize import make_run, model, pngs, read_csv, tiny_unet

FAST = {"sampler": "ddim", "steps": 4, "batch_size": 3}
K = len(LONG_TAIL)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("anchored"))


def cfg(**kw):
    return SynthesisConfig(**{**FAST, **kw})


def interrupted_then_resumed(run, out, config):
    def interrupt(name, done, total):
        if name == "rare" and done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(model(run), out, config, split=run[1], on_progress=interrupt)
    assert not (out / "manifest.csv").exists() and len(pngs(out)) > 0
    return synthesize(model(run), out, config, split=run[1])


# --------------------------------------------------------------------------- the sampler


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpmsolver++"])
def test_strength_limits_in_the_sampler(sampler):
    unet, scheduler = tiny_unet(K), DDPMScheduler(num_train_timesteps=100)
    source = np.random.default_rng(1).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    labels, seeds = [0, 1, 2], [7, 8, 9]
    kw = {"sampler": sampler, "steps": 4, "null_class": K, "guidance": 2.0}
    from_noise = generate(unet, scheduler, labels, seeds, **kw)
    full = generate(unet, scheduler, labels, seeds, init_images=source, strength=[1.0] * 3, **kw)
    np.testing.assert_array_equal(full, from_noise)  # strength 1 = the same noise draw, every step
    assert denoising_steps(0.1, 4) == 0
    np.testing.assert_array_equal(generate(unet, scheduler, labels, seeds, init_images=source, strength=[0.1] * 3, **kw),
                                  source)
    half = generate(unet, scheduler, labels, seeds, init_images=source, strength=[0.5] * 3, **kw)
    other = generate(unet, scheduler, labels, seeds, init_images=source[::-1].copy(), strength=[0.5] * 3, **kw)
    assert not np.array_equal(half, from_noise) and not np.array_equal(half, source)
    assert not np.array_equal(half[0], other[0])  # the start image matters
    mixed = generate(unet, scheduler, labels, seeds, init_images=source, strength=[0.5, 1.0, 0.1], **kw)
    for i, alone in enumerate([half[0], from_noise[1], source[2]]):  # batched by first step, not by position
        assert np.abs(mixed[i].astype(int) - alone.astype(int)).max() <= 1


# --------------------------------------------------------------------------- the synthesis run


@pytest.fixture(scope="module")
def noise_run(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("noise") / "synthetic"
    synthesize(model(run), out, cfg(), split=run[1])
    return out


def test_minority_manifest_sources_and_strength_mix(run, noise_run, tmp_path):
    split = run[1]
    out = tmp_path / "synthetic"
    result = synthesize(model(run), out, cfg(source="minority", strength=[0.5, 0.75]), split=split)
    rows = read_csv(out / "manifest.csv")
    assert list(rows[0]) == MANIFEST_COLUMNS and MANIFEST_COLUMNS[-3:] == ["source", "strength", "source_key"]
    assert len(rows) == result.made > 0
    keys_of = {name: {k for k, y in split.train if y == label} for label, name in enumerate(split.classes)}
    for row in rows:
        index = int(row["file"][-10:-4])
        assert row["source"] == "minority" and row["source_key"] in keys_of[row["class"]]
        assert float(row["strength"]) == [0.5, 0.75][index % 2]
        assert row["source_key"] == Anchors(split, "minority").key(split.classes.index(row["class"]), int(row["seed"]))
    assert pngs(out).keys() == pngs(noise_run).keys()
    assert any(not np.array_equal(a, pngs(noise_run)[name]) for name, a in pngs(out).items())
    plan = json.loads((out / "plan.json").read_text())
    assert (plan["settings"]["source"], plan["settings"]["strength"]) == ("minority", [0.5, 0.75])
    audit = read_csv(out / "audit.csv")
    assert len(audit) == len(rows) and all(0 < float(a["source_distance"]) <= 1 for a in audit)
    assert all(s.median_source_distance is not None for s in result.audit)
    assert {r["source"] for r in read_csv(noise_run / "manifest.csv")} == {"noise"}
    assert {r["source_distance"] for r in read_csv(noise_run / "audit.csv")} == {""}


def test_tiny_strength_returns_the_source_and_strength_one_is_from_noise(run, noise_run, tmp_path):
    split = run[1]
    copies = tmp_path / "copies"
    result = synthesize(model(run), copies, cfg(source="minority", strength=[0.05]), split=split)
    reader = split.reader()
    for row in read_csv(copies / "manifest.csv"):
        np.testing.assert_array_equal(np.asarray(Image.open(copies / row["file"])), reader.read(row["source_key"]))
    assert all(a["source_distance"] == "0.000000" and float(a["distance"]) == 0 for a in read_csv(copies / "audit.csv"))
    assert all(s.near_copies == s.images for s in result.audit)  # the audit sees the copies
    full = tmp_path / "full"
    synthesize(model(run), full, cfg(source="majority", strength=[1.0]), split=split)
    assert pngs(full).keys() == pngs(noise_run).keys()
    for name, image in pngs(full).items():
        np.testing.assert_array_equal(image, pngs(noise_run)[name])


def test_majority_sources_come_from_larger_classes_only(run, tmp_path):
    split = run[1]
    counts = dict(zip(split.classes, split.counts()))
    label_of = {k: split.classes[y] for k, y in split.train}
    out, targets = tmp_path / "synthetic", tmp_path / "targets.yaml"
    targets.write_text("mid: 16\nrare: 16\n")
    synthesize(model(run), out, cfg(source="majority", strength=[0.5], target=str(targets)), split=split)
    rows = read_csv(out / "manifest.csv")
    assert {r["class"] for r in rows} == {"mid", "rare"}
    for row in rows:
        source_class = label_of[row["source_key"]]
        assert source_class != row["class"] and counts[source_class] > counts[row["class"]]
    rare_sources = {label_of[r["source_key"]] for r in rows if r["class"] == "rare"}
    assert rare_sources == {"big", "mid"}  # uniform over the images of every larger class


def test_majority_refuses_a_class_with_no_larger_class(run, tmp_path):
    targets = tmp_path / "targets.yaml"
    targets.write_text("big: 20\n")
    with pytest.raises(CapaugError, match=r"class 'big' \(\d+ training images\) has no larger class"):
        synthesize(model(run), tmp_path / "out", cfg(source="majority", target=str(targets)), split=run[1])
    assert not (tmp_path / "out").exists()
    with pytest.raises(CapaugError, match="--source minority starts from training images: pass --run"):
        synthesize(model(run), tmp_path / "out", cfg(source="minority"))


@pytest.mark.parametrize("source", ["minority", "majority"])
def test_resume_and_reruns_reproduce_the_same_set(run, tmp_path, source):
    config = cfg(source=source, strength=[0.5, 0.75])
    whole = tmp_path / "whole"
    synthesize(model(run), whole, config, split=run[1])
    resumed = tmp_path / "resumed"
    result = interrupted_then_resumed(run, resumed, config)
    assert 0 < result.made < len(pngs(whole))
    assert (resumed / "manifest.csv").read_text() == (whole / "manifest.csv").read_text()
    assert (resumed / "audit.csv").read_text() == (whole / "audit.csv").read_text()
    for name, image in pngs(whole).items():
        np.testing.assert_array_equal(pngs(resumed)[name], image)
    manifest = (whole / "manifest.csv").read_text()
    assert synthesize(model(run), whole, config, split=run[1]).made == 0
    assert (whole / "manifest.csv").read_text() == manifest
    with pytest.raises(CapaugError, match=r"other settings.*strength \[0.5, 0.75\] -> \[0.5\].*--overwrite"):
        synthesize(model(run), whole, cfg(source=source, strength=[0.5]), split=run[1])
    with pytest.raises(CapaugError, match=rf"other settings.*source '{source}' -> 'noise'"):
        synthesize(model(run), whole, cfg(), split=run[1])


def test_a_plan_from_before_sources_resumes_as_noise(run, noise_run, tmp_path):
    import shutil

    out = tmp_path / "synthetic"
    shutil.copytree(noise_run, out)
    plan = json.loads((out / "plan.json").read_text())
    for key in ("source", "strength"):
        del plan["settings"][key]
    (out / "plan.json").write_text(json.dumps(plan))
    assert synthesize(model(run), out, cfg(), split=run[1]).made == 0


class CallsEverythingMid:
    """A stand-in classifier bundle that gives every image to 'mid'."""

    def __init__(self, classes):
        self.classes = classes

    def predict_proba(self, images):
        proba = np.zeros((len(images), len(self.classes)))
        proba[:, self.classes.index("mid")] = 1.0
        return proba


def test_label_fidelity_reports_without_filtering(run, noise_run, tmp_path):
    out = tmp_path / "synthetic"
    result = synthesize(model(run), out, cfg(), split=run[1], label_classifier=CallsEverythingMid(run[1].classes))
    fidelity = json.loads((out / "plan.json").read_text())["label_fidelity"]
    made = {p.name: p.generate for p in result.plan if p.generate}
    assert fidelity == result.label_fidelity and set(fidelity["classes"]) == set(made)
    assert fidelity["classes"]["mid"] == {"images": made["mid"], "as_class": made["mid"], "rate": 1.0}
    assert fidelity["classes"]["rare"] == {"images": made["rare"], "as_class": 0, "rate": 0.0}
    assert result.dropped == {"big": 0, "mid": 0, "rare": 0}  # a report, not a filter
    assert (out / "manifest.csv").read_text() == (noise_run / "manifest.csv").read_text()
    assert "label_fidelity" not in json.loads((noise_run / "plan.json").read_text())


# --------------------------------------------------------------------------- the CLI


def cli(*args):
    from capaug.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["synthesize", "--recipe", "quickstart", *args])
    return done.value.code


@pytest.mark.parametrize("bad", ["0", "1.5", "nan", "", "abc", "0.5,2"])
def test_cli_refuses_bad_strength_in_one_line(run, tmp_path, capsys, bad):
    code = cli("--run", str(run[0]), "--out", str(tmp_path / "o"), "--source", "minority", "--strength", bad)
    err = capsys.readouterr().err
    assert code == 2 and "strength" in err and "Traceback" not in err
    assert len([line for line in err.splitlines() if line.strip()]) == 1
    assert not (tmp_path / "o").exists()


def test_cli_strength_list_via_set_and_bad_source(run, tmp_path, capsys):
    assert cli("--run", str(run[0]), "--source", "sideways", "--dry-run") == 2
    assert "synthesize.source" in capsys.readouterr().err
    assert cli("--run", str(run[0]), "--set", "synthesize.strength=0.3,0.6", "--source", "majority", "--dry-run") == 0


def test_cli_majority_trains_the_reference_for_label_fidelity_minority_reuses_it(run, tmp_path, capsys):
    tiny = ["--set", "downstream.model=resnet10t", "--set", "downstream.epochs=1", "--set", "downstream.image_size=16",
            "--sampler", "ddim", "--steps", "2"]
    reference = run[0] / "eval" / "reference_classifier.safetensors"
    assert cli("--run", str(run[0]), "--out", str(tmp_path / "plain"), "--source", "minority", *tiny) == 0
    assert not reference.exists()  # minority: no classifier trained unless asked
    assert "label_fidelity" not in json.loads((tmp_path / "plain" / "plan.json").read_text())
    assert cli("--run", str(run[0]), "--out", str(tmp_path / "major"), "--source", "majority", "--strength",
               "0.3,0.6", *tiny) == 0
    assert reference.is_file() and "label fidelity" in capsys.readouterr().out
    plan = json.loads((tmp_path / "major" / "plan.json").read_text())
    assert plan["settings"]["strength"] == [0.3, 0.6] and set(plan["label_fidelity"]["classes"]) == {"mid", "rare"}
    trained = reference.stat().st_mtime_ns
    assert cli("--run", str(run[0]), "--out", str(tmp_path / "minor"), "--source", "minority", *tiny) == 0
    assert reference.stat().st_mtime_ns == trained  # the cached classifier, not a new one
    assert "label_fidelity" in json.loads((tmp_path / "minor" / "plan.json").read_text())
    assert cli("--run", str(run[0]), "--out", str(tmp_path / "none"), "--no-label-fidelity", *tiny) == 0
    assert "label_fidelity" not in json.loads((tmp_path / "none" / "plan.json").read_text())
    seed = image_seed(0, "rare", 0)
    row = next(r for r in read_csv(tmp_path / "major" / "manifest.csv") if r["seed"] == str(seed))
    assert row["source"] == "majority" and float(row["strength"]) == 0.3
