"""Shared fixtures: tiny image folders written into tmp_path, and the shared real data (skipped when absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LONG_TAIL = {"big": 12, "mid": 6, "rare": 4}


def write_images(folder: Path, n: int, mode: str = "RGB", size: int = 16, seed: int = 0) -> list[Path]:
    """`n` random 16x16 PNGs named 000.png, 001.png, ... in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    paths = [folder / f"{i:03d}.png" for i in range(n)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return paths


def write_tree(root: Path, counts: dict[str, int], mode: str = "RGB") -> Path:
    """An ImageFolder `root/<class>/NNN.png` with `counts[class]` images each."""
    for k, (name, n) in enumerate(counts.items()):
        write_images(root / name, n, mode, seed=k)
    return root


@pytest.fixture
def lt_folder(tmp_path) -> Path:
    """A tiny long-tailed ImageFolder of 16x16 RGB PNGs: big 12, mid 6, rare 4."""
    return write_tree(tmp_path / "data", LONG_TAIL)


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread per test: the suite shares two cores with other work, where more threads only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_bench_script(name: str):
    """Import `bench/<name>.py` as a module (bench/ is not a package; its scripts import their neighbours)."""
    import importlib.util
    import sys

    bench = Path(__file__).resolve().parents[1] / "bench"
    spec = importlib.util.spec_from_file_location(name, bench / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(bench))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(bench))
    return module


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture
def make_tree():
    """`make_tree(root, {"class": n, ...}, mode="RGB")` writes an ImageFolder and returns root."""
    return write_tree


@pytest.fixture
def make_images():
    """`make_images(folder, n, mode="RGB")` writes n random PNGs and returns their paths."""
    return write_images


@pytest.fixture
def make_npz(tmp_path):
    """`make_npz(counts_per_split, grey=False, drop=())` writes a tiny MedMNIST-layout npz and returns its path."""

    def make(counts: dict[str, list[int]], grey: bool = False, drop: tuple[str, ...] = ()) -> Path:
        rng = np.random.default_rng(0)
        arrays = {}
        for part, per_class in counts.items():
            labels = np.repeat(np.arange(len(per_class)), per_class).astype(np.uint8)[:, None]
            shape = (len(labels), 8, 8) if grey else (len(labels), 8, 8, 3)
            arrays[f"{part}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
            arrays[f"{part}_labels"] = labels
        path = tmp_path / "tiny.npz"
        np.savez(path, **{k: v for k, v in arrays.items() if k not in drop})
        return path

    return make
