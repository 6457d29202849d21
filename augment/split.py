"""The train/val/test split every stage shares, made once and kept in `RUN/split.json`.

Splits an input gives (a pre-split tree, an npz, the builtin set, a CSV split column) are respected. Parts it
lacks are carved from its training images, stratified and seeded, in the proportions of the fractions: a tree
with train/ and test/ but no val/ gets val = val_fraction / (1 - test_fraction) of each training class (12.5%
by default, the 70:10 of 70/10/20) before any model sees it, so the diffusion model never trains on val images.
An unsplit input is split per class: round(n * fraction) images to test and to val, at least one each, the rest
(at least one) to train. `hash` is a sha256 of the canonical lists, so later stages can tell splits apart.

Images with identical decoded pixels are found when the split is made (from the scan's pixel hashes) and kept
as groups in `split.json`. A test image equal to a training image would make the test a training image:
`prepare_split` (what `train` calls) stops on it, naming the remedy; `data.duplicates=drop-eval` drops such
test and val images from evaluation, recorded in `dropped` (key, part, class, reason). Val images equal to
training images, identical images under different classes, duplicates within a split and classes without
val or test images are warnings (`Split.findings`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import numpy as np

from .config import DataConfig
from .errors import CapaugError
from .io import ensure_outside, write_json
from .sources import SPLITS, Catalog, ImageReader, pixel_hash, scan_source, source_spec
from .stats import ClassStats, class_stats

FORMAT = "capaug-split/1"
SPLIT_FILE = "split.json"

Pair = tuple[str, int]


@dataclass
class Split:
    source: dict
    classes: list[str]
    mode: str
    train: list[Pair]
    val: list[Pair]
    test: list[Pair]
    seed: int
    fractions: dict[str, float]
    corrupt: list[str] = field(default_factory=list)
    hash: str = ""
    duplicates: Optional[list[list[str]]] = None  # groups of keys with identical pixels; None: not yet known
    dropped: list[dict] = field(default_factory=list)  # val/test images left out of evaluation: key, part, class, reason

    def __post_init__(self) -> None:
        self.hash = self.hash or content_hash(self.classes, self.train, self.val, self.test)

    def counts(self, part: str = "train") -> list[int]:
        labels = np.asarray([label for _, label in getattr(self, part)], dtype=np.int64)
        return np.bincount(labels, minlength=len(self.classes)).tolist()

    def reader(self) -> ImageReader:
        return ImageReader(self.source, self.mode)

    def stats(self, cfg: DataConfig) -> ClassStats:
        """Class statistics of the training part (what the diffusion model learns from)."""
        return class_stats(self.classes, self.counts("train"), cfg.many_threshold, cfg.few_threshold)

    def describe(self, cfg: DataConfig) -> dict:
        """Everything `capaug inspect` shows, as plain data: per-class counts per part, shares and groups."""
        stats = self.stats(cfg)
        counts = {part: self.counts(part) for part in SPLITS}
        return {
            "source": self.source,
            "mode": self.mode,
            "split_hash": self.hash,
            "imbalance_ratio": stats.imbalance_ratio,
            "grouping": stats.grouping,
            "thresholds": {"many": cfg.many_threshold, "few": cfg.few_threshold},
            "totals": {part: sum(c) for part, c in counts.items()},
            "corrupt": len(self.corrupt),
            "missing": self.missing(),
            "duplicates": self.duplicate_report(),
            "dropped": self.dropped,
            "classes": [
                {"class": name, **{part: counts[part][k] for part in SPLITS}, "share": stats.shares[k], "group": stats.groups[k]}
                for k, name in enumerate(self.classes)
            ],
        }

    def to_json(self) -> dict:
        return {
            "format": FORMAT,
            "source": self.source,
            "classes": self.classes,
            "mode": self.mode,
            "seed": self.seed,
            "fractions": self.fractions,
            "hash": self.hash,
            "corrupt": self.corrupt,
            "duplicates": self.duplicates,
            "dropped": self.dropped,
            **{part: [list(pair) for pair in getattr(self, part)] for part in SPLITS},
        }

    def missing(self) -> dict[str, list[str]]:
        """val/test -> the classes with no images there (their results are missing, not measured)."""
        return {part: [c for c, n in zip(self.classes, self.counts(part)) if n == 0] for part in ("val", "test")}

    def duplicate_report(self) -> dict[str, list[list[str]]]:
        """The duplicate groups against the current lists (dropped images are gone): `test_in_train` and
        `val_in_train` pairs [key, training key], `across_classes` groups with different labels, `other` groups."""
        where = {key: (part, label) for part in SPLITS for key, label in getattr(self, part)}
        report: dict[str, list[list[str]]] = {"test_in_train": [], "val_in_train": [], "across_classes": [], "other": []}
        for group in self.duplicates or []:
            members = [key for key in group if key in where]
            train = [key for key in members if where[key][0] == "train"]
            evaluated = [key for key in members if where[key][0] != "train"]
            for key in evaluated if train else []:
                report[f"{where[key][0]}_in_train"].append([key, train[0]])
            if len({where[key][1] for key in members}) > 1:
                report["across_classes"].append(members)
            elif len(members) > 1 and not (train and evaluated):
                report["other"].append(members)
        return report

    def check_duplicates(self) -> None:
        """Refuse a split whose test holds training images (the remedy is in the line)."""
        pairs = self.duplicate_report()["test_in_train"]
        if pairs:
            raise CapaugError(_pairs_line("test", pairs) + "; remove them from the data, or pass "
                              "--set data.duplicates=drop-eval to drop them from evaluation (recorded in split.json)")

    def findings(self) -> list[str]:
        """One line per thing the user should know before training: duplicates, classes without val/test, drops."""
        report, lines = self.duplicate_report(), []
        for part in ("test", "val"):
            if report[f"{part}_in_train"]:
                lines.append(_pairs_line(part, report[f"{part}_in_train"]) + " (data.duplicates=drop-eval drops them from evaluation)")
        label = {key: self.classes[y] for part in SPLITS for key, y in getattr(self, part)}
        if report["across_classes"]:
            example = " = ".join(f"{key} ({label[key]})" for key in report["across_classes"][0])
            lines.append(f"{len(report['across_classes'])} group(s) of identical images carry different classes, e.g. {example}")
        if report["other"]:
            lines.append(f"{len(report['other'])} group(s) of identical images within a class, e.g. {' = '.join(report['other'][0])}")
        for part, names in self.missing().items():
            if names:
                lines.append(f"class(es) {', '.join(names)} have no {part} images: their {part} results will be missing, not measured")
        if self.dropped:
            lines.append(f"{len(self.dropped)} val/test image(s) are left out of evaluation as duplicates of training images (listed in split.json)")
        return lines


def _pairs_line(part: str, pairs: list[list[str]]) -> str:
    key, same_as = pairs[0]
    return f"{len(pairs)} {part} image(s) have the same pixels as a training image, e.g. {_named(part, key)} = {_named('train', same_as)}"


def _named(part: str, key: str) -> str:
    """A key with its part, unless the key already starts with it (npz keys, pre-split trees)."""
    return key if key.startswith(f"{part}/") else f"{part} {key}"


def duplicate_groups(hashes: dict[str, str]) -> list[list[str]]:
    """Keys grouped by pixel hash, only groups of two or more, sorted."""
    by_hash: dict[str, list[str]] = {}
    for key, digest in hashes.items():
        by_hash.setdefault(digest, []).append(key)
    return sorted(sorted(keys) for keys in by_hash.values() if len(keys) > 1)


def apply_duplicate_policy(split: Split, cfg: DataConfig) -> Split:
    """With `data.duplicates=drop-eval`, the split without its val/test images equal to training images."""
    report = split.duplicate_report()
    pairs = report["test_in_train"] + report["val_in_train"]
    if cfg.duplicates != "drop-eval" or not pairs:
        return split
    same_as = dict(map(tuple, pairs))
    dropped = [
        {"key": key, "part": part, "class": split.classes[label], "reason": f"same pixels as training image {same_as[key]}"}
        for part in ("val", "test") for key, label in getattr(split, part) if key in same_as
    ]
    kept = {part: [pair for pair in getattr(split, part) if pair[0] not in same_as] for part in ("val", "test")}
    return replace(split, **kept, dropped=split.dropped + dropped, hash="")


def content_hash(classes: list[str], train: list[Pair], val: list[Pair], test: list[Pair]) -> str:
    canonical = json.dumps(
        {"classes": classes, "train": sorted(train), "val": sorted(val), "test": sorted(test)}, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def make_split(catalog: Catalog, cfg: DataConfig) -> Split:
    """Respect the splits the catalog gives and carve the missing ones from its training images, per class."""
    fractions = _fractions(cfg)
    given = {part: [(k, y) for k, y, s in catalog.items if s == part] for part in SPLITS}
    pool = given["train"] if catalog.presplit else [(k, y) for k, y, _ in catalog.items]
    missing = [part for part in ("test", "val") if not given[part] and fractions[part] > 0]
    share = {part: fractions[part] / (fractions["train"] + sum(fractions[m] for m in missing)) for part in missing}
    parts = {part: list(pairs) for part, pairs in given.items()}
    parts["train"] = []
    by_class: list[list[str]] = [[] for _ in catalog.classes]
    for key, label in pool:
        by_class[label].append(key)
    for label, name in enumerate(catalog.classes):
        keys = sorted(by_class[label])
        sizes = _carve_sizes(len(keys), share)
        if sizes is None:
            raise CapaugError(_too_small(name, len(keys), share, catalog.presplit, fractions))
        order = np.random.default_rng([cfg.split_seed, label]).permutation(len(keys))
        start = 0
        for part in missing:
            parts[part] += [(keys[i], label) for i in order[start : start + sizes[part]]]
            start += sizes[part]
        parts["train"] += [(keys[i], label) for i in order[start:]]
    split = Split(
        source=catalog.source,
        classes=catalog.classes,
        mode=catalog.mode,
        **{part: sorted(pairs) for part, pairs in parts.items()},
        seed=cfg.split_seed,
        fractions=fractions,
        corrupt=catalog.corrupt,
        duplicates=duplicate_groups(catalog.hashes),
    )
    return apply_duplicate_policy(split, cfg)


def prepare_split(data: Optional[str | os.PathLike], run_dir: Path, cfg: DataConfig, check: bool = True) -> Split:
    """The run's split: `RUN/split.json` if it exists (it must come from `data`), else scan, split and write it.

    With `check` (training), a test image equal to a training image stops here, before any model sees the
    split (`inspect` passes False and lists it); the other findings are warnings. `data.duplicates=drop-eval`
    also applies to an existing split.json, which is then rewritten without those images (a new split hash).
    """
    run_dir = Path(run_dir)
    if data is not None:
        ensure_outside(run_dir, None if str(data).startswith("builtin:") else data)
    if (run_dir / SPLIT_FILE).exists():
        split = load_split(run_dir)
        if data is not None and split.source["path"] != source_spec(data):
            raise CapaugError(
                f"{run_dir / SPLIT_FILE} was made from {split.source['path']}, not {source_spec(data)} (mismatched split)"
            )
        own = (split.seed, split.fractions, split.source.get("intensity", "minmax"))
        if own != (cfg.split_seed, _fractions(cfg), cfg.intensity):
            warnings.warn(
                f"{run_dir / SPLIT_FILE} keeps its own seed, fractions and intensity rule; the data settings are not applied to it",
                stacklevel=2,
            )
        if split.duplicates is None:  # a split.json from before duplicates were recorded
            reader = split.reader()
            keys = [key for part in SPLITS for key, _ in getattr(split, part)]
            split.duplicates = duplicate_groups({key: pixel_hash(reader.read(key)) for key in keys})
        dropped = apply_duplicate_policy(split, cfg)
        if dropped is not split:
            warnings.warn(f"{run_dir / SPLIT_FILE}: dropping duplicates of training images from val/test (data.duplicates="
                          f"drop-eval); the split hash changes from {split.hash[:12]} to {dropped.hash[:12]}", stacklevel=2)
            split = dropped
            write_json(run_dir / SPLIT_FILE, split.to_json())
    elif data is None:
        raise CapaugError(f"{run_dir} has no {SPLIT_FILE}; pass the data to make one")
    else:
        split = make_split(scan_source(data, cfg.intensity), cfg)
        write_json(run_dir / SPLIT_FILE, split.to_json())
    if check:
        split.check_duplicates()
        for line in split.findings():
            warnings.warn(line, stacklevel=2)
    return split


def load_split(run_dir: Path) -> Split:
    """Read `RUN/split.json`, refusing a file whose lists no longer match its hash."""
    path = Path(run_dir) / SPLIT_FILE
    if not path.is_file():
        raise CapaugError(f"{Path(run_dir)} has no {SPLIT_FILE}; make one with `capaug inspect DATA --run {run_dir}`")
    try:
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise CapaugError(f"{path} has format {raw.get('format')!r}; this capaug reads {FORMAT!r}")
        lists = {part: [(key, int(label)) for key, label in raw[part]] for part in SPLITS}
        split = Split(
            source=raw["source"],
            classes=raw["classes"],
            mode=raw["mode"],
            **lists,
            seed=raw["seed"],
            fractions=raw["fractions"],
            corrupt=raw["corrupt"],
            duplicates=raw.get("duplicates"),
            dropped=raw.get("dropped", []),
        )
        recorded = raw["hash"]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise CapaugError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it to make a new split") from None
    if split.hash != recorded:
        raise CapaugError(f"{path} was edited: its lists no longer match its hash; delete it to make a new split")
    return split


def _fractions(cfg: DataConfig) -> dict[str, float]:
    train = round(1 - cfg.val_fraction - cfg.test_fraction, 10)  # above 0: DataConfig checks it
    return {"train": train, "val": cfg.val_fraction, "test": cfg.test_fraction}


def _carve_sizes(n: int, share: dict[str, float]) -> Optional[dict[str, int]]:
    """Images per carved part (round half up, at least one each), or None when train would be left empty."""
    sizes = {part: max(1, int(n * f + 0.5)) for part, f in share.items()}
    return sizes if n - sum(sizes.values()) >= 1 else None


def _too_small(name: str, n: int, share: dict[str, float], presplit: bool, fractions: dict[str, float]) -> str:
    needed = next(m for m in itertools.count(n + 1) if _carve_sizes(m, share) is not None)
    if presplit:
        return f"class '{name}' has {n} training image(s); at least {needed} are needed to carve {' and '.join(share)} from train"
    pattern = "/".join(f"{100 * fractions[p]:g}" for p in SPLITS)
    return f"class '{name}' has {n} image(s); at least {needed} are needed to split {pattern}"
