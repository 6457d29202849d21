"""DESIGN.md's bad-input list, one case each, through the real CLI entry point: one line on stderr, exit code 2,
no traceback, and nothing written where it must not be. Other tests cover each case's details; this file is the
contract's checklist."""

from __future__ import annotations

import errno
import os

import numpy as np
import pytest
from PIL import Image

from capaug.cli.app import main
from conftest import write_images, write_tree


def run_cli(capsys, *args) -> str:
    """Run `capaug ARGS` in-process; return its one stderr line after checking exit code 2 and no traceback."""
    with pytest.raises(SystemExit) as ended:
        main([str(a) for a in args])
    err = capsys.readouterr().err
    assert ended.value.code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("warning:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def data(tmp_path):
    return write_tree(tmp_path / "data", {"big": 12, "mid": 6, "rare": 5})


def test_missing_path(capsys, tmp_path):
    assert "does not exist" in run_cli(capsys, "inspect", tmp_path / "missing")


def test_no_classes(capsys, tmp_path):
    write_images(tmp_path / "flat", 6)
    assert "class" in run_cli(capsys, "inspect", tmp_path / "flat")


def test_a_single_class(capsys, tmp_path):
    write_tree(tmp_path / "one", {"only": 8})
    assert "class" in run_cli(capsys, "inspect", tmp_path / "one")


def test_an_empty_class_folder(capsys, data):
    (data / "empty").mkdir()
    assert "empty" in run_cli(capsys, "inspect", data)


def test_a_class_too_small_to_split(capsys, data):
    write_images(data / "tiny", 1, seed=9)
    assert "tiny" in run_cli(capsys, "inspect", data)


def test_corrupt_images_are_listed(capsys, data):
    for i in range(3):
        (data / "big" / f"broken{i}.png").write_bytes(b"not a png")
    jpeg = data / "mid" / "cut.jpg"
    Image.fromarray(np.full((16, 16, 3), 90, np.uint8)).save(jpeg, quality=95)
    jpeg.write_bytes(jpeg.read_bytes()[:-40])  # truncated: a header-only check would accept it
    line = run_cli(capsys, "inspect", data)
    assert "broken0.png" in line and "cut.jpg" in line


def test_an_output_path_inside_the_data_folder(capsys, data):
    assert "inside the data folder" in run_cli(capsys, "train", data, "--run", data / "run")
    assert not (data / "run").exists()


def test_an_unknown_recipe_key(capsys, data, tmp_path):
    assert "train.nope" in run_cli(capsys, "train", data, "--run", tmp_path / "r", "--set", "train.nope=1")


def test_a_mismatched_split(capsys, data, tmp_path):
    other = write_tree(tmp_path / "other", {"a": 8, "b": 8})
    run = tmp_path / "run"
    with pytest.raises(SystemExit) as ended:
        main(["inspect", str(data), "--run", str(run)])
    assert ended.value.code == 0
    capsys.readouterr()
    assert "mismatched split" in run_cli(capsys, "inspect", other, "--run", run)


def test_an_empty_label(capsys, data, tmp_path):
    rows = ["path,label", *(f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(data.rglob("*.png")))]
    rows[3] = rows[3].rsplit(",", 1)[0] + ","
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    assert "line" in run_cli(capsys, "inspect", tmp_path / "labels.csv")


def test_a_non_integer_label(capsys, tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for part, n in (("train", 12), ("val", 3), ("test", 3)):
        arrays[f"{part}_images"] = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(n) % 3).astype(float)[:, None]
    arrays["train_labels"][1] = 0.5
    np.savez(tmp_path / "x.npz", **arrays)
    assert "0.5" in run_cli(capsys, "inspect", tmp_path / "x.npz")


def test_an_output_that_is_a_file(capsys, data, tmp_path):
    (tmp_path / "run").write_text("my notes")
    assert "is a file" in run_cli(capsys, "train", data, "--run", tmp_path / "run")
    assert (tmp_path / "run").read_text() == "my notes"


def test_an_output_that_is_not_writable(capsys, data, tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if str(p).startswith(str(locked)) else real_access(p, mode, **kw))
    assert "not writable" in run_cli(capsys, "inspect", data, "--run", locked / "run")


def test_a_full_disk(capsys, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    arrays = {f"{p}_images": rng.integers(0, 256, (6, 8, 8, 3), dtype=np.uint8) for p in ("train", "val", "test")}
    arrays.update({f"{p}_labels": (np.arange(6) % 2)[:, None] for p in ("train", "val", "test")})
    np.savez(tmp_path / "x.npz", **arrays)

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", no_space)
    assert "space" in run_cli(capsys, "data", "from-npz", tmp_path / "x.npz", "--out", tmp_path / "tree").lower()
    assert not (tmp_path / "tree").exists()


@pytest.mark.parametrize("option", [["--sample-every", "0"], ["--checkpoint-every", "0"], ["--image-size", "17"]])
def test_settings_that_cannot_work_are_refused_before_the_run_starts(capsys, data, tmp_path, option):
    line = run_cli(capsys, "train", data, "--run", tmp_path / "r", *option)
    assert option[0].lstrip("-").replace("-", "_") in line
    assert not (tmp_path / "r" / "diffusion").exists()


# --------------------------------------------------------------------------- npz files


def write_npz(path, shape, n=(12, 3, 3), seed=0):
    """A MedMNIST-layout npz with uint8 images of `shape` per image (three classes); returns the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for part, count in zip(("train", "val", "test"), n):
        arrays[f"{part}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{part}_labels"] = (np.arange(count) % 3)[:, None]
    np.savez(path, **arrays)
    return arrays


TINY_TRAIN = ["--steps", "1", "--image-size", "16", "--batch-size", "4", "--sample-every", "1000",
              "--set", "train.unet.block_out_channels=[8, 16]", "--set", "train.unet.norm_num_groups=4"]


def npz_commands(npz, tmp_path):
    return {"inspect": ["inspect", npz], "from-npz": ["data", "from-npz", npz, "--out", tmp_path / "tree"],
            "train": ["train", npz, "--run", tmp_path / "run", *TINY_TRAIN]}


@pytest.mark.parametrize("damage", ["truncated", "not-a-zip", "bad-crc"])
@pytest.mark.parametrize("command", ["inspect", "from-npz", "train"])
def test_a_damaged_npz(capsys, tmp_path, damage, command):
    good = tmp_path / "good.npz"
    write_npz(good, (16, 16, 3))
    data = good.read_bytes()
    bad = tmp_path / "bad.npz"
    if damage == "truncated":
        bad.write_bytes(data[: len(data) // 2])
    elif damage == "not-a-zip":
        bad.write_bytes(b"P6 16 16 255\n" + bytes(200))
    else:  # the zip's directory is intact, an array's bytes are not
        bad.write_bytes(data[:300] + bytes(64) + data[364:])
    line = run_cli(capsys, *npz_commands(bad, tmp_path)[command])
    assert str(bad) in line and "npz" in line
    assert not (tmp_path / "tree").exists() and not (tmp_path / "run" / "diffusion").exists()


def run_ok(capsys, *args) -> str:
    """Run `capaug ARGS` in-process, expecting success; return stderr."""
    try:
        main([str(a) for a in args])
    except SystemExit as ended:
        assert ended.code in (0, None), capsys.readouterr().err
    return capsys.readouterr().err


@pytest.mark.parametrize("shape, note", [((3, 16, 16), "channel-first"), ((16, 16, 4), "alpha"),
                                         ((4, 16, 16), "channel-first")])
def test_channel_first_and_rgba_npz_are_read_as_rgb_everywhere(capsys, tmp_path, shape, note):
    from capaug.augment.sources import scan_source

    npz = tmp_path / "x.npz"
    arrays = write_npz(npz, shape)
    images = arrays["train_images"]
    expected = (np.moveaxis(images, 1, -1) if shape[0] in (3, 4) else images)[..., :3]

    with pytest.warns(UserWarning, match=note):
        catalog = scan_source(npz)  # the one reader all stages use
    assert catalog.mode == "RGB"
    reader_pixels = np.stack([catalog_reader(catalog).read(f"train/{i:06d}") for i in range(len(images))])
    assert np.array_equal(reader_pixels, expected)

    assert note in run_ok(capsys, "inspect", npz)
    run_ok(capsys, "data", "from-npz", npz, "--out", tmp_path / "tree")
    written = np.array(Image.open(tmp_path / "tree" / "train" / "0" / "000000.png"))
    assert np.array_equal(written, expected[0])


def catalog_reader(catalog):
    from capaug.augment.sources import ImageReader

    return ImageReader(catalog.source, catalog.mode)


@pytest.mark.parametrize("shape", [(3, 16, 16), (16, 16, 4)])
def test_train_takes_channel_first_and_rgba_npz(capsys, tmp_path, shape):
    npz = tmp_path / "x.npz"
    write_npz(npz, shape)
    run_ok(capsys, "train", npz, "--run", tmp_path / "run", *TINY_TRAIN)
    assert (tmp_path / "run" / "diffusion" / "model" / "capaug.json").is_file()


@pytest.mark.parametrize("shape", [(5, 16, 16), (16, 16, 2), (2, 16, 16, 3)])
def test_npz_images_of_an_unreadable_layout_are_refused_with_the_fix(capsys, tmp_path, shape):
    npz = tmp_path / "x.npz"
    write_npz(npz, shape)
    for args in npz_commands(npz, tmp_path).values():
        line = run_cli(capsys, *args)
        assert str((12, *shape)) in line and "channel-last" in line


# --------------------------------------------------------------------------- recipe files


@pytest.fixture
def recipe_file(tmp_path):
    path = tmp_path / "recipe.yaml"

    def write(content: bytes | str):
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return path

    return write


def train_with_recipe(capsys, data, tmp_path, recipe, *more):
    line = run_cli(capsys, "train", data, "--run", tmp_path / "run", "--recipe", recipe, *more)
    assert not (tmp_path / "run" / "diffusion").exists()
    return line


def test_groups_that_do_not_divide_the_channels(capsys, data, tmp_path, recipe_file):
    recipe = recipe_file("train:\n  unet:\n    block_out_channels: [16, 32]\n    norm_num_groups: 7\n")
    line = train_with_recipe(capsys, data, tmp_path, recipe)
    assert "norm_num_groups 7" in line and "[16, 32]" in line


@pytest.mark.parametrize("content", [bytes(range(256)) * 4, "description: caf\u00e9\n".encode("latin-1")],
                         ids=["binary", "latin-1"])
def test_a_recipe_that_is_not_utf8_text(capsys, data, tmp_path, recipe_file, content):
    recipe = recipe_file(content)
    line = train_with_recipe(capsys, data, tmp_path, recipe)
    assert str(recipe) in line and "UTF-8" in line


@pytest.mark.parametrize("content", ["", "\n\n", "# settings to come\n"])
def test_an_empty_recipe(capsys, data, tmp_path, recipe_file, content):
    recipe = recipe_file(content)
    assert f"recipe file {recipe} is empty" in train_with_recipe(capsys, data, tmp_path, recipe)


@pytest.mark.parametrize("setting, message", [("steps: true", "expected a number, got true"),
                                              ("hflip: 1", "expected true or false, got 1")])
def test_true_false_and_numbers_are_not_interchangeable(capsys, data, tmp_path, recipe_file, setting, message):
    key, value = setting.split(": ")
    line = train_with_recipe(capsys, data, tmp_path, recipe_file(f"train:\n  {setting}\n"))
    assert f"'train.{key}'" in line and message in line
    assert message in run_cli(capsys, "train", data, "--run", tmp_path / "run", "--set", f"train.{key}={value}")


def config_fields():
    """(model, field name, kind) for every number and true/false setting of augment/config.py."""
    from capaug.augment import config

    models = [m for m in vars(config).values() if isinstance(m, type) and issubclass(m, config.Strict)
              and m is not config.Strict]
    for model in models:
        for name, info in model.model_fields.items():
            leaves = {leaf for leaf in config._leaves(info.annotation) if leaf is not type(None)}
            leaves |= {arg for leaf in leaves if getattr(leaf, "__origin__", None) is list for arg in leaf.__args__}
            if leaves & {int, float}:
                yield model, name, "number"
            elif bool in leaves:
                yield model, name, "bool"


def test_every_number_setting_refuses_true_false_and_every_switch_refuses_numbers():
    from pydantic import ValidationError

    fields = list(config_fields())
    assert {("TrainConfig", "steps"), ("UNetConfig", "block_out_channels"), ("TrainConfig", "hflip"),
            ("TrainConfig", "lambda_div")} <= {(m.__name__, n) for m, n, _ in fields}
    for model, name, kind in fields:
        default = model.model_fields[name].default
        wrong = [True, False] if kind == "number" else [1, 0, "true", "yes"]
        for value in wrong:
            value = [value] * len(default) if isinstance(default, list) else value
            with pytest.raises(ValidationError, match="expected"):
                model(**{name: value})


def test_numbers_written_as_text_still_work():
    from capaug.recipes import load_recipe, parse_assignment

    recipe = load_recipe("quickstart", dict(map(parse_assignment, ["train.lr=1e-4", "train.steps=5",
                                                                   "train.hflip=true", "train.lambda_div=auto"])))
    assert (recipe.train.lr, recipe.train.steps, recipe.train.hflip, recipe.train.lambda_div) == (1e-4, 5, True, "auto")
    assert load_recipe("quickstart", {"train.steps": "7", "train.unet.dropout": "0.1"}).train.steps == 7
