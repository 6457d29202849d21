"""The reference classifier: trained on the real training split only, for other stages to lean on.

Synthesis's confidence filter asks it whether a synthetic image looks like its class, and `capaug evaluate`
uses its penultimate features as an in-domain feature space. It is trained with the `reweight` arm's loss
(`cfg.reweight`) so that it does not simply ignore the rare classes those stages care about.
"""

from __future__ import annotations

from pathlib import Path

from capaug.augment.config import DownstreamConfig
from capaug.augment.split import Split

from .checkpoint import ClassifierBundle, load_classifier, save_classifier
from .experiment import Experiment
from .losses import make_loss

REFERENCE = "reference_classifier.safetensors"


def train_reference(split: Split, cfg: DownstreamConfig, out_path: str | Path, seed: int = 0) -> ClassifierBundle:
    """Train on `split.train`, select on val balanced accuracy, save to `out_path`, return it ready for use."""
    experiment = Experiment.prepare(split, cfg)
    train_set = experiment.dataset(split.train, train=True, seed=seed)
    trained = experiment.fit(train_set, make_loss(cfg.reweight, split.counts("train")), seed)
    info = experiment.info(seed=seed, loss=cfg.reweight, best_step=trained.best_step,
                           val_balanced_accuracy=trained.val_balanced_accuracy)
    save_classifier(out_path, trained.model, info)
    return ClassifierBundle(trained.model, info, experiment.accelerator.device)


def cached_reference(run_dir: str | Path, split: Split, device=None) -> ClassifierBundle | None:
    """`RUN/eval/reference_classifier.safetensors` when it was trained on this split, else None."""
    path = Path(run_dir) / "eval" / REFERENCE
    if path.is_file():
        bundle = load_classifier(path, device or "cpu")
        if bundle.info.extra.get("split_hash") == split.hash:
            return bundle
    return None


def reference_for_run(run_dir: str | Path, split: Split, cfg: DownstreamConfig, seed: int = 0, device=None):
    """`cached_reference`, else train and save it."""
    bundle = cached_reference(run_dir, split, device)
    if bundle is None:
        bundle = train_reference(split, cfg, Path(run_dir) / "eval" / REFERENCE, seed=seed)
    return bundle
