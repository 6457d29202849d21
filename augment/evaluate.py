"""`capaug evaluate`: how good are the synthetic images of a run, per class, per Many/Medium/Few group, overall?

- FID, KID, precision/recall (k = 5): each class's synthetic images (`RUN/synthetic`) against that class's real
  TRAINING images, both seen at the diffusion model's resolution and channels, in one feature space
  (`augment/features.py`). Small classes give noisy, upward-biased FID, so every row carries n_real and n_fake.
- memorization rate: share of synthetic images closer than `audit_threshold` (RMS pixel distance, `audit.py`)
  to a real training image of their class.
- classification accuracy score (CAS): a classifier trained on the synthetic images only (selected on the
  real val split, like every capaug classifier), tested on the real TEST images of the classes it saw.
Writes `RUN/eval/metrics.json` and `RUN/eval/fid_by_class.png` (FID of each class against its count).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .config import DataConfig, DownstreamConfig, SynthesisConfig
from .errors import CapaugError
from .genmetrics import grouped_rates, grouped_set_metrics
from .io import save_figure, write_json
from .runlock import locks_run

FORMAT = "capaug-eval/1"
NOTES = [
    "fid, kid and precision/recall compare each class's synthetic images with its real training images; "
    "with few images per class these are noisy and FID is biased upward: read them with n_real and n_fake",
    "groups and overall pool the classes that have synthetic images; pooled real and synthetic sets mix their "
    "classes in different proportions, class_mean (the mean over those classes) does not",
    "rates (memorization, cas) give the pooled rate and mean_class_rate, the mean of the class rates",
    "cas: classifier trained on synthetic images only, selected on real val, tested on the real test images "
    "of the classes that have synthetic images",
]


class ModelView:
    """uint8 images as the diffusion model sees them: its resolution and channels (`DiffusionTransform`)."""

    def __init__(self, image_size: int, channels: int):
        from .datasets import diffusion_transform

        self.transform = diffusion_transform(image_size, channels)
        self.shape = (0, image_size, image_size, channels)

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        views = [((self.transform(im) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy() for im in images]
        return np.stack(views) if views else np.zeros(self.shape, np.uint8)


def classification_accuracy_score(split, synthetic, cfg: DownstreamConfig, groups: dict[str, str], seed: int = 0) -> dict:
    """Train on the synthetic set alone, test on the real test images of the classes it covers."""
    from capaug.classifier.data import FolderReader, cached, leakage_guard
    from capaug.classifier.engine import predict
    from capaug.classifier.experiment import Experiment
    from capaug.classifier.losses import make_loss

    num_classes = len(split.classes)
    counts = synthetic.counts(num_classes)
    test = [(key, y) for key, y in split.test if counts[y]]
    experiment = Experiment.prepare(split, cfg)
    reader = cached(FolderReader(synthetic.folder, split.mode), [key for key, _ in synthetic.items], cfg.cache_mb)
    leakage_guard(experiment.reader, [key for key, _ in split.train], [key for key, _ in test], [(synthetic, reader)])
    train_set = experiment.dataset(synthetic.items, train=True, seed=seed, reader=reader)
    trained = experiment.fit(train_set, make_loss("cross-entropy", counts), seed)
    probs, labels = predict(trained.model, experiment.dataset(test, train=False), cfg, experiment.accelerator)
    correct = np.bincount(labels[probs.argmax(axis=1) == labels], minlength=num_classes)
    totals = np.bincount(labels, minlength=num_classes)
    names = split.classes
    rates = grouped_rates({c: int(correct[i]) for i, c in enumerate(names)},
                          {c: int(totals[i]) for i, c in enumerate(names)}, groups)
    return rates | {"classes_without_synthetic_images": [c for c, n in zip(names, counts) if not n],
                    "classifier": cfg.model, "best_epoch": trained.best_epoch,
                    "val_balanced_accuracy": trained.val_balanced_accuracy}


@locks_run("evaluate")
def evaluate_run(
    run_dir: str | Path,
    *,
    synthetic_dir: Optional[str | Path] = None,
    features: str = "classifier",
    downstream: DownstreamConfig = DownstreamConfig(),
    data_cfg: Optional[DataConfig] = None,
    audit_threshold: float = SynthesisConfig().audit_threshold,
    k: int = 5,
    kid_subsets: int = 100,
    cas: bool = True,
    seed: int = 0,
    device=None,
    on_stage: Optional[Callable[[str], None]] = None,
) -> dict:
    """All generative metrics of `RUN/synthetic` (or `synthetic_dir`, e.g. a fixed number of samples per class
    made with a target file) against the run's split; writes and returns `RUN/eval/metrics.json`.

    `features`: classifier | inception | a file (see `augment/features.py`). `data_cfg` sets the groups
    (default: the thresholds the run was trained with). `on_stage(message)` reports progress.
    """
    import torch
    import yaml
    from capaug.classifier.data import FolderReader, load_synthetic_set
    from capaug.classifier.reference import reference_for_run

    from .audit import pixel_distances
    from .features import load_features
    from .model_io import read_model_info
    from .split import load_split

    report = on_stage or (lambda message: None)
    run_dir = Path(run_dir)
    split = load_split(run_dir)
    info = read_model_info(run_dir / "diffusion" / "model")
    if info.split_hash != split.hash:
        raise CapaugError(f"the model of {run_dir} was trained on split {info.split_hash[:12]}, "
                          f"not the run's split {split.hash[:12]} (mismatched split)")
    if data_cfg is None:
        config = run_dir / "diffusion" / "config.yaml"
        data_cfg = DataConfig.model_validate(yaml.safe_load(config.read_text()).get("data", {})) if config.is_file() else DataConfig()
    stats = split.stats(data_cfg)
    groups = dict(zip(split.classes, stats.groups))
    synthetic = load_synthetic_set("synthetic", Path(synthetic_dir or run_dir / "synthetic"), split.classes, split.hash)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")

    report(f"features: {features}")
    extract = load_features(features, device=device,
                            reference=lambda: reference_for_run(run_dir, split, downstream, seed, device))
    view, real_reader, fake_reader = ModelView(info.image_size, info.channels), split.reader(), FolderReader(synthetic.folder, split.mode)
    real, fake, near_copies, made = {}, {}, {}, {}
    for label, name in enumerate(split.classes):
        report(f"features and memorization: {name}")
        real_images = view([real_reader.read(key) for key, y in split.train if y == label])
        fake_images = view([fake_reader.read(key) for key, y in synthetic.items if y == label])
        real[name] = extract(real_images)
        fake[name] = extract(fake_images) if len(fake_images) else np.zeros((0, real[name].shape[1]))
        made[name] = len(fake_images)
        near_copies[name] = int((pixel_distances(fake_images, real_images)[0] < audit_threshold).sum()) if made[name] else 0

    report("fid, kid, precision/recall")
    result = {
        "format": FORMAT,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run": str(run_dir),
        "split_hash": split.hash,
        "model_hash": info.model_hash,
        "features": extract.description,
        "image_view": {"image_size": info.image_size, "channels": info.channels},
        "classes": split.classes,
        "train_counts": stats.counts,
        "groups": stats.groups,
        "notes": NOTES,
        "generative": grouped_set_metrics(real, fake, groups, k=k, kid_subsets=kid_subsets, seed=seed),
        "memorization": grouped_rates(near_copies, made, groups) | {"threshold": audit_threshold},
        "cas": None,
    }
    if cas:
        report("classification accuracy score: training on synthetic images only")
        result["cas"] = classification_accuracy_score(split, synthetic, downstream, groups, seed)
    out = run_dir / "eval"
    write_json(out / "metrics.json", result)
    save_figure(out / "fid_by_class.png", fid_figure(result))
    return result


def fid_figure(result: dict):
    """FID of each class against its training count (log scale), coloured by group, labelled with n_fake."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5), layout="tight")
    ax = fig.subplots()
    rows = result["generative"]["per_class"]
    for group in ("many", "medium", "few"):
        shown = [(n, rows[c]) for c, n, g in zip(result["classes"], result["train_counts"], result["groups"])
                 if g == group and rows[c]["fid"] is not None]
        if shown:
            ax.plot([n for n, _ in shown], [row["fid"] for _, row in shown], "o", label=group)
            for n, row in shown:
                ax.annotate(f"{row['n_fake']}", (n, row["fid"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xscale="log", xlabel="real training images of the class", ylabel="FID (synthetic vs real training)",
           title=f"FID by class ({result['features']['kind']} features; labels: synthetic images)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return fig
