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
from .stats import t_interval

LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc.", "macro_f1": "macro-F1",
          "macro_auroc": "macro AUROC", "recall_many": "Many recall", "recall_medium": "Medium recall",
          "recall_few": "Few recall"}
PER_SEED_EXTRA = ("optimizer_steps", "best_step", "best_epoch", "val_balanced_accuracy", "seconds")
GRID_CLASSES, GRID_IMAGES = 12, 6
FILES = {"intervals": "balanced_accuracy.png", "recall": "recall_by_arm.png", "confusion": "confusion.png", "histogram": "class_histogram.png",
         "grid": "real_vs_synthetic.png"}


def write_outputs(out_dir: Path, result: dict, split, real_reader, synthetic: dict) -> None:
    """All downstream outputs; `synthetic` maps set name -> (SyntheticSet, reader) for the histogram and grid."""
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / "metrics.json", result)
        write_text(tmp / "per_seed.csv", per_seed_csv(result))
        save_figure(tmp / FILES["intervals"], interval_figure(result))
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


def _interval(values) -> str:
    return "n/a" if not values else f"[{values[0]:+.3f}, {values[1]:+.3f}]"


def report_markdown(result: dict, has_grid: bool) -> str:
    s, arms, budget = result["settings"], result["arms"], result["settings"]["budget"]
    lines = [
        "# Downstream evaluation", "",
        f"**Verdict:** {result['verdict']['text']}", "",
        f"Model `{s['model']}` ({'timm pretrained' if s['pretrained'] else s['weights'] or 'from scratch'}), "
        f"{s['image_size']} px, {s['channels']} channel(s), seeds 0..{s['seeds'] - 1}, {s['device']} "
        f"({s['mixed_precision']}). Every model trains {budget['optimizer_steps']} optimizer steps at batch size "
        f"{budget['batch_size']} ({budget['epochs']} epochs of the real training split), is scored on val every "
        f"{budget['eval_every']} steps, keeps its best val balanced accuracy, and reads the real test split "
        f"({sum(result['counts']['test'])} images) once. Synthetic images: {s['synthetic_resize']} "
        f"({s['real_size'][0]}x{s['real_size'][1]}). Values: mean ± std over seeds.", "",
        f"![balanced accuracy by arm]({FILES['intervals']})", "",
        "| arm | setting | train images | steps | " + " | ".join(LABELS[m] for m in SCALARS) + " |",
        "|---|---|---:|---:|" + "---:|" * len(SCALARS),
    ]
    for name, arm in arms.items():
        lines.append(f"| {name} | `{arm['spec']}` | {arm['train_images']} | {arm['optimizer_steps']} | "
                     + " | ".join(plus_minus(arm["summary"][m]) for m in SCALARS) + " |")
    missing = result["missing_classes"]
    if missing["note"]:
        lines += ["", f"Missing classes (test: {', '.join(missing['test']) or 'none'}; val: "
                      f"{', '.join(missing['val']) or 'none'}): {missing['note']}."]
    for key, title in (("vs_real", "real"), ("vs_best_classic", f"the best classic arm ({result['best_classic']}, "
                                                                "by mean test balanced accuracy)")):
        rows = [(n, a[key]) for n, a in arms.items() if a[key]]
        if not rows:
            continue
        lines += ["", f"Paired per-seed difference against {title}: mean ± std, 95% t-interval over seeds, "
                      "95% bootstrap over test images (balanced accuracy), seeds ahead / seeds:", "",
                  "| arm | balanced acc. | t-interval | bootstrap | macro-F1 | Few recall | ahead on |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, diff in rows:
            bacc = diff["balanced_accuracy"]
            lines.append(f"| {name} | {plus_minus(bacc, True)} | {_interval(bacc['interval95'])} | "
                         f"{_interval(bacc['bootstrap95'])} | {plus_minus(diff['macro_f1'], True)} | "
                         f"{plus_minus(diff['recall_few'], True)} | {bacc['wins']}/{bacc['n']} |")
    tuning = result["tuning"]
    if tuning:
        lines += tuning_lines(tuning)
    filtered = [(n, a["settings"]["filter"]) for n, a in arms.items() if a["settings"] and a["settings"]["filter"]]
    if filtered:
        lines += ["", "## Filter (reference classifier band, near-copies)", "",
                  "| arm | kept | near copies | below band | above band |", "|---|---:|---:|---:|---:|"]
        for name, f in filtered:
            lines.append(f"| {name} | {sum(f['kept'])} | {sum(f['dropped']['near_copy'])} | "
                         f"{sum(f['dropped']['below_band'])} | {sum(f['dropped']['above_band'])} |")
    sets = result["synthetic_sets"]
    lines += ["", "## Per-class recall", "",
              "| class | group | train | " + "".join(f"+{n} | " for n in sets) + " | ".join(arms) + " |",
              "|---|---|---:|" + "---:|" * (len(sets) + len(arms))]
    for k, name in enumerate(result["classes"]):
        synth = "".join(f"{sets[n]['counts'][k]} | " for n in sets)
        recalls = " | ".join(_recall(a["summary"]["per_class_recall"]["mean"][k]) for a in arms.values())
        lines.append(f"| {name} | {result['groups'][k]} | {result['counts']['train'][k]} | {synth}{recalls} |")
    lines += ["", "## Plots", "", f"![per-class recall]({FILES['recall']})", "",
              f"![confusion matrices]({FILES['confusion']})", "", f"![class histogram]({FILES['histogram']})"]
    if has_grid:
        lines += ["", f"![real vs synthetic]({FILES['grid']})"]
    return "\n".join(lines) + "\n"


def tuning_lines(tuning: dict) -> list[str]:
    """The report's tuning section: the choice, the seeds it was scored on, the synthesis settings, the grid."""
    seeds = tuning["tune_seeds"]
    lines = ["", "## Tuning (val split only)", "",
             f"Chosen: `{tuning['chosen']}` ({tuning['selector']}). The grid was scored on {seeds} of "
             f"{tuning['seeds']} seed(s); the chosen setting then trained every seed, and only its models read "
             "the test split (as the arm `tuned`)."]
    if tuning["sets"]:
        lines += ["", "Synthesis settings, each a set made from the run's model: "
                  + ", ".join(f"`{s['name']}` ({s['folder']})" for s in tuning["sets"]) + "."]
        fidelity = {s["name"]: s.get("label_fidelity") or {} for s in tuning["sets"]}
        classes = list(dict.fromkeys(c for rates in fidelity.values() for c in rates))
        if classes:
            lines += ["", "Label fidelity: share of each set's images the reference classifier assigns to the "
                      "class they were made for.", "",
                      "| set | " + " | ".join(classes) + " |", "|---|" + "---:|" * len(classes)]
            lines += [f"| `{name}` | " + " | ".join(f"{rates[c]:.2f}" if c in rates else "" for c in classes) + " |"
                      for name, rates in fidelity.items()]
    lines += ["", "| setting | val balanced acc. | chosen |", "|---|---:|:-:|"]
    for row in tuning["grid"]:
        lines.append(f"| `{row['spec']}` | {plus_minus(row['val_balanced_accuracy'])} | "
                     f"{'✓' if row['chosen'] else ''} |")
    return lines


def _recall(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def interval_figure(result: dict) -> Figure:
    """Left: test balanced accuracy per arm (mean, 95% t-interval over seeds, seeds as dots). Right: the paired
    difference against the best classic arm with its t-interval (bar) and test-image bootstrap (thin)."""
    arms = result["arms"]
    names = list(arms)
    fig = Figure(figsize=(max(7, 1.1 * len(names) * 2), 3.8))
    left, right = fig.subplots(1, 2)
    per_seed = {n: [r["balanced_accuracy"] for r in result["runs"] if r["arm"] == n] for n in names}
    for i, name in enumerate(names):
        values = per_seed[name]
        mean = float(np.mean(values))
        interval = t_interval(values)
        if interval:
            left.errorbar(i, mean, yerr=[[mean - interval[0]], [interval[1] - mean]], fmt="o", capsize=4, color="C0")
        else:
            left.plot(i, mean, "o", color="C0")
        left.plot([i] * len(values), values, ".", color="0.6", zorder=0)
    left.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
    left.set_ylabel("test balanced accuracy")
    left.set_title("by arm: mean, 95% t-interval, seeds", fontsize=9)
    rows = [(n, arms[n]["vs_best_classic"]["balanced_accuracy"]) for n in names if arms[n]["vs_best_classic"]]
    for i, (name, diff) in enumerate(rows):
        if diff["interval95"]:
            low, high = diff["interval95"]
            right.errorbar(i, diff["mean"], yerr=[[diff["mean"] - low], [high - diff["mean"]]], fmt="o", capsize=4,
                           color="C1")
        else:
            right.plot(i, diff["mean"], "o", color="C1")
        if diff["bootstrap95"]:
            right.plot([i + 0.15] * 2, diff["bootstrap95"], color="C2", lw=1)
    right.axhline(0, color="0.3", lw=0.8)
    right.set_xticks(range(len(rows)), [n for n, _ in rows], rotation=30, ha="right", fontsize=7)
    right.set_title(f"paired difference vs {result['best_classic']} (t: orange, bootstrap: green)", fontsize=9)
    fig.tight_layout()
    return fig


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
        recall = arm["summary"]["per_class_recall"]  # None (missing class) -> nan: no bar
        ax.bar(x + (i - (len(arms) - 1) / 2) * width, np.asarray(recall["mean"], dtype=float)[order], width,
               yerr=np.asarray(recall["std"], dtype=float)[order], label=name, capsize=2)
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
