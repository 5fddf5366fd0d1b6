"""The position rule as a table, prompt parsing, and the reward on known boxes."""

from __future__ import annotations

import numpy as np
import pytest

from reward_server.config import RewardSpec
from reward_server.rewards.position import PositionReward, Relation, iou, parse_relation, relation_score
from shared.protocol import Sample, Subject

A = (0.0, 100.0, 100.0, 200.0)  # centre (50, 150)
RIGHT = (300.0, 100.0, 400.0, 200.0)  # centre (350, 150): dx = 300
BELOW = (0.0, 400.0, 100.0, 500.0)  # dy = 300
OVERLAP_RIGHT = (50.0, 100.0, 150.0, 200.0)  # dx = 50, IoU = 50*100 / 15000 = 1/3
FAR_DIAGONAL = (400.0, 500.0, 500.0, 600.0)  # dx = dy = 400 -> neither axis dominates
NEAR = (120.0, 100.0, 220.0, 200.0)  # dx = 120 < 150
FAR = (450.0, 550.0, 550.0, 650.0)  # dx = dy = 450

CASES = [
    # relation, box A, box B, expected score
    ("left", A, RIGHT, 1.0),
    ("left", RIGHT, A, 0.0),
    ("right", RIGHT, A, 1.0),
    ("right", A, RIGHT, 0.0),
    ("above", A, BELOW, 1.0),
    ("above", BELOW, A, 0.0),
    ("below", BELOW, A, 1.0),
    ("below", A, BELOW, 0.0),
    ("left", A, BELOW, 0.0),  # B is below, not to the right: vertical offset dominates
    ("above", A, RIGHT, 0.0),
    ("left", A, OVERLAP_RIGHT, 0.1 / (1 / 3)),  # right direction but overlapping: 0.1 / IoU
    ("right", OVERLAP_RIGHT, A, 0.1 / (1 / 3)),
    ("left", A, FAR_DIAGONAL, 0.0),  # |dx| == |dy|: no dominant axis
    ("next_to", A, NEAR, 1.0),
    ("next_to", A, FAR, 150.0 / (450.0 * 2**0.5)),  # centre distance 636 px
    ("next_to", A, A, 1.0),
]


@pytest.mark.parametrize(("relation", "a", "b", "expected"), CASES)
def test_rule_table(relation, a, b, expected):
    assert relation_score(relation, a, b) == pytest.approx(expected)


def test_iou_and_thresholds():
    assert iou(A, OVERLAP_RIGHT) == pytest.approx(1 / 3)
    assert iou(A, RIGHT) == 0.0
    slight = (95.0, 100.0, 195.0, 200.0)  # IoU = 500 / 19500 < 0.1 -> still 1
    assert relation_score("left", A, slight) == 1.0
    assert relation_score("next_to", A, FAR, distance_px=700) == 1.0
    with pytest.raises(ValueError, match="unknown relation"):
        relation_score("inside", A, RIGHT)


def _centred(cx: float, cy: float, side: float = 60.0) -> tuple[float, float, float, float]:
    return (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)


@pytest.mark.parametrize(("dx", "dy"), [(416, 40), (40, 416), (100, 100), (120, 120), (0, 0), (150, 0), (300, 400)])
def test_next_to_follows_the_readme_by_default_and_t2i_compbench_on_request(dx, dy):
    """README: 1 within 150 px of centre distance, else 150 / distance. T2I-CompBench: 1 when either
    axis offset is under 150, else 150 / max(|dx|, |dy|)."""
    a, b = _centred(500, 500), _centred(500 + dx, 500 - dy)
    distance = (dx * dx + dy * dy) ** 0.5
    readme = 1.0 if distance <= 150 else 150 / distance
    compbench = 1.0 if abs(dx) < 150 or abs(dy) < 150 else 150 / max(abs(dx), abs(dy))
    assert relation_score("next_to", a, b) == pytest.approx(readme)
    assert relation_score("next_to", a, b, next_to_rule="t2i_compbench") == pytest.approx(compbench)


def test_next_to_rule_is_an_option_of_the_reward():
    spec = RewardSpec(type="position", device="cpu", options={"detector": {"kind": "fixed"}})
    boxes = {"dog": [list(_centred(100, 100))], "cup": [list(_centred(516, 140))]}  # 416 px apart, 40 px down
    sample = make_sample("a dog next to a cup", boxes, categories=("dog", "cup"))
    scores = {}
    for rule in ("distance", "t2i_compbench"):
        reward = PositionReward("position", spec.model_copy(update={"options": {**spec.options, "next_to_rule": rule}}))
        reward.load()
        scores[rule] = reward.score([sample])[0].score
    assert scores == {"distance": pytest.approx(150 / (416**2 + 40**2) ** 0.5), "t2i_compbench": 1.0}


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("A dog to the left of a cat on a beach", Relation("dog", "left", "cat")),
        ("the cat is on the right of the dog", Relation("cat", "right", "dog")),
        ("A hat on top of a dog", Relation("hat", "above", "dog")),
        ("a cup above the dog", Relation("cup", "above", "dog")),
        ("The dog sits below the cup", Relation("dog", "below", "cup")),
        # a heuristic, not a parser: the nearest subject categories around the phrase are taken
        # (metadata.relation gives exact control)
        ("a cat under a table with a dog", Relation("cat", "below", "dog")),
        ("a dog beside the cat", Relation("dog", "next_to", "cat")),
        ("a dog to the left", None),
        ("A dog next to a cup", Relation("dog", "next_to", "cup")),
        ("two dogs playing", None),
    ],
)
def test_parse_relation(prompt, expected):
    got = parse_relation(prompt, ["dog", "cat", "cup", "hat"])
    if expected is None:
        assert isinstance(got, str)
    else:
        assert got == expected


def make_sample(prompt, boxes, categories=("dog", "cat"), **metadata):
    image = np.zeros((600, 600, 3), dtype=np.uint8)
    return Sample(image=image, prompt=prompt, subjects=tuple(Subject(c) for c in categories), metadata={"boxes": boxes, **metadata})


def test_reward_on_known_boxes():
    spec = RewardSpec(type="position", device="cpu", options={"detector": {"kind": "fixed"}})
    reward = PositionReward("position", spec)
    reward.load()
    samples = [
        make_sample("a dog to the left of a cat", {"dog": [list(A)], "cat": [list(RIGHT)]}),
        make_sample("a dog to the right of a cat", {"dog": [list(A)], "cat": [list(RIGHT)]}),
        make_sample("a dog above a cat", {"dog": [list(A)]}),  # cat missing
        make_sample("a dog and a cat", {"dog": [list(A)], "cat": [list(RIGHT)]}),  # no relation
        make_sample("a dog left of a dog", {"dog": [list(RIGHT), list(A)]}, categories=("dog",)),
        make_sample("whatever", {"cup": [list(A)], "hat": [list(BELOW)]}, relation={"subject": "cup", "relation": "above", "object": "hat"}),
        make_sample("whatever", {}, relation={"subject": "cup", "relation": "inside", "object": "hat"}),
    ]
    results = reward.score(samples)
    assert [r.score for r in results[:3]] == [1.0, 0.0, 0.0]
    assert results[0].details["subject_box"] == list(A)
    assert results[2].details["missing"] == ["cat"]
    assert results[3].score is None and "no spatial relation" in results[3].error
    assert results[4].score == 1.0  # either dog may be the left one
    assert results[5].score == 1.0
    assert results[6].score is None and "unknown relation" in results[6].error
