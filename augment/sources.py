"""Every input of DESIGN.md (ImageFolder, pre-split tree, MedMNIST npz, CSV manifest, builtin) as one `Catalog`.

A catalog lists image keys, labels and a hash of each image's decoded pixels, never the pixels: the scan
decodes every file fully, one at a time (so a truncated file is found here, not at training step 6), and keeps
only its colour mode and hash. `ImageReader` decodes one image at a time when a dataset asks for it. The scan's
findings (colour mode, corrupt files, duplicates) are stored in `RUN/split.json`, so later stages never rescan.

Every consumer (diffusion training, synthesis, the classifier) gets its pixels from `ImageReader.read`, so
they all see the same uint8 image. 8-bit images are used as they are; deeper ones (16-bit PNG/TIFF, 32-bit or
float TIFF, a non-uint8 npz, DICOM) are mapped to 0..255 by one rule, `data.intensity`: "minmax" (each
image's own min..max, the default) or "window:LOW,HIGH" (values clipped to LOW..HIGH). A DICOM file's own
window (WindowCenter +- WindowWidth / 2, after RescaleSlope/Intercept) takes precedence; MONOCHROME1 is inverted.
"""

from __future__ import annotations

import csv
import hashlib
import os
import warnings
import zipfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .config import intensity_window
from .errors import CapaugError

DICOM_EXTENSIONS = {".dcm", ".dicom"}
IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", *DICOM_EXTENSIONS}
SPLITS = ("train", "val", "test")
NPZ_KEYS = tuple(f"{part}_{what}" for part in SPLITS for what in ("images", "labels"))
MAX_CORRUPT_SHARE = 0.05
GREY_MODES = {"1", "L", "LA"}
DEEP_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N", "F"}  # grey, more than 8 bits: mapped by the intensity rule
Window = Optional[tuple[float, float]]

Item = tuple[str, int, Optional[str]]


@dataclass
class Catalog:
    """What an input holds: `items` are (key, label, given split or None); `root` is the folder to stay out of."""

    source: dict
    root: Optional[Path]
    classes: list[str]
    items: list[Item]
    mode: str
    corrupt: list[str] = field(default_factory=list)
    hashes: dict[str, str] = field(default_factory=dict)  # key -> `pixel_hash` of what `ImageReader` returns

    @property
    def presplit(self) -> bool:
        """True when the input fixes the split itself (pre-split tree, npz, builtin, CSV with a split column)."""
        return any(split is not None for _, _, split in self.items)


def source_spec(data: str | os.PathLike) -> str:
    """The canonical spelling of a data argument: an absolute path, or `builtin:NAME` as given."""
    data = str(data)
    return data if data.startswith("builtin:") else str(Path(data).expanduser().resolve())


def scan_source(spec: str | os.PathLike, intensity: str = "minmax") -> Catalog:
    """Scan a folder, a pre-split tree, a `.npz`, a `.csv` or `builtin:digits-lt` into a `Catalog`.

    `intensity` is the `data.intensity` rule for images deeper than 8 bits; it is recorded in `source`.
    """
    spec = source_spec(spec)
    intensity_window(intensity)
    if spec.startswith("builtin:"):
        from .builtin import builtin_arrays

        return _catalog_from_arrays({"kind": "builtin", "path": spec, "intensity": intensity}, builtin_arrays(spec))
    path = Path(spec)
    if not path.exists():
        raise CapaugError(f"data path {path} does not exist")
    if path.is_file() and path.suffix.lower() == ".npz":
        return _catalog_from_arrays({"kind": "npz", "path": spec, "intensity": intensity}, load_npz(path))
    if path.is_file() and path.suffix.lower() == ".csv":
        return _scan_csv(path, intensity)
    if path.is_dir():
        return _scan_folder(path, intensity)
    raise CapaugError(f"data path {path} is not a folder, a .npz or a .csv file")


def load_npz(path: Path, warn: bool = True) -> dict[str, np.ndarray]:
    """Read a MedMNIST-layout npz (train/val/test _images and _labels), refusing other layouts and labels that
    are not class indices (negative, fractional); integral float labels (1.0) become integers.

    Images come back as (N, H, W) or channel-last (N, H, W, 1 or 3): channel-first arrays are transposed and
    RGBA loses its alpha channel (views, no copy), with one warning when `warn` (the scan warns; readers not)."""
    if not zipfile.is_zipfile(path):
        raise CapaugError(f"{path} is not an npz file: not a zip archive (truncated, or another format); "
                          "write one with numpy.savez")
    try:
        with np.load(path) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise CapaugError(
                    f"{path} lacks the keys {', '.join(missing)} (a MedMNIST npz has train/val/test _images and _labels)"
                )
            arrays = {k: npz[k] for k in NPZ_KEYS}
    except (OSError, ValueError, EOFError, AttributeError, TypeError, zipfile.BadZipFile, zlib.error) as e:
        raise CapaugError(f"{path} is not a readable npz file (damaged or truncated): {e}") from None
    notes: list[str] = []
    for part in SPLITS:
        arrays[f"{part}_images"] = _channel_last(path, f"{part}_images", arrays[f"{part}_images"], notes)
        arrays[f"{part}_labels"] = _class_indices(path, f"{part}_labels", arrays[f"{part}_labels"])
    if warn and notes:
        warnings.warn(f"{path}: " + "; ".join(dict.fromkeys(notes)), stacklevel=2)
    return arrays


def _channel_last(path: Path, name: str, images: np.ndarray, notes: list[str]) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) with C = 1 or 3; channel-first is transposed when unambiguous (dim 1 is 1, 3
    or 4 and the last is not), RGBA becomes RGB (alpha dropped). Anything else is refused with the fix."""
    channels = (1, 3, 4)
    if images.ndim == 4 and images.shape[1] in channels and images.shape[-1] not in channels:
        shape = ", ".join(map(str, images.shape[1:]))
        notes.append(f"images are channel-first (N, {shape}), read as channel-last (N, H, W, C)")
        images = np.moveaxis(images, 1, -1)
    if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] in (1, 3)):
        return images
    if images.ndim == 4 and images.shape[-1] == 4:
        notes.append("images have 4 channels (RGBA), read as RGB (the alpha channel is dropped)")
        return images[..., :3]
    raise CapaugError(
        f"{path}: {name} has shape {images.shape}; images must be (N, H, W) or channel-last (N, H, W, C) with "
        "C = 1, 3 or 4 (for channel-first arrays save numpy.moveaxis(images, 1, -1))"
    )


def _class_indices(path: Path, name: str, labels: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating) or labels.dtype == bool):
        raise CapaugError(f"{path}: {name} holds {labels.dtype} values; labels must be class indices 0, 1, 2, ...")
    flat = labels.reshape(-1)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(flat) | (flat < 0) | (flat != np.round(flat))) if flat.dtype != bool else []
    if len(bad):
        raise CapaugError(
            f"{path}: labels must be class indices 0, 1, 2, ...; {name} has {len(bad)} other value(s) at "
            f"row(s) {_listed(bad.tolist())} (values {_listed(flat[bad].tolist())})"
        )
    return labels.astype(np.int64)


def _catalog_from_arrays(source: dict, arrays: dict[str, np.ndarray]) -> Catalog:
    items: list[Item] = []
    hashes: dict[str, str] = {}
    window = intensity_window(source["intensity"])
    num_classes = 0
    for part in SPLITS:
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"].reshape(-1)
        if len(images) != len(labels):
            raise CapaugError(f"{source['path']}: {part}_images has {len(images)} entries but {part}_labels {len(labels)}")
        if len(labels):
            num_classes = max(num_classes, int(labels.max()) + 1)
        items += [(f"{part}/{i:06d}", int(y), part) for i, y in enumerate(labels)]
        hashes.update((f"{part}/{i:06d}", pixel_hash(_in_mode(to_uint8(image, window), None))) for i, image in enumerate(images))
    images = arrays["train_images"]
    mode = "RGB" if images.ndim == 4 and images.shape[-1] == 3 else "L"
    classes = [str(k) for k in range(num_classes)]
    _check_classes(source["path"], classes, items)
    return Catalog(source, None, classes, items, mode, hashes=hashes)


def _scan_folder(path: Path, intensity: str) -> Catalog:
    subdirs = _subfolders(path)
    if subdirs and "train" in subdirs and set(subdirs) <= set(SPLITS):
        kind, parts = "presplit", [part for part in SPLITS if part in subdirs]  # train first
    else:
        kind, parts = "folder", [None]
    files: list[tuple[str, str, Optional[str]]] = []  # key, class name, split
    class_names: set[str] = set()
    for part in parts:
        base = path / part if part else path
        classes = _subfolders(base)
        if part in (None, "train") and not classes:
            where = base if part is None else f"{base} (the train split)"
            raise CapaugError(
                f"{where} has no class subfolders; expected DATA/<class>/<image> or DATA/{{train,val,test}}/<class>/..."
            )
        if part not in (None, "train"):
            unknown = sorted(set(classes) - class_names)
            if unknown:
                raise CapaugError(f"{base} has class folders not in train: {', '.join(unknown)}")
        class_names |= set(classes)
        for name in classes:
            keys = _image_files(path, base / name)
            if not keys:
                raise CapaugError(f"class folder {base / name} has no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
            files += [(key, name, part) for key in keys]
    classes = sorted(class_names)
    index = {name: i for i, name in enumerate(classes)}
    source = {"kind": kind, "path": str(path), "intensity": intensity}
    return _verified_catalog(source, path, classes, [(k, index[c], s) for k, c, s in files])


def _scan_csv(path: Path, intensity: str) -> Catalog:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "path" not in columns or "label" not in columns:
                raise CapaugError(f"CSV {path} needs the columns path,label[,split]; it has {','.join(columns) or 'none'}")
            rows = [
                (reader.line_num, (r["path"] or "").strip(), (r["label"] or "").strip(), (r.get("split") or "").strip() or None)
                for r in reader
            ]
    except (UnicodeDecodeError, csv.Error, AttributeError) as e:
        raise CapaugError(f"CSV {path} is unreadable: {e}") from None
    for column, position in (("path", 1), ("label", 2)):
        empty = [row[0] for row in rows if not row[position]]
        if empty:
            raise CapaugError(f"CSV {path}: empty {column} on line(s) {_listed(empty)}; every row needs a path and a label")
    lines_of: dict[str, list[int]] = {}
    for line, key, _, _ in rows:
        lines_of.setdefault(key, []).append(line)
    repeated = [f"{key} (lines {_listed(lines)})" for key, lines in lines_of.items() if len(lines) > 1]
    if repeated:
        raise CapaugError(f"CSV {path} lists the same image more than once: {_listed(repeated)}")
    bad_splits = sorted({s for _, _, _, s in rows if s is not None and s not in SPLITS})
    if bad_splits:
        raise CapaugError(f"CSV {path}: unknown split values {', '.join(bad_splits)} (use train, val or test)")
    given = {s is not None for _, _, _, s in rows}
    if len(given) > 1:
        raise CapaugError(f"CSV {path} gives a split for some rows but not for others")
    classes = sorted({label for _, _, label, _ in rows})
    index = {name: i for i, name in enumerate(classes)}
    items = [(key, index[label], split) for _, key, label, split in rows]
    return _verified_catalog({"kind": "csv", "path": str(path), "intensity": intensity}, path.parent, classes, items)


def _listed(values: list, limit: int = 10) -> str:
    return ", ".join(map(str, values[:limit])) + (", ..." if len(values) > limit else "")


def _subfolders(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(root: Path, folder: Path) -> list[str]:
    """Image files under `folder` (recursively, sorted) as keys relative to `root`."""
    keys = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        keys += [
            (rel / name).as_posix()
            for name in filenames
            if not name.startswith(".") and Path(name).suffix.lower() in IMAGE_EXTENSIONS
        ]
    return sorted(keys)


def _scan_image(path: Path, window: Window) -> tuple[str, str] | str:
    """("L" or "RGB", pixel hash) of a fully decoded image, or why it cannot be decoded to the end."""
    try:
        pixels = decode_image(path, None, window)
    except CapaugError:  # DICOM support missing, a multi-frame file: not a corrupt file, a line for the user
        raise
    except Exception as e:  # PIL and pydicom raise many types for broken files; any of them means "corrupt"
        return f"{type(e).__name__}: {e}"
    return ("L" if pixels.shape[-1] == 1 else "RGB"), pixel_hash(pixels)


def _verified_catalog(source: dict, root: Path, classes: list[str], items: list[Item]) -> Catalog:
    """Decode every image (threads: PIL decodes without the GIL), drop corrupt ones, pick the majority colour mode."""
    window = intensity_window(source["intensity"])
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        scanned = list(pool.map(lambda key: _scan_image(root / key, window), [key for key, _, _ in items]))
    failed = {key: found for (key, _, _), found in zip(items, scanned) if isinstance(found, str)}
    corrupt = list(failed)
    if corrupt:
        first = f"{_listed(corrupt)} (first: {next(iter(failed.values()))})"
        if len(corrupt) > MAX_CORRUPT_SHARE * len(items):
            raise CapaugError(
                f"{len(corrupt)} of {len(items)} images in {source['path']} are corrupt, truncated or unreadable "
                f"(more than {MAX_CORRUPT_SHARE:.0%}): {first}"
            )
        warnings.warn(f"skipping {len(corrupt)} corrupt, truncated or unreadable image(s) in {source['path']}: {first}", stacklevel=3)
    good = [(item, found) for item, found in zip(items, scanned) if not isinstance(found, str)]
    counts = Counter(found[0] for _, found in good)
    mode = "L" if counts["L"] > counts["RGB"] else "RGB"
    if counts["L"] and counts["RGB"]:
        warnings.warn(
            f"{source['path']} mixes {counts['L']} grey and {counts['RGB']} RGB images; converting all to {mode} (the majority)",
            stacklevel=3,
        )
    reader = ImageReader(source, mode)  # hashes what the reader returns: the minority mode is hashed converted
    hashes = {key: digest if own == mode else pixel_hash(reader.read(key)) for (key, _, _), (own, digest) in good}
    items = [item for item, _ in good]
    _check_classes(source["path"], classes, items)
    return Catalog(source, root, classes, items, mode, corrupt, hashes)


def _check_classes(where: str, classes: list[str], items: list[Item]) -> None:
    """At least two classes, and every class has training images (all images when the input is unsplit)."""
    if not classes:
        raise CapaugError(f"{where} has no classes")
    if len(classes) == 1:
        raise CapaugError(f"{where} has only one class ('{classes[0]}'); at least two are needed")
    train_counts = Counter(label for _, label, split in items if split in (None, "train"))
    for label, name in enumerate(classes):
        if not train_counts[label]:
            raise CapaugError(f"class '{name}' in {where} has no readable training images")


def pixel_hash(pixels: np.ndarray) -> str:
    """sha256 of an image's shape and pixels: equal hashes mean equal images (also the leakage guard of classifier.data)."""
    pixels = np.ascontiguousarray(pixels)
    return hashlib.sha256(repr(pixels.shape).encode() + pixels.tobytes()).hexdigest()


def to_uint8(pixels: np.ndarray, window: Window) -> np.ndarray:
    """The intensity rule: uint8 stays as it is; anything else maps `window` = (LOW, HIGH), or the image's own
    finite min..max when None, linearly onto 0..255 (clipped; a constant image becomes 0)."""
    if pixels.dtype == np.uint8:
        return pixels
    values = pixels.astype(np.float64)
    if window is None:
        finite = values[np.isfinite(values)]
        window = (finite.min(), finite.max()) if finite.size else (0.0, 0.0)
    low, high = window
    if high <= low:
        return np.zeros(values.shape, np.uint8)
    scaled = np.nan_to_num((values - low) * (255.0 / (high - low)), nan=0.0)
    return np.rint(np.clip(scaled, 0, 255)).astype(np.uint8)


def decode_image(path: Path, mode: Optional[str], window: Window) -> np.ndarray:
    """A file's pixels, fully decoded, as a writable uint8 HxWxC array in `mode` ("L" or "RGB"; None: the file's
    own), images deeper than 8 bits mapped by the intensity rule (`window`). Raises OSError for a broken file."""
    if path.suffix.lower() in DICOM_EXTENSIONS:
        return _in_mode(_read_dicom(path, window), mode)
    with Image.open(path) as image:
        image.load()  # the whole file: a truncated one fails here
        if image.mode in DEEP_MODES:
            return _in_mode(to_uint8(np.array(image), window), mode)
        return _in_mode(np.array(image.convert(mode or ("L" if image.mode in GREY_MODES else "RGB"))), mode)


def _read_dicom(path: Path, window: Window) -> np.ndarray:
    """A single-frame DICOM as uint8 HxW (grey) or HxWx3: modality rescale, the file's window when it has one,
    MONOCHROME1 inverted."""
    try:
        import pydicom
    except ImportError:
        raise CapaugError(f"{path} is a DICOM file; install DICOM support with `pip install capaug[dicom]`") from None
    try:
        ds = pydicom.dcmread(path)
        frames = int(ds.get("NumberOfFrames") or 1)
        pixels = ds.pixel_array if frames == 1 else None
    except Exception as e:  # not DICOM, no pixel data, a compression without its decoder
        raise OSError(f"not a readable DICOM image: {e}") from None
    if pixels is None:
        raise CapaugError(f"{path} is a multi-frame DICOM ({frames} frames); capaug reads one image per file: save each frame as a file")
    if int(ds.get("SamplesPerPixel") or 1) != 1:
        return to_uint8(pixels, window)  # colour, as pydicom decodes it (RGB)
    slope, intercept = float(ds.get("RescaleSlope") or 1), float(ds.get("RescaleIntercept") or 0)
    if (slope, intercept) != (1.0, 0.0):
        pixels = pixels * slope + intercept
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is not None and width is not None and float(np.ravel(width)[0]) > 0:
        c, w = float(np.ravel(center)[0]), float(np.ravel(width)[0])
        window = (c - w / 2, c + w / 2)
    grey = to_uint8(pixels, window)
    return 255 - grey if ds.get("PhotometricInterpretation") == "MONOCHROME1" else grey


def _in_mode(pixels: np.ndarray, mode: Optional[str]) -> np.ndarray:
    """HxW or HxWxC uint8 as HxWxC in `mode` (grey repeated to RGB, RGB to grey by PIL's luminance); None: as is."""
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    if mode == "RGB" and pixels.shape[-1] == 1:
        return np.repeat(pixels, 3, axis=-1)
    if mode == "L" and pixels.shape[-1] == 3:
        return np.array(Image.fromarray(pixels).convert("L"))[..., None]
    return pixels


class ImageReader:
    """Decodes one image by key as a writable uint8 HxWxC array (C = 1 for "L", 3 for "RGB") by the source's
    intensity rule: the pixels every stage sees. Picklable."""

    def __init__(self, source: dict, mode: str):
        self.source, self.mode = source, mode
        self.window = intensity_window(source.get("intensity", "minmax"))  # splits older than the rule: its default
        self._arrays: Optional[dict[str, np.ndarray]] = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None}

    def read(self, key: str) -> np.ndarray:
        kind = self.source["kind"]
        if kind in ("npz", "builtin"):
            part, index = key.split("/")
            image = self._array_source()[f"{part}_images"][int(index)]
            return np.array(_in_mode(to_uint8(image, self.window), self.mode))  # a copy: callers may write
        path = Path(key)
        if not path.is_absolute():
            base = Path(self.source["path"])
            path = (base.parent if kind == "csv" else base) / path
        try:
            return decode_image(path, self.mode, self.window)
        except OSError as e:
            raise CapaugError(f"cannot read image {path}: {e}") from None

    def _array_source(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            if self.source["kind"] == "npz":
                self._arrays = load_npz(Path(self.source["path"]), warn=False)  # the scan warned
            else:
                from .builtin import builtin_arrays

                self._arrays = builtin_arrays(self.source["path"])
        return self._arrays
