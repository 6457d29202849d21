"""The oversample arm's sampler draws classes equally often; the reweight losses behave as defined."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from capaug.classifier.losses import LogitAdjustedLoss, class_balanced_weights, make_loss
from capaug.classifier.sampling import class_balanced_sampler


def test_class_balanced_sampler_draws_every_class_equally_often():
    labels = [0] * 800 + [1] * 150 + [2] * 40 + [3] * 10
    sampler = class_balanced_sampler(labels, torch.Generator().manual_seed(0))
    draws = np.asarray(labels)[list(sampler)]
    assert len(draws) == len(labels)
    frequencies = np.bincount(draws, minlength=4) / len(draws)
    assert frequencies == pytest.approx([0.25] * 4, abs=0.05)


def test_class_balanced_sampler_is_reproducible_by_seed():
    labels = [0] * 50 + [1] * 5
    first = list(class_balanced_sampler(labels, torch.Generator().manual_seed(3)))
    again = list(class_balanced_sampler(labels, torch.Generator().manual_seed(3)))
    assert first == again


def test_class_balanced_weights_favour_rare_classes_with_mean_one():
    weights = class_balanced_weights([1000, 100, 10])
    assert weights.mean().item() == pytest.approx(1.0)
    assert weights[0] < weights[1] < weights[2]


def test_logit_adjusted_loss_shifts_logits_by_the_log_prior():
    counts = [30, 10]
    logits, target = torch.tensor([[0.2, 0.1], [0.0, 1.0]]), torch.tensor([0, 1])
    expected = F.cross_entropy(logits + torch.log(torch.tensor([0.75, 0.25])), target)
    assert LogitAdjustedLoss(counts)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    balanced = LogitAdjustedLoss([5, 5])(logits, target)
    assert balanced.item() == pytest.approx(F.cross_entropy(logits, target).item(), rel=1e-6)
    with pytest.raises(ValueError):
        make_loss("focal", counts)
