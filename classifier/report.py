"""`RUN/downstream/`: metrics.json, per_seed.csv, report.md and the PNG plots, written as one atomic folder.

The folder is replaced as a whole, so a report never mixes the numbers of two runs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from capaug.augment.io import atomic_dir, save_figure, write_json, write_text

from .metrics import SCALARS

LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1",
          "macro_auroc": "macro AUROC", "recall_many": "Many recall", "recall_medium": "Medium recall",
          "recall_few": "Few recall"}
PER_SEED_EXTRA = ("best_epoch", "val_balanced_accuracy", "seconds")
GRID_CLASSES, GRID_IMAGES = 12, 6
FILES = {"recall": "recall_by_arm.png", "confusion": "confusion.png", "histogram": "class_histogram.png",
         "grid": "real_vs_synthetic.png"}


def write_outputs(out_dir: Path, result: dict, split, real_reader, synthetic: dict) -> None:
    """All downstream outputs; `synthetic` maps set name -> (SyntheticSet, reader) for the histogram and grid."""
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", result)
        write_text(tmp / "per_seed.csv", per_seed_csv(result))
        save_figure(tmp / FILES["recall"], recall_figure(result))
        save_figure(tmp / FILES["confusion"], confusion_figure(result))
        save_figure(tmp / FILES["histogram"], histogram_figure(result))
        if synthetic:
            save_figure(tmp / FILES["grid"], grid_figure(result, split, real_reader, synthetic))
        write_text(tmp / "report.md", report_markdown(result, has_grid=bool(synthetic)))


def per_seed_csv(result: dict) -> str:
    """One row per trained model: arm, seed, the scalars, selection info, and recall per class."""
    classes = result["classes"]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["arm", "seed", *SCALARS, *PER_SEED_EXTRA, *(f"recall[{c}]" for c in classes)])
    for run in result["runs"]:
        writer.writerow([run["arm"], run["seed"], *(_cell(run[m]) for m in SCALARS),
                         *(_cell(run[k]) for k in PER_SEED_EXTRA), *(_cell(r) for r in run["per_class_recall"])])
    return buffer.getvalue()


def _cell(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def plus_minus(stats: dict, signed: bool = False, compact: bool = False) -> str:
    """`mean ± std` of a `metrics.spread` dict, three decimals."""
    if stats is None or stats["mean"] is None:
        return "n/a"
    sep = "±" if compact else " ± "
    return f"{stats['mean']:{'+' if signed else ''}.3f}{sep}{stats['std']:.3f}"


def report_markdown(result: dict, has_grid: bool) -> str:
    s, arms = result["settings"], result["arms"]
    lines = [
        "# Downstream evaluation", "",
        f"**Verdict:** {result['verdict']['text']}", "",
        f"Model `{s['model']}` ({'timm pretrained' if s['pretrained'] else s['weights'] or 'from scratch'}), "
        f"{s['image_size']} px, {s['channels']} channel(s), {s['epochs']} epochs, seeds 0..{s['seeds'] - 1}, "
        f"{s['device']} ({s['mixed_precision']}). Each model is selected on val balanced accuracy and reads the "
        f"real test split ({sum(result['counts']['test'])} images) once. Values: mean ± std over seeds.", "",
        "| arm | train images | " + " | ".join(LABELS[m] for m in SCALARS) + " |",
        "|---|---:|" + "---:|" * len(SCALARS),
    ]
    for name, arm in arms.items():
        lines.append(f"| {name} | {arm['train_images']} | "
                     + " | ".join(plus_minus(arm["summary"][m]) for m in SCALARS) + " |")
    for key, title in (("vs_real", "real"), ("vs_best_classic", f"the best classic arm ({result['best_classic']})")):
        rows = [(n, a[key]) for n, a in arms.items() if a[key]]
        if not rows:
            continue
        lines += ["", f"Per-seed difference against {title} (mean ± std; seeds ahead / seeds):", "",
                  "| arm | balanced acc. | macro-F1 | Few recall | ahead on |", "|---|---:|---:|---:|---:|"]
        for name, diff in rows:
            bacc = diff["balanced_accuracy"]
            lines.append(f"| {name} | {plus_minus(bacc, True)} | {plus_minus(diff['macro_f1'], True)} | "
                         f"{plus_minus(diff['recall_few'], True)} | {bacc['wins']}/{bacc['n']} |")
    sets = result["synthetic_sets"]
    lines += ["", "## Per-class recall", "",
              "| class | group | train | " + "".join(f"+{n} | " for n in sets) + " | ".join(arms) + " |",
              "|---|---|---:|" + "---:|" * (len(sets) + len(arms))]
    for k, name in enumerate(result["classes"]):
        synth = "".join(f"{sets[n]['counts'][k]} | " for n in sets)
        recalls = " | ".join(f"{a['summary']['per_class_recall']['mean'][k]:.3f}" for a in arms.values())
        lines.append(f"| {name} | {result['groups'][k]} | {result['counts']['train'][k]} | {synth}{recalls} |")
    lines += ["", "## Plots", "", f"![per-class recall]({FILES['recall']})", "",
              f"![confusion matrices]({FILES['confusion']})", "", f"![class histogram]({FILES['histogram']})"]
    if has_grid:
        lines += ["", f"![real vs synthetic]({FILES['grid']})"]
    return "\n".join(lines) + "\n"


def recall_figure(result: dict) -> Figure:
    """Grouped bars: mean per-class recall of each arm with its seed std, classes by training count."""
    counts = result["counts"]["train"]
    order = np.argsort(counts, kind="stable")[::-1]
    arms = result["arms"]
    width = 0.8 / len(arms)
    fig = Figure(figsize=(min(30, max(6, 0.6 * len(order) * max(1, len(arms) / 2))), 3.8))
    ax = fig.subplots()
    x = np.arange(len(order))
    for i, (name, arm) in enumerate(arms.items()):
        recall = arm["summary"]["per_class_recall"]
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, np.asarray(recall["mean"])[order], width,
               yerr=np.asarray(recall["std"])[order], label=name, capsize=2)
    ax.set_xticks(x, [f"{result['classes'][k]}\n({counts[k]})" for k in order], fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("test recall")
    ax.set_xlabel("class (training images)")
    ax.legend(fontsize=7, ncols=len(arms))
    return fig


def confusion_figure(result: dict) -> Figure:
    """Row-normalised mean confusion matrix of each arm (rows: true class)."""
    arms = result["arms"]
    classes = result["classes"]
    fig = Figure(figsize=(3.4 * len(arms), 3.4))
    axes = np.atleast_1d(fig.subplots(1, len(arms)))
    for ax, (name, arm) in zip(axes, arms.items()):
        matrix = np.asarray(arm["summary"]["confusion_mean"], dtype=float)
        matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1e-12)
        ax.imshow(matrix, vmin=0, vmax=1, cmap="Blues")
        if len(classes) <= 12:
            for (i, j), v in np.ndenumerate(matrix):
                ax.text(j, i, f"{v:.2f}"[1:] if v < 1 else "1", ha="center", va="center", fontsize=5,
                        color="white" if v > 0.5 else "black")
            ax.set_xticks(range(len(classes)), classes, fontsize=6)
            ax.set_yticks(range(len(classes)), classes, fontsize=6)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("predicted", fontsize=7)
    axes[0].set_ylabel("true", fontsize=7)
    return fig


def histogram_figure(result: dict) -> Figure:
    """Training images per class: real only, then real + each synthetic set (before/after synthesis)."""
    real = np.asarray(result["counts"]["train"])
    sets = result["synthetic_sets"]
    width = 0.8 / (1 + len(sets))
    fig = Figure(figsize=(min(30, max(6, 0.5 * len(real) * (1 + len(sets)) / 2)), 3.5))
    ax = fig.subplots()
    x = np.arange(len(real))
    ax.bar(x - (len(sets)) * width / 2, real, width, label="real", color="0.45")
    for i, (name, info) in enumerate(sets.items(), start=1):
        offset = x + (i - len(sets) / 2) * width
        ax.bar(offset, real, width, color="0.75")
        ax.bar(offset, info["counts"], width, bottom=real, label=f"+ {name}")
    ax.set_xticks(x, result["classes"], fontsize=7)
    ax.set_ylabel("training images")
    if real.max() / max(real.min(), 1) > 20:
        ax.set_yscale("log")
    ax.legend(fontsize=7)
    return fig


def grid_figure(result: dict, split, real_reader, synthetic: dict) -> Figure:
    """Rows: the rarest classes (up to 12); columns: real training images, then each synthetic set's."""
    counts = result["counts"]["train"]
    rows = sorted(range(len(counts)), key=lambda k: counts[k])[:GRID_CLASSES]
    columns = [("real", real_reader, split.train)] + [
        (name, reader, synthetic_set.items) for name, (synthetic_set, reader) in synthetic.items()]
    fig = Figure(figsize=(1.2 * GRID_IMAGES * len(columns), 1.1 * len(rows) + 0.4))
    axes = np.atleast_2d(fig.subplots(len(rows), len(columns), squeeze=False))
    for r, k in enumerate(rows):
        for c, (name, reader, items) in enumerate(columns):
            keys = [key for key, label in items if label == k][:GRID_IMAGES]
            ax = axes[r, c]
            ax.imshow(_strip([reader.read(key) for key in keys]), cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{result['classes'][k]} ({counts[k]})", fontsize=8)
    return fig


def _strip(images: list[np.ndarray]) -> np.ndarray:
    """Images side by side at the first image's size (blank when there are none)."""
    from PIL import Image

    if not images:
        return np.full((8, 8 * GRID_IMAGES), 255, np.uint8)
    h, w = images[0].shape[:2]
    tiles = [np.asarray(Image.fromarray(im.squeeze()).resize((w, h))) for im in images]
    tiles += [np.full_like(tiles[0], 255)] * (GRID_IMAGES - len(tiles))
    strip = np.concatenate(tiles, axis=1)
    return strip if strip.ndim == 2 else strip[..., :3]
