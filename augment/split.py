"""The train/val/test split every stage shares, made once and kept in `RUN/split.json`.

Splits an input gives (a pre-split tree, an npz, the builtin set, a CSV split column) are respected. Parts it
lacks are carved from its training images, stratified and seeded, in the proportions of the fractions: a tree
with train/ and test/ but no val/ gets val = val_fraction / (1 - test_fraction) of each training class (12.5%
by default, the 70:10 of 70/10/20) before any model sees it, so the diffusion model never trains on val images.
An unsplit input is split per class: round(n * fraction) images to test and to val, at least one each, the rest
(at least one) to train. `hash` is a sha256 of the canonical lists, so later stages can tell splits apart.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from .config import DataConfig
from .errors import CapaugError
from .io import ensure_outside, write_json
from .sources import SPLITS, Catalog, ImageReader, scan_source, source_spec
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
            **{part: [list(pair) for pair in getattr(self, part)] for part in SPLITS},
        }


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
    return Split(
        source=catalog.source,
        classes=catalog.classes,
        mode=catalog.mode,
        **{part: sorted(pairs) for part, pairs in parts.items()},
        seed=cfg.split_seed,
        fractions=fractions,
        corrupt=catalog.corrupt,
    )


def prepare_split(data: Optional[str | os.PathLike], run_dir: Path, cfg: DataConfig) -> Split:
    """The run's split: `RUN/split.json` if it exists (it must come from `data`), else scan, split and write it."""
    run_dir = Path(run_dir)
    if data is not None:
        ensure_outside(run_dir, None if str(data).startswith("builtin:") else data)
    if (run_dir / SPLIT_FILE).exists():
        split = load_split(run_dir)
        if data is not None and split.source["path"] != source_spec(data):
            raise CapaugError(
                f"{run_dir / SPLIT_FILE} was made from {split.source['path']}, not {source_spec(data)} (mismatched split)"
            )
        if (split.seed, split.fractions) != (cfg.split_seed, _fractions(cfg)):
            warnings.warn(
                f"{run_dir / SPLIT_FILE} keeps its own seed and fractions; the data settings are not applied to it",
                stacklevel=2,
            )
        return split
    if data is None:
        raise CapaugError(f"{run_dir} has no {SPLIT_FILE}; pass the data to make one")
    split = make_split(scan_source(data), cfg)
    write_json(run_dir / SPLIT_FILE, split.to_json())
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
        )
        recorded = raw["hash"]
    except (json.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as e:
        raise CapaugError(f"{path} is unreadable ({type(e).__name__}: {e}); delete it to make a new split") from None
    if split.hash != recorded:
        raise CapaugError(f"{path} was edited: its lists no longer match its hash; delete it to make a new split")
    return split


def _fractions(cfg: DataConfig) -> dict[str, float]:
    train = round(1 - cfg.val_fraction - cfg.test_fraction, 10)
    if train <= 0:
        raise CapaugError(f"val_fraction + test_fraction must be below 1, got {cfg.val_fraction} + {cfg.test_fraction}")
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
