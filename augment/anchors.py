"""Real-anchored synthesis: the training image each synthetic image starts from (`SynthesisConfig.source`).

`minority` starts an image of class c from one of c's own training images, `majority` from one of the training
images of every class with strictly more of them than c (never c itself), denoised with c's label. The source is
a pure function of (split, class, the image's seed), so resumed, sharded and repeated runs pick the same one.
"""

from __future__ import annotations

import hashlib

from .errors import CapaugError

SOURCES = ("noise", "minority", "majority")


def pick(seed: int, n: int) -> int:
    """A uniform index in [0, n) from an image's seed (a hash: independent of the seed's use by torch)."""
    digest = hashlib.sha256(f"{seed}/source".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") % n


class Anchors:
    """The source pools of a split: label -> training keys in split order."""

    def __init__(self, split, source: str):
        if source not in SOURCES[1:]:
            raise ValueError(f"source {source!r} starts from no real image")
        counts = split.counts()
        self.source, self.classes, self.counts = source, split.classes, counts
        self.pools = {
            label: [key for key, y in split.train if (y == label if source == "minority" else counts[y] > counts[label])]
            for label in range(len(split.classes))
        }

    def check(self, labels: list[int]) -> None:
        """Refuse classes to generate that have no image to start from."""
        for label in labels:
            if self.pools[label]:
                continue
            name, n = self.classes[label], self.counts[label]
            if self.source == "minority":
                raise CapaugError(f"class '{name}' has no training images to start from; use --source noise or majority")
            raise CapaugError(f"class '{name}' ({n} training images) has no larger class to start from; "
                              "use --source noise or minority")

    def key(self, label: int, seed: int) -> str:
        """The training image that the image of class `label` with seed `seed` starts from."""
        pool = self.pools[label]
        return pool[pick(seed, len(pool))]
