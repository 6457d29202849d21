"""DICOM through the optional `capaug[dicom]` extra: rescale, the file's window, MONOCHROME1, multi-frame refused.

The files are written here with pydicom (no downloads).
"""

import builtins

import numpy as np
import pytest

from capaug.augment.errors import CapaugError
from capaug.augment.sources import ImageReader, scan_source

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

RAW = (np.arange(256).reshape(16, 16) * 16).astype(np.uint16)  # stored values 0 .. 4080


def write_dicom(path, pixels=RAW, photometric="MONOCHROME2", rescale=None, window=None, frames=None):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    if frames:
        ds.NumberOfFrames = frames
    if rescale:
        ds.RescaleSlope, ds.RescaleIntercept = rescale
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype("<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def dicom_tree(root, **kwargs):
    for name in ("a", "b"):
        for i in range(3):
            write_dicom(root / name / f"{i}.dcm", RAW + 10 * i + (100 if name == "b" else 0), **kwargs)
    return root


def read(root, key, intensity="minmax"):
    catalog = scan_source(root, intensity)
    assert catalog.mode == "L" and len(catalog.items) == 6 and catalog.corrupt == []
    return ImageReader(catalog.source, catalog.mode).read(key)[..., 0]


def test_dicom_folder_is_found_and_mapped_by_minmax(tmp_path):
    image = read(dicom_tree(tmp_path / "d"), "a/0.dcm")
    np.testing.assert_array_equal(image, np.rint(RAW / 4080 * 255).astype(np.uint8))


def test_rescale_then_the_files_own_window(tmp_path):
    # HU = 2 * raw - 1000 (-1000 .. 7160); the window 100 +- 200 shows HU -100 .. 300, whatever data.intensity says
    image = read(dicom_tree(tmp_path / "d", rescale=(2, -1000), window=(100, 400)), "a/0.dcm", "window:0,10")
    hu = RAW.astype(float) * 2 - 1000
    np.testing.assert_array_equal(image, np.rint(np.clip((hu + 100) / 400, 0, 1) * 255).astype(np.uint8))


def test_rescale_without_window_uses_the_intensity_rule(tmp_path):
    image = read(dicom_tree(tmp_path / "d", rescale=(1, -1024)), "a/0.dcm", "window:-1024,-514")
    np.testing.assert_array_equal(image, np.rint(np.clip(RAW / 510, 0, 1) * 255).astype(np.uint8))


def test_monochrome1_is_inverted(tmp_path):
    image = read(dicom_tree(tmp_path / "d", photometric="MONOCHROME1"), "a/0.dcm")
    assert image[0, 0] == 255 and image[-1, -1] == 0


def test_multi_frame_is_refused_with_one_line(tmp_path):
    data = dicom_tree(tmp_path / "d")
    write_dicom(data / "a" / "cine.dcm", np.stack([RAW, RAW]), frames=2)
    with pytest.raises(CapaugError, match=r"cine.dcm is a multi-frame DICOM \(2 frames\); capaug reads one image per file"):
        scan_source(data)


def test_broken_dicom_is_listed_as_corrupt(tmp_path):
    data = dicom_tree(tmp_path / "d")
    for i in range(20):
        write_dicom(data / "b" / f"x{i}.dcm")
    (data / "a" / "bad.dcm").write_bytes(b"DICM but not really")
    with pytest.warns(UserWarning, match="skipping 1 corrupt, truncated or unreadable image.*a/bad.dcm"):
        assert scan_source(data).corrupt == ["a/bad.dcm"]


def test_without_pydicom_the_line_names_the_extra(tmp_path, monkeypatch):
    data = dicom_tree(tmp_path / "d")
    real_import = builtins.__import__

    def no_pydicom(name, *args, **kwargs):
        if name == "pydicom":
            raise ImportError("No module named 'pydicom'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pydicom)
    with pytest.raises(CapaugError, match=r"is a DICOM file; install DICOM support with `pip install capaug\[dicom\]`"):
        scan_source(data)
