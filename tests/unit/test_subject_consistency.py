"""The subject-consistency reward on known boxes (fixed detector) through a real tiny DINO."""

from __future__ import annotations

import numpy as np
import pytest

from reward_server.rewards.subject_consistency import SubjectConsistencyReward
from tests.unit.subject_helpers import patch, sample, scene, subject_spec, write_tiny_dino


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    return write_tiny_dino(tmp_path_factory.mktemp("dino"))


def make_reward(dino, **options) -> SubjectConsistencyReward:
    reward = SubjectConsistencyReward("subject", subject_spec(dino, **options))
    reward.load()
    return reward


def subjects_of(result):
    return result.details["subjects"]


def test_exact_subjects_score_one_and_order_of_boxes_does_not_matter(dino):
    reward = make_reward(dino)
    a, b = patch(1), patch(2)
    image, boxes = scene([(b, (10, 10)), (a, (100, 90))])  # boxes listed in the "wrong" order
    result = reward.score([sample(image, [("dog", a), ("dog", b)], {"dog": boxes})])[0]
    assert result.score == pytest.approx(1.0, abs=1e-5)
    got = subjects_of(result)
    assert got[0]["box"] == boxes[1] and got[1]["box"] == boxes[0]
    assert not any(s["missing"] or s["confused"] for s in got)


def test_missing_subject_scores_zero_and_is_reported(dino):
    reward = make_reward(dino)
    a, b = patch(1), patch(3)
    image, boxes = scene([(a, (10, 10))])
    result = reward.score([sample(image, [("dog", a), ("cat", b)], {"dog": boxes})])[0]
    assert result.score == pytest.approx(0.5, abs=1e-5)  # (1 + 0) / 2
    dog, cat = subjects_of(result)
    assert not dog["missing"] and cat["missing"] and cat["box"] is None
    assert result.details["missing"] == 1


def test_paper_fallback_hides_the_missing_subject(dino):
    reward = make_reward(dino, paper_fallback=True)
    a, b = patch(1), patch(3)
    image, boxes = scene([(a, (10, 10))])
    result = reward.score([sample(image, [("dog", a), ("cat", b)], {"dog": boxes})])[0]
    cat = subjects_of(result)[1]
    assert cat["missing"] and cat["fallback"] == "whole_image"
    assert cat["similarity"] > 0.3 and result.score > 0.65  # the released code's optimism


def test_crop_that_looks_like_another_reference_is_flagged(dino):
    reward = make_reward(dino)
    dog_ref, cat_ref = patch(1), patch(3)
    # the "dog" box shows the cat's reference; the cat box shows the cat too
    image, boxes = scene([(cat_ref, (10, 10)), (cat_ref, (100, 100))])
    result = reward.score([sample(image, [("dog", dog_ref), ("cat", cat_ref)], {"dog": [boxes[0]], "cat": [boxes[1]]})])[0]
    dog, cat = subjects_of(result)
    assert dog["confused"] and dog["confused_with"] == 1
    assert not cat["confused"] and cat["similarity"] == pytest.approx(1.0, abs=1e-5)
    assert result.details["confused"] == 1
    assert result.score < 1.0


def test_duplicate_boxes_cannot_serve_two_references(dino):
    reward = make_reward(dino)
    a, b = patch(1), patch(2)
    image, boxes = scene([(a, (10, 10))])
    # the detector reports the same dog twice; reference b must not reuse it as if it were another dog
    result = reward.score([sample(image, [("dog", a), ("dog", b)], {"dog": [boxes[0]]})])[0]
    first, second = subjects_of(result)
    assert not first["missing"] and second["missing"]
    assert result.score == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("n", [2, 3, 4])
def test_n_subjects_shuffled_in_one_batch(dino, n):
    reward = make_reward(dino)
    rng = np.random.default_rng(n)
    refs = [patch(10 + i) for i in range(n)]
    order = rng.permutation(n)
    corners = [(8, 8), (100, 8), (8, 100), (100, 100)]
    image, boxes = scene([(refs[k], corners[i]) for i, k in enumerate(order)])
    cats = ["toy" if i < 2 else "cup" for i in range(n)]
    by_cat: dict[str, list] = {}
    for i, k in enumerate(order):
        by_cat.setdefault(cats[k], []).append(boxes[i])
    good = sample(image, list(zip(cats, refs, strict=True)), by_cat)
    # a second sample in the same batch: nothing detected at all
    empty = sample(image, list(zip(cats, refs, strict=True)), {})
    results = reward.score([good, empty])
    assert results[0].score == pytest.approx(1.0, abs=1e-5)
    for i, k in enumerate(order):
        assert subjects_of(results[0])[k]["box"] == boxes[i]
    assert results[1].score == 0.0 and results[1].details["missing"] == n
    assert set(reward.last_timings) == {"detect", "crop", "embed", "assign"}


def test_reference_detection_crops_the_reference(dino):
    reward = make_reward(dino, reference_crop="detect")
    a = patch(5)
    image, boxes = scene([(a, (40, 40))])
    reference, ref_boxes = scene([(a, (60, 20))], size=120)  # the subject inside a larger reference photo
    result = reward.score([sample(image, [("dog", reference)], {"dog": boxes}, reference_boxes=ref_boxes)])[0]
    assert result.score == pytest.approx(1.0, abs=1e-5)
    assert subjects_of(result)[0]["reference_box"] == ref_boxes[0]
    # without the reference box the whole reference is used, and the similarity drops
    whole = reward.score([sample(image, [("dog", reference)], {"dog": boxes})])[0]
    assert whole.score < 0.999 and subjects_of(whole)[0]["reference_box"] is None


def test_bad_fixed_boxes_are_a_clear_error(dino):
    reward = make_reward(dino)
    image, _ = scene([])
    with pytest.raises(ValueError, match="not inside"):
        reward.score([sample(image, [("dog", patch(1))], {"dog": [[0, 0, 500, 10]]})])
    assert reward.score([]) == []


def test_shared_references_are_processed_once_and_cached(dino):
    reward = make_reward(dino, reference_crop="detect")
    a, b = patch(1), patch(2)
    image, boxes = scene([(a, (10, 10)), (b, (100, 100))])
    group = [sample(image, [("dog", a), ("cat", b)], {"dog": [boxes[0]], "cat": [boxes[1]]}) for _ in range(6)]
    first = reward.score(group)
    assert reward.last_counts == {"crops": 6 * 2 + 2, "new_references": 2, "cached_references": 0}
    second = reward.score(group)
    assert reward.last_counts == {"crops": 6 * 2, "new_references": 0, "cached_references": 2}
    assert [r.score for r in first] == [r.score for r in second] == pytest.approx([1.0] * 6, abs=1e-5)
    # a box given for the reference changes its crop, so it is a different cache entry
    given = sample(image, [("dog", a), ("cat", b)], {"dog": [boxes[0]]}, reference_boxes=[[0, 0, 16, 16], None])
    reward.score([given])
    assert reward.last_counts["new_references"] == 1 and reward.last_counts["cached_references"] == 1


def test_cache_disabled_gives_the_same_scores(dino):
    cached, uncached = make_reward(dino), make_reward(dino, reference_cache_size=0)
    a, b = patch(1), patch(2)
    image, boxes = scene([(b, (10, 10)), (a, (100, 90))])
    batch = [sample(image, [("dog", a), ("dog", b)], {"dog": boxes})] * 2
    for _ in range(2):
        assert [r.score for r in cached.score(batch)] == [r.score for r in uncached.score(batch)]
    assert len(uncached.cache) == 0 and len(cached.cache) == 2 and cached.cache.hits >= 2


def test_lru_cache_evicts_the_oldest():
    from reward_server.rewards._references import ReferenceCache, ReferenceEntry, reference_key

    cache = ReferenceCache(2)
    entry = ReferenceEntry(box=None, embedding=np.zeros(2))
    keys = [reference_key(patch(i), "dog", None) for i in range(3)]
    assert len(set(keys)) == 3 and reference_key(patch(0), "cat", None) != keys[0]
    assert reference_key(patch(0), "dog", [0, 0, 4, 4]) != keys[0]
    cache.put(keys[0], entry)
    cache.put(keys[1], entry)
    assert cache.get(keys[0]) is entry  # keys[0] is now the most recent
    cache.put(keys[2], entry)
    assert cache.get(keys[1]) is None and cache.get(keys[0]) is entry and len(cache) == 2
