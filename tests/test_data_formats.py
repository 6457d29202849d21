"""Images deeper than 8 bits are read at full depth and mapped by `data.intensity`; scans decode fully; bad labels
and settings are refused with a line that names them."""

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from capaug.augment.config import DataConfig
from capaug.augment.convert import npz_to_folder
from capaug.augment.datasets import ImageDataset, diffusion_transform
from capaug.augment.errors import CapaugError
from capaug.augment.sources import ImageReader, scan_source
from capaug.augment.split import prepare_split

RAMP = np.arange(256, dtype=np.uint16).reshape(16, 16) * 200 + 1000  # 1000 .. 52000: far above 255


def write_16bit(path, pixels, rawmode="I;16"):
    path.parent.mkdir(parents=True, exist_ok=True)
    byteorder = ">u2" if rawmode == "I;16B" else "<u2"
    Image.frombytes(rawmode, pixels.shape[::-1], pixels.astype(byteorder).tobytes()).save(path)


def tree_16bit(root, suffix, rawmode="I;16"):
    for k, name in enumerate(("a", "b")):
        for i in range(5):
            write_16bit(root / name / f"{i}.{suffix}", RAMP + 100 * i + 1000 * k, rawmode)
    return root


def minmax(pixels):
    values = pixels.astype(np.float64)
    return np.rint((values - values.min()) * 255 / (values.max() - values.min())).astype(np.uint8)


def test_16bit_png_is_read_at_full_depth_by_minmax(tmp_path):
    catalog = scan_source(tree_16bit(tmp_path / "d", "png"))
    assert catalog.mode == "L"
    image = ImageReader(catalog.source, catalog.mode).read("a/0.png")
    assert image.shape == (16, 16, 1) and image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], minmax(RAMP))  # not clipped to white
    assert len(np.unique(image)) > 200


def test_big_endian_16bit_tiff_is_grey_not_rgb(tmp_path):
    catalog = scan_source(tree_16bit(tmp_path / "d", "tif", rawmode="I;16B"))
    assert catalog.mode == "L" and catalog.corrupt == []
    np.testing.assert_array_equal(ImageReader(catalog.source, catalog.mode).read("b/0.tif")[..., 0], minmax(RAMP + 1000))


def test_fixed_window_rule_clips_and_scales(tmp_path):
    catalog = scan_source(tree_16bit(tmp_path / "d", "png"), intensity="window:1000,2020")
    image = ImageReader(catalog.source, catalog.mode).read("a/0.png")[..., 0]
    expected = np.rint(np.clip((RAMP.astype(float) - 1000) / 1020, 0, 1) * 255).astype(np.uint8)
    np.testing.assert_array_equal(image, expected)
    assert catalog.source["intensity"] == "window:1000,2020"


def test_float_tiff_and_16bit_into_an_rgb_set(tmp_path, make_images):
    make_images(tmp_path / "d" / "a", 3)  # 8-bit RGB: the majority
    make_images(tmp_path / "d" / "b", 2)
    Image.fromarray(RAMP.astype(np.float32) / 7).save(tmp_path / "d" / "b" / "f.tif")
    with pytest.warns(UserWarning, match="mixes 1 grey and 5 RGB"):
        catalog = scan_source(tmp_path / "d")
    image = ImageReader(catalog.source, catalog.mode).read("b/f.tif")
    assert image.shape == (16, 16, 3) and image.min() == 0 and image.max() == 255
    np.testing.assert_array_equal(image[..., 0], image[..., 2])


def test_every_stage_sees_the_mapped_pixels(tmp_path):
    split = prepare_split(tree_16bit(tmp_path / "d", "png"), tmp_path / "run", DataConfig(intensity="window:0,65535"))
    key = split.train[0][0]
    x, _ = ImageDataset(split.reader(), split.train, diffusion_transform(16, 1))[0]
    pixels = split.reader().read(key)  # what the classifier and synthesis read too
    assert pixels.max() < 255  # the window keeps the absolute level instead of stretching each image
    assert np.allclose(x.numpy()[0], pixels[..., 0] / 127.5 - 1, atol=1e-6)


def test_eight_bit_images_are_unchanged(tmp_path, make_images):
    make_images(tmp_path / "d" / "a", 2, mode="L")
    make_images(tmp_path / "d" / "b", 2, mode="L")
    catalog = scan_source(tmp_path / "d", intensity="window:0,1000")
    image = ImageReader(catalog.source, catalog.mode).read("a/000.png")
    np.testing.assert_array_equal(image[..., 0], np.asarray(Image.open(tmp_path / "d" / "a" / "000.png")))


def test_intensity_and_fraction_settings_are_checked_at_load():
    for bad in ("window:5,1", "window:1", "minmax:2", "window:0,inf", "linear"):
        with pytest.raises(ValidationError, match="intensity must be 'minmax' or 'window:LOW,HIGH'"):
            DataConfig(intensity=bad)
    with pytest.raises(ValidationError, match="greater than 0"):
        DataConfig(val_fraction=0)
    with pytest.raises(ValidationError, match="val_fraction \\+ test_fraction must be below 1"):
        DataConfig(val_fraction=0.5, test_fraction=0.5)
    assert DataConfig(intensity="window:-1000,400.5").intensity == "window:-1000,400.5"


def test_truncated_jpeg_is_found_by_the_scan(tmp_path, make_tree):
    data = make_tree(tmp_path / "d", {"a": 20, "b": 20})
    path = data / "a" / "cut.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with Image.open(path) as image:
        image.verify()  # the header check the scan used to rely on passes
    with pytest.warns(UserWarning, match=r"skipping 1 corrupt, truncated or unreadable image\(s\) in .*: a/cut.jpg"):
        catalog = scan_source(data)
    assert catalog.corrupt == ["a/cut.jpg"] and "a/cut.jpg" not in {key for key, _, _ in catalog.items}


def test_csv_empty_label_names_the_lines(tmp_path, make_images):
    make_images(tmp_path, 4)
    (tmp_path / "m.csv").write_text("path,label\n000.png,a\n001.png,\n002.png,b\n003.png,  \n")
    with pytest.raises(CapaugError, match=r"m.csv: empty label on line\(s\) 3, 5"):
        scan_source(tmp_path / "m.csv")


def test_csv_listing_an_image_twice_is_refused(tmp_path, make_images):
    make_images(tmp_path, 4)
    (tmp_path / "m.csv").write_text("path,label\n000.png,a\n001.png,a\n000.png,b\n002.png,b\n")
    with pytest.raises(CapaugError, match=r"lists the same image more than once: 000.png \(lines 2, 4\)"):
        scan_source(tmp_path / "m.csv")


def write_npz(path, train_labels):
    rng = np.random.default_rng(0)
    images = lambda n: rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)  # noqa: E731
    np.savez(path, train_images=images(len(train_labels)), train_labels=np.asarray(train_labels)[:, None],
             val_images=images(2), val_labels=np.array([[0], [1]]), test_images=images(2), test_labels=np.array([[0], [1]]))
    return path


def test_fractional_npz_labels_are_refused_with_their_rows(tmp_path):
    path = write_npz(tmp_path / "f.npz", [0.0, 1.0, 0.5, 1.0, 1.5, 0.0])
    with pytest.raises(CapaugError, match=r"train_labels has 2 other value\(s\) at row\(s\) 2, 4 \(values 0.5, 1.5\)"):
        scan_source(path)
    catalog = scan_source(write_npz(tmp_path / "i.npz", [0.0, 1.0, 0.0, 1.0]))  # integral floats are class indices
    assert [label for _, label, part in catalog.items if part == "train"] == [0, 1, 0, 1]


def test_from_npz_with_negative_labels_says_so(tmp_path):
    path = write_npz(tmp_path / "n.npz", [0, 1, -1, 1])
    with pytest.raises(CapaugError, match=r"labels must be class indices 0, 1, 2, \.\.\.; train_labels .* row\(s\) 2 \(values -1\)"):
        npz_to_folder(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
