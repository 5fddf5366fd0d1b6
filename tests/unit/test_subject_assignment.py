"""The one-to-one assignment on known similarity matrices (pure, no model)."""

from __future__ import annotations

import numpy as np
import pytest

from reward_server.rewards._assignment import assign


def test_swapped_boxes_are_matched_by_appearance_not_order():
    # two dogs; candidate 0 looks like reference 1 and candidate 1 like reference 0
    sim = np.array([[0.2, 0.9], [0.8, 0.3]])
    matches = assign(sim, ["dog", "dog"], ["dog", "dog"])
    assert [m.candidate for m in matches] == [1, 0]
    assert [m.similarity for m in matches] == [0.9, 0.8]
    assert all(m.confused_with is None for m in matches)


def test_one_crop_cannot_serve_two_references():
    # both references prefer candidate 0; only one may have it
    sim = np.array([[0.9, 0.5], [0.95, 0.1]])
    matches = assign(sim, ["dog", "dog"], ["dog", "dog"])
    assert sorted(m.candidate for m in matches) == [0, 1]
    assert matches[0].candidate == 1 and matches[1].candidate == 0  # total 0.5 + 0.95 beats 0.9 + 0.1


def test_categories_are_never_crossed_and_missing_subject_is_unmatched():
    sim = np.array([[0.1, 0.99], [0.2, 0.98]])  # the cat box looks like both references
    matches = assign(sim, ["dog", "cup"], ["dog", "cat"])
    assert matches[0].candidate == 0
    assert matches[1].candidate is None and matches[1].similarity is None


def test_fewer_candidates_than_subjects_of_one_category():
    sim = np.array([[0.4], [0.7], [0.6]])
    matches = assign(sim, ["dog", "dog", "dog"], ["dog"])
    assert [m.candidate for m in matches] == [None, 0, None]


def test_confusion_flag_names_the_closer_reference():
    # the only dog box is closer to the cat's reference than to the dog's
    sim = np.array([[0.5, 0.1], [0.9, 0.8]])
    matches = assign(sim, ["dog", "cat"], ["dog", "cat"])
    assert matches[0].candidate == 0 and matches[0].confused_with == 1
    assert matches[1].candidate == 1 and matches[1].confused_with is None


@pytest.mark.parametrize("n", [2, 3, 4])
def test_n_subjects_permuted_are_recovered(n):
    rng = np.random.default_rng(n)
    perm = rng.permutation(n)
    sim = np.full((n, n), 0.3) + rng.uniform(0, 0.1, size=(n, n))
    sim[np.arange(n), perm] = 0.9
    matches = assign(sim, ["toy"] * n, ["toy"] * n)
    assert [m.candidate for m in matches] == perm.tolist()


def test_no_candidates_and_shape_check():
    assert [m.candidate for m in assign(np.zeros((2, 0)), ["a", "b"], [])] == [None, None]
    with pytest.raises(ValueError, match="shape"):
        assign(np.zeros((2, 3)), ["a", "b"], ["a", "b"])
