"""Target policies -> per-class plan counts."""

import json

import pytest

from capaug.augment.errors import CapaugError
from capaug.augment.targets import plan_targets

CLASSES = ["common", "medium", "rare"]
REAL = [100, 30, 5]


def generated(policy):
    return [p.generate for p in plan_targets(CLASSES, REAL, policy)]


def test_balanced_fills_up_to_the_largest_class():
    plan = plan_targets(CLASSES, REAL, "balanced")
    assert [p.target for p in plan] == [100, 100, 100]
    assert [p.generate for p in plan] == [0, 70, 95]
    assert plan[2].to_dict() == {"name": "rare", "label": 2, "real": 5, "target": 100, "generate": 95}


def test_balanced_n_never_removes_real_images():
    assert generated("balanced:50") == [0, 20, 45]
    assert [p.target for p in plan_targets(CLASSES, REAL, "balanced:50")] == [100, 50, 50]


def test_ratio_raises_classes_to_max_over_r():
    assert generated("ratio:4") == [0, 0, 20]
    assert generated("ratio:3") == [0, 4, 29]  # ceil(100 / 3) = 34
    assert generated("ratio:1") == generated("balanced")


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_file_mapping(tmp_path, suffix):
    path = tmp_path / f"targets{suffix}"
    path.write_text(json.dumps({"rare": 40, "medium": 10}))  # JSON is valid YAML too
    assert generated(str(path)) == [0, 0, 35]


@pytest.mark.parametrize(
    "policy, message",
    [("balanced:x", "not a whole number"), ("balanced:0", "at least 1"), ("ratio:0.5", "at least 1"),
     ("square", "unknown target"), ("missing.yaml", "does not exist"), ("ratio:nan", "finite number of at least 1"),
     ("ratio:inf", "finite number of at least 1"), ("ratio:-3", "at least 1"), ("ratio:abc", "not a number"),
     ("ratio:", "not a number")],
)
def test_bad_policies_are_one_line_errors(policy, message):
    with pytest.raises(CapaugError, match=message):
        plan_targets(CLASSES, REAL, policy)


def test_bad_files(tmp_path):
    unknown = tmp_path / "u.yaml"
    unknown.write_text("ghost: 3\n")
    with pytest.raises(CapaugError, match="unknown classes: ghost"):
        plan_targets(CLASSES, REAL, str(unknown))
    negative = tmp_path / "n.json"
    negative.write_text('{"rare": -1}')
    with pytest.raises(CapaugError, match="whole number"):
        plan_targets(CLASSES, REAL, str(negative))
    listed = tmp_path / "l.yaml"
    listed.write_text("- 1\n- 2\n")
    with pytest.raises(CapaugError, match="must map"):
        plan_targets(CLASSES, REAL, str(listed))
