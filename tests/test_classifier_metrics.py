"""Downstream metrics against scikit-learn on a fixed confusion matrix, and the seed summaries."""

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, recall_score, roc_auc_score

from capaug.classifier.metrics import paired_differences, spread, summarize_arm, model_metrics

CONFUSION = np.array([[8, 1, 1], [2, 5, 0], [0, 1, 2]])  # rows: true class, columns: predicted
GROUPS = ["many", "medium", "few"]


def fixed_predictions():
    """Labels and probabilities whose argmax reproduces CONFUSION exactly, with ranks that vary for AUROC."""
    rng = np.random.default_rng(0)
    labels, probs = [], []
    for true, row in enumerate(CONFUSION):
        for predicted, n in enumerate(row):
            for _ in range(n):
                p = rng.uniform(0.0, 0.3, size=3)
                p[predicted] = 1.0
                labels.append(true)
                probs.append(p / p.sum())
    return np.array(labels), np.array(probs)


def test_metrics_match_scikit_learn_on_a_fixed_confusion():
    labels, probs = fixed_predictions()
    predicted = probs.argmax(1)
    m = model_metrics(labels, probs, GROUPS)
    assert m["confusion"] == CONFUSION.tolist()
    assert m["accuracy"] == pytest.approx(accuracy_score(labels, predicted)) == pytest.approx(15 / 20)
    recall = np.diag(CONFUSION) / CONFUSION.sum(1)
    assert m["per_class_recall"] == pytest.approx(recall_score(labels, predicted, average=None))
    assert m["per_class_recall"] == pytest.approx(recall)
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, predicted))
    assert m["balanced_accuracy"] == pytest.approx(recall.mean())
    assert m["macro_f1"] == pytest.approx(f1_score(labels, predicted, average="macro"))
    assert m["macro_auroc"] == pytest.approx(roc_auc_score(labels, probs, multi_class="ovr", average="macro"))
    assert (m["recall_many"], m["recall_medium"], m["recall_few"]) == pytest.approx(tuple(recall))


def test_group_recall_is_the_mean_over_the_group_and_none_when_empty():
    labels, probs = fixed_predictions()
    m = model_metrics(labels, probs, ["many", "many", "few"])
    recall = np.diag(CONFUSION) / CONFUSION.sum(1)
    assert m["recall_many"] == pytest.approx(recall[:2].mean())
    assert m["recall_medium"] is None


def test_auroc_is_undefined_when_a_class_has_no_test_image():
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.8, 0.1, 0.1], [0.5, 0.3, 0.2], [0.2, 0.7, 0.1], [0.3, 0.4, 0.3]])
    assert model_metrics(labels, probs, GROUPS)["macro_auroc"] is None


def test_spread_and_paired_differences_over_seeds():
    assert spread([0.5, 0.7, None]) == {"mean": pytest.approx(0.6), "std": pytest.approx(np.std([0.5, 0.7], ddof=1)),
                                        "min": 0.5, "max": 0.7, "n": 2}
    assert spread([0.4])["std"] == 0.0
    labels, probs = fixed_predictions()
    base = model_metrics(labels, probs, GROUPS)
    real = [{**base, "seed": s, "balanced_accuracy": v} for s, v in enumerate([0.50, 0.60, 0.70])]
    arm = [{**base, "seed": s, "balanced_accuracy": v} for s, v in enumerate([0.55, 0.58, 0.80])]
    diff = paired_differences(arm, real)["balanced_accuracy"]
    assert diff["per_seed"] == pytest.approx([0.05, -0.02, 0.10])
    assert (diff["wins"], diff["losses"], diff["n"]) == (2, 1, 3)
    assert diff["mean"] == pytest.approx(np.mean([0.05, -0.02, 0.10]))
    summary = summarize_arm(arm)
    assert summary["balanced_accuracy"]["mean"] == pytest.approx(np.mean([0.55, 0.58, 0.80]))
    assert summary["confusion_mean"] == CONFUSION.tolist()
