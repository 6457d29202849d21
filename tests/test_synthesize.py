"""The synthesis run on a tiny random folded model: counts, reproducibility, resume, manifest, audit, filters."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler, UNet2DModel
from PIL import Image

from capaug.augment.config import DataConfig, SynthesisConfig
from capaug.augment.errors import CapaugError
from capaug.augment.model_io import ModelInfo, save_diffusion_model
from capaug.augment.split import prepare_split
from capaug.augment.synthesize import MANIFEST_COLUMNS, image_seed, synthesize
from conftest import LONG_TAIL, write_tree

FAST = {"steps": 2, "batch_size": 3}


def tiny_unet(classes: int, sample_size: int = 16) -> UNet2DModel:
    """A random two-level UNet (seed 0) for `classes` classes plus the null label."""
    torch.manual_seed(0)
    return UNet2DModel(
        sample_size=sample_size, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=classes + 1,
    ).eval()


def make_run(root):
    """RUN/split.json from a 16x16 long-tailed image folder, and RUN/diffusion/model/ with a random UNet."""
    data, run = root / "data", root / "run"
    write_tree(data, LONG_TAIL)
    split = prepare_split(str(data), run, DataConfig())
    info = ModelInfo(classes=split.classes, train_counts=split.counts(), split_hash=split.hash, image_size=16, channels=3)
    save_diffusion_model(tiny_unet(len(split.classes)), DDPMScheduler(num_train_timesteps=100), info,
                         run / "diffusion" / "model")
    return run, split


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("synth"))


def model(run):
    return run[0] / "diffusion" / "model"


def cfg(**kw):
    return SynthesisConfig(**{**FAST, **kw})


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def pngs(out):
    return {p.relative_to(out).as_posix(): np.asarray(Image.open(p)) for p in sorted(out.glob("*/*.png"))}


@pytest.fixture(scope="module")
def reference(run, tmp_path_factory):
    """One uninterrupted balanced run that the other tests compare against."""
    out = tmp_path_factory.mktemp("ref") / "synthetic"
    result = synthesize(model(run), out, cfg(), split=run[1])
    return out, result


def test_exact_counts_manifest_and_outputs(run, reference):
    out, result = reference
    split = run[1]
    counts = dict(zip(split.classes, split.counts()))
    wanted = {name: max(counts.values()) - n for name, n in counts.items()}
    assert {p.name: p.generate for p in result.plan} == wanted and wanted["big"] == 0
    for name, n in wanted.items():
        assert len(list((out / name).glob("*.png"))) == n
    rows = read_csv(out / "manifest.csv")
    assert list(rows[0]) == MANIFEST_COLUMNS
    assert len(rows) == sum(wanted.values()) == result.made
    assert {r["split_hash"] for r in rows} == {split.hash}
    assert {r["model_hash"] for r in rows} == {json.loads((model(run) / "capaug.json").read_text())["model_hash"]}
    first = next(r for r in rows if r["class"] == "rare")
    assert first["file"] == "rare/rare_000000.png" and int(first["seed"]) == image_seed(0, "rare", 0)
    assert (first["sampler"], first["steps"], first["guidance"]) == ("dpmsolver++", "2", "1.0")
    image = Image.open(out / first["file"])
    assert image.size == (16, 16) and image.mode == "RGB"
    plan = json.loads((out / "plan.json").read_text())
    assert plan["status"] == "complete" and [c["generate"] for c in plan["classes"]] == list(wanted.values())
    assert [a["name"] for a in plan["audit"]] == ["mid", "rare"]
    audit = read_csv(out / "audit.csv")
    assert len(audit) == len(rows) and all(0 < float(a["distance"]) <= 1 for a in audit)
    assert Image.open(out / "preview.png").size[1] == 2 + 6 * 66  # real + synthetic row per class, 16 px shown at 64


def test_same_seed_same_images_independent_of_batch_size(run, reference, tmp_path):
    out = tmp_path / "synthetic"
    synthesize(model(run), out, cfg(batch_size=1), split=run[1])
    ours, theirs = pngs(out), pngs(reference[0])
    assert ours.keys() == theirs.keys()
    for name in ours:  # different batch shapes may use different CPU kernels: one grey level of rounding at most
        assert np.abs(ours[name].astype(int) - theirs[name].astype(int)).max() <= 1


def test_resume_after_interruption_has_no_duplicates_or_gaps(run, reference, tmp_path):
    out = tmp_path / "synthetic"

    def interrupt(name, done, total):
        if name == "rare" and done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        synthesize(model(run), out, cfg(), split=run[1], on_progress=interrupt)
    partial = sorted((out / "rare").glob("*.png"))
    assert 0 < len(partial) < len(list((reference[0] / "rare").glob("*.png")))
    assert not (out / "manifest.csv").exists()
    before = len(pngs(out))
    result = synthesize(model(run), out, cfg(), split=run[1])
    assert result.made == sum(p.generate for p in result.plan) - before
    assert pngs(out).keys() == pngs(reference[0]).keys()
    for name, image in pngs(out).items():
        np.testing.assert_array_equal(image, pngs(reference[0])[name])
    files = [r["file"] for r in read_csv(out / "manifest.csv")]
    assert len(files) == len(set(files)) == len(pngs(out))
    assert synthesize(model(run), out, cfg(), split=run[1]).made == 0  # a complete run is left as it is


def test_other_settings_need_overwrite(run, reference, tmp_path):
    out = tmp_path / "synthetic"
    shutil.copytree(reference[0], out)
    with pytest.raises(CapaugError, match="other settings.*steps 2 -> 3.*--overwrite"):
        synthesize(model(run), out, cfg(steps=3), split=run[1])
    result = synthesize(model(run), out, cfg(steps=3, target="balanced:5"), split=run[1], overwrite=True)
    assert result.made == sum(p.generate for p in result.plan)
    assert {r["steps"] for r in read_csv(out / "manifest.csv")} == {"3"}


def test_audit_flags_a_copied_training_image(run, reference, tmp_path):
    out = tmp_path / "synthetic"
    shutil.copytree(reference[0], out)
    split = run[1]
    key = next(k for k, label in split.train if split.classes[label] == "rare")
    shutil.copy(Path(split.source["path"]) / key, out / "rare" / "rare_000001.png")
    result = synthesize(model(run), out, cfg(), split=split)
    row = next(r for r in read_csv(out / "audit.csv") if r["file"] == "rare/rare_000001.png")
    assert float(row["distance"]) == 0 and row["nearest_train"] == key
    rare = next(s for s in result.audit if s.name == "rare")
    assert rare.near_copies == 1 and rare.min_distance == 0


def test_drop_near_copies_regenerates_with_next_seed_indices(run, reference, tmp_path):
    distances = sorted(float(r["distance"]) for r in read_csv(reference[0] / "audit.csv") if r["class"] == "rare")
    half = len(distances) // 2
    threshold = (distances[half - 1] + distances[half]) / 2  # about half of the reference images would be dropped
    out = tmp_path / "synthetic"
    result = synthesize(model(run), out, cfg(near_copy_threshold=threshold), split=run[1])
    kept = sorted(p.name for p in (out / "rare").glob("*.png"))
    dropped = sorted(p.name for p in (out / ".rejected" / "near-copy" / "rare").glob("*.png"))
    wanted = next(p.generate for p in result.plan if p.name == "rare")
    assert len(kept) == wanted and len(dropped) >= 1 and result.dropped["rare"] == len(dropped)
    assert not set(kept) & set(dropped)
    assert max(kept) > f"rare_{wanted - 1:06d}.png"  # replacements took indices past the plan's count
    audit = read_csv(out / "audit.csv")
    assert all(float(r["distance"]) >= threshold for r in audit if r["status"] == "kept")
    assert all(float(r["distance"]) < threshold for r in audit if r["status"] == "near-copy")
    assert {r["file"] for r in read_csv(out / "manifest.csv") if r["class"] == "rare"} == {f"rare/{k}" for k in kept}


class RejectsTheFirstImage:
    """A stand-in classifier bundle: confidently calls the first image it sees 'big', every other one 'rare'."""

    def __init__(self, classes):
        self.classes, self.seen = classes, 0

    def predict_proba(self, images):
        proba = np.full((len(images), len(self.classes)), 0.01)
        proba[:, self.classes.index("rare")] = 0.98
        if self.seen == 0:
            proba[0] = 0.01
            proba[0, self.classes.index("big")] = 0.98
        self.seen += len(images)
        return proba

    def features(self, images):
        return images.reshape(len(images), -1).astype(np.float32)


def test_classifier_filter_drops_and_replaces(run, tmp_path):
    out = tmp_path / "synthetic"
    bundle = RejectsTheFirstImage(run[1].classes)
    result = synthesize(model(run), out, cfg(target="balanced:3"), split=run[1], classifier=bundle)
    for p in result.plan:
        assert len(list((out / p.name).glob("*.png"))) == p.generate
    first = next(p for p in result.plan if p.generate)
    assert result.dropped == {"big": 0, "mid": 0, "rare": 0, first.name: 1}
    assert (out / ".rejected" / "misclassified" / first.name / f"{first.name}_000000.png").exists()
    assert not (out / first.name / f"{first.name}_000000.png").exists()
    assert all(r["feature_distance"] for r in read_csv(out / "audit.csv"))


def test_resize_saves_at_the_data_size_and_audits_at_model_resolution(run, tmp_path):
    torch.manual_seed(1)
    unet = UNet2DModel(
        sample_size=8, in_channels=3, out_channels=3, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4, num_class_embeds=len(run[1].classes) + 1,
    )
    split = run[1]
    info = ModelInfo(classes=split.classes, train_counts=split.counts(), split_hash=split.hash, image_size=8, channels=3)
    small = tmp_path / "model8"
    save_diffusion_model(unet, DDPMScheduler(num_train_timesteps=100), info, small)
    out = tmp_path / "synthetic"
    synthesize(small, out, cfg(resize=True, target="balanced:4"), split=split)
    assert {Image.open(p).size for p in out.glob("*/*.png")} == {(16, 16)}
    key = next(k for k, label in split.train if split.classes[label] == "rare")
    shutil.copy(Path(split.source["path"]) / key, out / "rare" / "rare_000000.png")
    synthesize(small, out, cfg(resize=True, target="balanced:4"), split=split)
    row = next(r for r in read_csv(out / "audit.csv") if r["file"] == "rare/rare_000000.png")
    assert float(row["distance"]) == 0 and row["nearest_train"] == key


def test_dry_run_writes_nothing(run, tmp_path):
    result = synthesize(model(run), tmp_path / "synthetic", cfg(target="ratio:2"), split=run[1], dry_run=True)
    assert [p.name for p in result.plan] == ["big", "mid", "rare"] and result.plan[0].generate == 0
    assert not (tmp_path / "synthetic").exists()


def test_refuses_output_inside_the_data_folder(run):
    data = Path(run[1].source["path"])
    with pytest.raises(CapaugError, match="inside the data folder"):
        synthesize(model(run), data / "synthetic", cfg(), split=run[1])


def test_refuses_a_model_trained_on_another_split(run, tmp_path):
    info = json.loads((model(run) / "capaug.json").read_text())
    other = tmp_path / "model"
    shutil.copytree(model(run), other)
    (other / "capaug.json").write_text(json.dumps({**info, "split_hash": "0" * 64}))
    with pytest.raises(CapaugError, match="mismatched split"):
        synthesize(other, tmp_path / "out", cfg(), split=run[1])


def test_missing_or_foreign_model_folder(tmp_path):
    with pytest.raises(CapaugError, match="does not exist"):
        synthesize(tmp_path / "nope", tmp_path / "out", cfg())
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{}")
    with pytest.raises(CapaugError, match="not a capaug model folder"):
        synthesize(tmp_path / "foreign", tmp_path / "out", cfg())


def test_refuses_a_foreign_output_folder(run, tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(CapaugError, match="not written by capaug"):
        synthesize(model(run), tmp_path, cfg(), split=run[1], overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_model_and_out_never_write_inside_the_recorded_data(run, tmp_path, capsys):
    """Without --run the output is checked against the data in the model's RUN/split.json, and the model."""
    data = Path(run[1].source["path"])
    with pytest.raises(CapaugError, match="inside the data folder"):
        synthesize(model(run), data / "synthetic", cfg())
    with pytest.raises(CapaugError, match="inside the data folder"):
        synthesize(model(run), model(run) / "synthetic", cfg())
    from capaug.cli.app import main

    with pytest.raises(SystemExit) as done:
        main(["synthesize", "--model", str(model(run)), "--out", str(data / "synthetic")])
    assert done.value.code == 2 and "inside the data folder" in capsys.readouterr().err
    assert not (data / "synthetic").exists()


def test_overwrite_removes_only_what_synthesis_wrote(run, reference, tmp_path):
    out = tmp_path / "synthetic"
    shutil.copytree(reference[0], out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(CapaugError, match=r"holds files capaug did not write \(notes.txt\)"):
        synthesize(model(run), out, cfg(), split=run[1], overwrite=True)
    assert (out / "notes.txt").exists() and json.loads((out / "plan.json").read_text())["status"] == "complete"
    (out / ".capaug-output").unlink()  # a folder from before markers: adopted by its plan.json, resumed as it is
    assert synthesize(model(run), out, cfg(), split=run[1]).made == 0
    assert "rare" in json.loads((out / ".capaug-output").read_text())["entries"]


def test_read_only_output_is_refused_up_front(run, tmp_path, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if os.fspath(p) == str(tmp_path) else real(p, mode, **kw))
    with pytest.raises(CapaugError, match="not writable"):
        synthesize(model(run), tmp_path / "synthetic", cfg(), split=run[1])
    assert not (tmp_path / "synthetic").exists()


def test_a_lowered_target_needs_keep_extra_or_overwrite(run, tmp_path):
    out, targets = tmp_path / "synthetic", tmp_path / "targets.yaml"
    targets.write_text("mid: 9\nrare: 8\n")
    synthesize(model(run), out, cfg(target=str(targets)), split=run[1])
    targets.write_text("mid: 7\nrare: 5\n")  # edited to lower counts, then rerun
    with pytest.raises(CapaugError, match=r"lowered target .*mid: 5 on disk, 3 wanted, rare: 6 on disk, 3 wanted.*--keep-extra.*--overwrite"):
        synthesize(model(run), out, cfg(target=str(targets)), split=run[1])
    assert json.loads((out / "plan.json").read_text())["status"] == "complete"  # a refusal leaves the plan as it was
    kept = synthesize(model(run), out, cfg(target=str(targets)), split=run[1], keep_extra=True)
    plan = json.loads((out / "plan.json").read_text())
    assert kept.made == 0 and plan["status"] == "complete" and plan["kept_beyond_target"] == {"mid": 2, "rare": 3}
    assert len(read_csv(out / "manifest.csv")) == 11
    again = synthesize(model(run), out, cfg(target=str(targets)), split=run[1], overwrite=True)
    assert again.made == 6 and len(read_csv(out / "manifest.csv")) == 6
    assert "kept_beyond_target" not in json.loads((out / "plan.json").read_text())


def capaug(*args):
    return subprocess.run([sys.executable, "-m", "capaug.cli", *args], capture_output=True, text=True)


def test_cli_dry_run_and_errors(run, tmp_path):
    out = capaug("synthesize", "--run", str(run[0]), "--target", "balanced:6", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "rare" in out.stdout and "to generate" in out.stdout
    bad = capaug("synthesize", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert len([line for line in bad.stderr.splitlines() if line.strip() and not line.startswith("warning:")]) == 1


def test_cli_filter_classifier_auto_trains_and_reuses_the_reference(run, tmp_path):
    tiny = ["--set", "downstream.model=resnet10t", "--set", "downstream.epochs=1", "--set", "downstream.image_size=16"]
    out = capaug("synthesize", "--run", str(run[0]), "--out", str(tmp_path / "synthetic"), "--steps", "2",
                 "--filter-classifier", "auto", *tiny)
    assert out.returncode == 0, out.stderr
    reference = run[0] / "eval" / "reference_classifier.safetensors"
    assert reference.is_file()
    assert "classifier" in json.loads((tmp_path / "synthetic" / "plan.json").read_text())["settings"]
    bad = capaug("synthesize", "--model", str(model(run)), "--out", str(tmp_path / "o"), "--filter-classifier", "auto")
    assert bad.returncode == 2 and "needs --run" in bad.stderr


@pytest.mark.slow
def test_two_processes_share_the_plan(run, reference, tmp_path):
    out = tmp_path / "synthetic"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "capaug.cli",
           "synthesize", "--run", str(run[0]), "--out", str(out), "--steps", "2", "--batch-size", "3",
           "--sampler", "dpmsolver++"]  # the reference's sampler (the quickstart recipe's default is ddpm)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    main_share = sum((p.generate + 1) // 2 for p in reference[1].plan)  # process 0 makes indices 0, 2, 4, ...
    assert f"synthesized {main_share} new images" in done.stdout
    assert pngs(out).keys() == pngs(reference[0]).keys()
    for name, image in pngs(out).items():
        assert np.abs(image.astype(int) - pngs(reference[0])[name].astype(int)).max() <= 1
    assert len(read_csv(out / "manifest.csv")) == len(pngs(out))
