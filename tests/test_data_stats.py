"""Class statistics: imbalance ratio, shares, and Many/Medium/Few by thresholds or by terciles."""

from capaug.augment.stats import class_stats


def test_thresholds_when_every_group_is_populated():
    stats = class_stats(["a", "b", "c", "d"], [150, 101, 100, 19])
    assert stats.grouping == "thresholds"
    assert stats.groups == ["many", "many", "medium", "few"]
    assert stats.imbalance_ratio == 150 / 19
    assert abs(sum(stats.shares) - 1) < 1e-12 and stats.shares[0] == 150 / 370
    assert stats.group_members() == {"many": ["a", "b"], "medium": ["c"], "few": ["d"]}


def test_configurable_thresholds():
    stats = class_stats(["a", "b", "c"], [60, 30, 5], many_threshold=50, few_threshold=10)
    assert stats.grouping == "thresholds" and stats.groups == ["many", "medium", "few"]


def test_terciles_when_a_group_would_be_empty():
    # RetinaMNIST's training counts: no class below 20, so thresholds would leave Few empty.
    stats = class_stats(["0", "1", "2", "3", "4"], [486, 128, 206, 194, 66])
    assert stats.grouping == "terciles"
    assert stats.group_members() == {"many": ["0", "2"], "medium": ["3"], "few": ["1", "4"]}
    assert round(stats.imbalance_ratio, 2) == 7.36


def test_two_classes_are_many_and_few():
    assert class_stats(["x", "y"], [5, 50]).groups == ["few", "many"]
