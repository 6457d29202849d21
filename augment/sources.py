"""Every input of DESIGN.md (ImageFolder, pre-split tree, MedMNIST npz, CSV manifest, builtin) as one `Catalog`.

A catalog lists image keys and labels, never pixels: scanning reads image headers (PIL opens lazily) and
verifies each file, so a 100k-image folder costs a directory walk, not memory. `ImageReader` decodes one image
at a time when a dataset asks for it. The scan's findings (colour mode, corrupt files) are stored in
`RUN/split.json`, so later stages never rescan.
"""

from __future__ import annotations

import csv
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from .errors import CapaugError

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
SPLITS = ("train", "val", "test")
NPZ_KEYS = tuple(f"{part}_{what}" for part in SPLITS for what in ("images", "labels"))
MAX_CORRUPT_SHARE = 0.05
GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}

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

    @property
    def presplit(self) -> bool:
        """True when the input fixes the split itself (pre-split tree, npz, builtin, CSV with a split column)."""
        return any(split is not None for _, _, split in self.items)


def source_spec(data: str | os.PathLike) -> str:
    """The canonical spelling of a data argument: an absolute path, or `builtin:NAME` as given."""
    data = str(data)
    return data if data.startswith("builtin:") else str(Path(data).expanduser().resolve())


def scan_source(spec: str | os.PathLike) -> Catalog:
    """Scan a folder, a pre-split tree, a `.npz`, a `.csv` or `builtin:digits-lt` into a `Catalog`."""
    spec = source_spec(spec)
    if spec.startswith("builtin:"):
        from .builtin import builtin_arrays

        return _catalog_from_arrays({"kind": "builtin", "path": spec}, builtin_arrays(spec))
    path = Path(spec)
    if not path.exists():
        raise CapaugError(f"data path {path} does not exist")
    if path.is_file() and path.suffix.lower() == ".npz":
        return _catalog_from_arrays({"kind": "npz", "path": spec}, load_npz(path))
    if path.is_file() and path.suffix.lower() == ".csv":
        return _scan_csv(path)
    if path.is_dir():
        return _scan_folder(path)
    raise CapaugError(f"data path {path} is not a folder, a .npz or a .csv file")


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Read a MedMNIST-layout npz (train/val/test _images and _labels), refusing other layouts."""
    try:
        with np.load(path) as npz:
            missing = [k for k in NPZ_KEYS if k not in npz.files]
            if missing:
                raise CapaugError(
                    f"{path} lacks the keys {', '.join(missing)} (a MedMNIST npz has train/val/test _images and _labels)"
                )
            return {k: npz[k] for k in NPZ_KEYS}
    except (OSError, ValueError, AttributeError, TypeError) as e:  # not a zip, or a bare .npy array
        raise CapaugError(f"{path} is not a readable npz file: {e}") from None


def _catalog_from_arrays(source: dict, arrays: dict[str, np.ndarray]) -> Catalog:
    items: list[Item] = []
    num_classes = 0
    for part in SPLITS:
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"].reshape(-1)
        if len(images) != len(labels):
            raise CapaugError(f"{source['path']}: {part}_images has {len(images)} entries but {part}_labels {len(labels)}")
        if len(labels):
            num_classes = max(num_classes, int(labels.max()) + 1)
        items += [(f"{part}/{i:06d}", int(y), part) for i, y in enumerate(labels)]
    images = arrays["train_images"]
    mode = "RGB" if images.ndim == 4 and images.shape[-1] == 3 else "L"
    classes = [str(k) for k in range(num_classes)]
    _check_classes(source["path"], classes, items)
    return Catalog(source, None, classes, items, mode)


def _scan_folder(path: Path) -> Catalog:
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
                raise CapaugError(f"class folder {base / name} has no images")
            files += [(key, name, part) for key in keys]
    classes = sorted(class_names)
    index = {name: i for i, name in enumerate(classes)}
    return _verified_catalog({"kind": kind, "path": str(path)}, path, classes, [(k, index[c], s) for k, c, s in files])


def _scan_csv(path: Path) -> Catalog:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            if "path" not in columns or "label" not in columns:
                raise CapaugError(f"CSV {path} needs the columns path,label[,split]; it has {','.join(columns) or 'none'}")
            rows = [(r["path"].strip(), r["label"].strip(), (r.get("split") or "").strip() or None) for r in reader]
    except (UnicodeDecodeError, csv.Error, AttributeError) as e:
        raise CapaugError(f"CSV {path} is unreadable: {e}") from None
    bad_splits = sorted({s for _, _, s in rows if s is not None and s not in SPLITS})
    if bad_splits:
        raise CapaugError(f"CSV {path}: unknown split values {', '.join(bad_splits)} (use train, val or test)")
    given = {s is not None for _, _, s in rows}
    if len(given) > 1:
        raise CapaugError(f"CSV {path} gives a split for some rows but not for others")
    classes = sorted({label for _, label, _ in rows})
    index = {name: i for i, name in enumerate(classes)}
    items = [(key, index[label], split) for key, label, split in rows]
    return _verified_catalog({"kind": "csv", "path": str(path)}, path.parent, classes, items)


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


def _image_mode(path: Path) -> Optional[str]:
    """"L" or "RGB" from the header, or None when the file cannot be opened or fails PIL's verification."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            image.verify()
    except Exception:  # PIL raises many types for broken files; any of them means "corrupt"
        return None
    return "L" if mode in GREY_MODES else "RGB"


def _verified_catalog(source: dict, root: Path, classes: list[str], items: list[Item]) -> Catalog:
    """Verify every image (threads: the work is file I/O), drop corrupt ones, pick the majority colour mode."""
    with ThreadPoolExecutor(max_workers=min(32, 4 * (os.cpu_count() or 1))) as pool:
        modes = list(pool.map(_image_mode, (root / key for key, _, _ in items), chunksize=64))
    corrupt = [key for (key, _, _), mode in zip(items, modes) if mode is None]
    if corrupt:
        listed = ", ".join(corrupt[:10]) + (", ..." if len(corrupt) > 10 else "")
        if len(corrupt) > MAX_CORRUPT_SHARE * len(items):
            raise CapaugError(
                f"{len(corrupt)} of {len(items)} images in {source['path']} are corrupt or unreadable "
                f"(more than {MAX_CORRUPT_SHARE:.0%}): {listed}"
            )
        warnings.warn(f"skipping {len(corrupt)} corrupt or unreadable image(s) in {source['path']}: {listed}", stacklevel=3)
    good = [(item, mode) for item, mode in zip(items, modes) if mode is not None]
    counts = Counter(mode for _, mode in good)
    mode = "L" if counts["L"] > counts["RGB"] else "RGB"
    if counts["L"] and counts["RGB"]:
        warnings.warn(
            f"{source['path']} mixes {counts['L']} grey and {counts['RGB']} RGB images; converting all to {mode} (the majority)",
            stacklevel=3,
        )
    items = [item for item, _ in good]
    _check_classes(source["path"], classes, items)
    return Catalog(source, root, classes, items, mode, corrupt)


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


class ImageReader:
    """Decodes one image by key as a writable uint8 HxWxC array (C = 1 for "L", 3 for "RGB"); picklable."""

    def __init__(self, source: dict, mode: str):
        self.source, self.mode = source, mode
        self._arrays: Optional[dict[str, np.ndarray]] = None

    def __getstate__(self) -> dict:
        return {"source": self.source, "mode": self.mode, "_arrays": None}

    def read(self, key: str) -> np.ndarray:
        kind = self.source["kind"]
        if kind in ("npz", "builtin"):
            part, index = key.split("/")
            return _with_channel_axis(self._array_source()[f"{part}_images"][int(index)].copy())  # callers may write
        path = Path(key)
        if not path.is_absolute():
            base = Path(self.source["path"])
            path = (base.parent if kind == "csv" else base) / path
        try:
            with Image.open(path) as image:
                return _with_channel_axis(np.array(image.convert(self.mode)))
        except OSError as e:
            raise CapaugError(f"cannot read image {path}: {e}") from None

    def _array_source(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            if self.source["kind"] == "npz":
                self._arrays = load_npz(Path(self.source["path"]))
            else:
                from .builtin import builtin_arrays

                self._arrays = builtin_arrays(self.source["path"])
        return self._arrays


def _with_channel_axis(array: np.ndarray) -> np.ndarray:
    return array[..., None] if array.ndim == 2 else array
