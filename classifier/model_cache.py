"""Finished classifiers' results, kept so that `capaug downstream` resumes model by model.

An entry is one trained model's outcome, not its weights: the record `run_downstream` builds when it trains
(val score, steps, seconds, ...) and, once the model was tested, its test metrics and which test images it got
right (the paired bootstrap needs them). A tuning-grid model that was never tested has a record only; when it is
chosen later it is trained again (a seed decides everything on a CPU), never loaded.

An entry's file is `<key>.npz`, the key a hash of everything that decides the outcome (`run_context` for what a
run's models share, `model_key` for one arm and seed), so a changed setting misses and the identical command
hits. Settings that only choose which models run or how they are reported (seeds, arms, tuning, bootstrap) and
the image cache's size are left out, so one folder serves several runs: `bench/scaling.py` trains the classic
arms once for a whole curve. A file that cannot be read counts as absent and is written anew.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Optional

import numpy as np

from capaug.augment.config import DownstreamConfig
from capaug.augment.io import atomic_path, claim_output_dir
from capaug.augment.model_io import file_hash
from capaug.augment.split import SPLIT_FILE

from .data import MANIFEST

FORMAT = "capaug-model-cache/1"
FOLDER = "downstream-models"  # RUN/downstream-models: beside RUN/downstream, which each run replaces whole
# which models run and how they are reported; `features` counts for the synthetic-features arm only (model_key)
NOT_OUTCOME = {"seeds", "arms", "tune", "tune_grid", "tune_sets", "tune_seeds", "bootstrap", "cache_mb", "features"}
LIBRARIES = ("torch", "timm", "albumentations")  # their versions decide the numbers too


@dataclass
class Entry:
    """One model's outcome: its record, and when it was tested its test metrics and per-test-image hits."""

    record: dict
    metrics: Optional[dict] = None
    correct: Optional[np.ndarray] = None

    @property
    def tested(self) -> bool:
        return self.correct is not None


def run_context(run_dir: Path, cfg: DownstreamConfig, experiment, groups: list[str]) -> dict:
    """What every model of a run depends on: settings, weights file, split, test groups, input size, budget,
    device, precision, library versions and this cache's format."""
    return {
        "format": FORMAT,
        "settings": cfg.model_dump(exclude=NOT_OUTCOME),
        "weights": file_hash(cfg.weights, 64) if cfg.weights and Path(cfg.weights).is_file() else None,
        "split": file_hash(run_dir / SPLIT_FILE, 64),
        "groups": list(groups),  # the Many/Medium/Few recalls of the test metrics
        "input": [experiment.image_size, experiment.channels, list(experiment.real_size)],
        "budget": [experiment.budget, experiment.steps_per_epoch],
        "device": experiment.accelerator.device.type,
        "mixed_precision": str(experiment.accelerator.mixed_precision),
        "libraries": {name: version(name) for name in LIBRARIES},
    }


def model_key(context: dict, arm, experiment, seed: int) -> str:
    """sha256 of the run's context, the arm (spec, resolved settings, the synthetic set's manifest and the items
    it trains on after any filter; the generator's settings for synthetic-features) and the seed."""
    synthetic = arm.synthetic
    content = {
        "context": context,
        "spec": arm.spec.name,
        "arm": arm.describe(experiment),
        "synthetic": None if synthetic is None else {"manifest": file_hash(synthetic.folder / MANIFEST, 64),
                                                     "items": synthetic.items},
        "features": experiment.cfg.features.model_dump() if arm.spec.features else None,
        "seed": seed,
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


class ModelCache:
    """The folder of entries (a marked output, never inside the `data` it was made from); `reuse=False`
    (`--no-cache`) finds nothing but still stores."""

    def __init__(self, folder: Path, data: Optional[str] = None, reuse: bool = True):
        self.folder = claim_output_dir(folder, "downstream (model cache)", inputs=[data], resume=True)
        self.reuse = reuse

    def load(self, key: str, test_size: int) -> Optional[Entry]:
        """The entry of `key`, or None: absent, not reused, or unreadable (then a warning; it is recomputed)."""
        path = self.folder / f"{key}.npz"
        if not self.reuse or not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                content = json.loads(data["entry"].item())
                correct = data["correct"] if "correct" in data.files else None
            if content["format"] != FORMAT or content["key"] != key:
                raise ValueError("not an entry of this key")
            if correct is not None and (correct.dtype != bool or correct.shape != (test_size,)):
                raise ValueError(f"its test hits have shape {correct.shape}, not ({test_size},)")
            entry = Entry(dict(content["record"]), content["metrics"], correct)
            if (entry.metrics is None) == entry.tested:
                raise ValueError("its test metrics and test hits disagree")
            return entry
        except Exception as e:  # any damage (truncated zip, bad zlib data, foreign file): recompute, never crash
            warnings.warn(f"ignoring the unreadable model cache entry {path} ({type(e).__name__}: {e}); "
                          "training that model again", stacklevel=2)
            return None

    def store(self, key: str, entry: Entry) -> None:
        content = {"format": FORMAT, "key": key, "record": entry.record, "metrics": entry.metrics}
        arrays = {"entry": np.asarray(json.dumps(content))}
        if entry.tested:
            arrays["correct"] = np.asarray(entry.correct, dtype=bool)
        with atomic_path(self.folder / f"{key}.npz", suffix=".npz") as tmp:
            np.savez(tmp, **arrays)
