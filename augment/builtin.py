"""`builtin:digits-lt`: a long-tailed data set that needs no download, for the quickstart and the tests.

scikit-learn ships its 8x8 handwritten digits (about 180 per class). Balanced test and val images are held out
first (24 and 10 per class), then the rest is made long-tailed with the exponential profile of
`stats.long_tail_counts` at imbalance ratio 20 (140 training images of class 0 down to 7 of class 9). The
result has the MedMNIST npz layout, so `sources` treats it exactly like an npz.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .errors import CapaugError
from .stats import long_tail_counts

DIGITS_LT = "builtin:digits-lt"
TEST_PER_CLASS, VAL_PER_CLASS, RATIO = 24, 10, 20.0


def builtin_arrays(spec: str) -> dict[str, np.ndarray]:
    """The arrays of a builtin data set, by its `builtin:NAME` spec."""
    if spec != DIGITS_LT:
        raise CapaugError(f"unknown builtin data set {spec!r}; the only one is {DIGITS_LT}")
    return _digits_lt()


@lru_cache(maxsize=1)
def _digits_lt() -> dict[str, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)
    rng = np.random.default_rng(0)
    by_class = [rng.permutation(np.flatnonzero(digits.target == k)) for k in range(10)]
    held_out = TEST_PER_CLASS + VAL_PER_CLASS
    train_counts = long_tail_counts(min(len(idx) for idx in by_class) - held_out, RATIO, len(by_class))
    parts = {
        "test": [idx[:TEST_PER_CLASS] for idx in by_class],
        "val": [idx[TEST_PER_CLASS:held_out] for idx in by_class],
        "train": [idx[held_out : held_out + n] for idx, n in zip(by_class, train_counts)],
    }
    arrays = {}
    for part, chosen in parts.items():
        index = np.concatenate(chosen)
        arrays[f"{part}_images"] = images[index]
        arrays[f"{part}_labels"] = digits.target[index].astype(np.int64)[:, None]
    return arrays
