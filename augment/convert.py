"""The `capaug data` conversions: a MedMNIST npz to a pre-split folder tree, and a balanced tree to a long tail.

Both write their output folder atomically (`io.atomic_dir`): it appears complete or not at all. The output
never equals, lies inside or contains the input, and `overwrite` replaces only a folder capaug wrote.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from pathlib import Path

from PIL import Image

from .errors import CapaugError
from .io import atomic_dir, check_output, check_replaceable
from .sources import SPLITS, load_npz, scan_source
from .stats import long_tail_counts


def npz_to_folder(npz_path: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> dict[str, dict[str, int]]:
    """Write a MedMNIST npz as `out/{train,val,test}/<class id>/<index:06d>.png`; returns split -> class -> count."""
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise CapaugError(f"npz file {npz_path} does not exist")
    check_output(out, [npz_path])
    check_replaceable(out, overwrite)
    arrays = load_npz(npz_path)
    num_classes = 1 + max(int(arrays[f"{part}_labels"].max(initial=0)) for part in SPLITS)
    counts = {}
    with atomic_dir(out, "data from-npz") as tmp:
        for part in SPLITS:
            labels = arrays[f"{part}_labels"].reshape(-1)
            for k in range(num_classes):
                (tmp / part / str(k)).mkdir(parents=True)
            for i, (image, label) in enumerate(zip(arrays[f"{part}_images"], labels)):
                Image.fromarray(image.squeeze()).save(tmp / part / str(int(label)) / f"{i:06d}.png")
            counts[part] = {str(k): int((labels == k).sum()) for k in range(num_classes)}
    return counts


def make_long_tailed(
    data: str | os.PathLike, ratio: float, out: str | os.PathLike, overwrite: bool = False, *,
    max_per_class: int | None = None,
) -> dict[str, dict[str, int]]:
    """Copy the first `n_k = floor(n_max * ratio^(-k/(K-1)))` training files (sorted) of class k; val/test as is.

    `n_max` is `max_per_class` (the head class's count; every class must hold its n_k) or, by default, the
    smallest training class. This is how CIFAR-10-LT is made: ratio 100 on the balanced CIFAR-10 tree keeps
    5000 ... 50 training images; `max_per_class=500` a small version, 500 ... 5. Returns split -> class -> count.
    """
    if not (math.isfinite(ratio) and ratio >= 1):
        raise CapaugError(f"--ratio must be a finite number of at least 1 (the largest over the smallest class), got {ratio}")
    if max_per_class is not None and (isinstance(max_per_class, bool) or max_per_class < 1):
        raise CapaugError(f"--max-per-class must be a whole number of at least 1, got {max_per_class}")
    check_output(out, [data])
    check_replaceable(out, overwrite)
    catalog = scan_source(data)
    if catalog.source["kind"] not in ("folder", "presplit"):
        raise CapaugError("make-lt needs an image folder tree; convert an npz first with `capaug data from-npz`")
    train = [(key, label) for key, label, split in catalog.items if split in (None, "train")]
    available = Counter(label for _, label in train)
    n_max = min(available.values()) if max_per_class is None else max_per_class
    keep = long_tail_counts(n_max, ratio, len(catalog.classes))
    short = [k for k, n in enumerate(keep) if available[k] < n]
    if short:  # refused rather than capped: a capped class would bend the profile without a word
        k = short[0]
        raise CapaugError(f"ratio {ratio:g} from a head class of {n_max} needs {keep[k]} training images of class "
                          f"'{catalog.classes[k]}', which has {available[k]}"
                          + ("; give a smaller --max-per-class" if max_per_class else ""))
    if keep[-1] < 1:
        raise CapaugError(f"ratio {ratio:g} from {n_max} images leaves class '{catalog.classes[-1]}' without training "
                          f"images; the head class needs at least {math.ceil(ratio)} (--max-per-class)")
    taken: Counter = Counter()
    chosen = []
    for key, label in train:  # keys are sorted within each class
        if taken[label] < keep[label]:
            taken[label] += 1
            chosen.append((key, label, "train"))
    chosen += [item for item in catalog.items if item[2] in ("val", "test")]
    with atomic_dir(out, "data make-lt") as tmp:
        for key, _, _ in chosen:
            (tmp / key).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(catalog.root / key, tmp / key)
    written = Counter((split, label) for _, label, split in chosen)
    parts = sorted({split for split, _ in written}, key=SPLITS.index)
    return {part: {name: written[part, k] for k, name in enumerate(catalog.classes)} for part in parts}
