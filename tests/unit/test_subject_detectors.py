"""The real transformers detector path on tiny random Grounding DINO and OWLv2 checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reward_server.config import RewardSpec
from reward_server.models.detectors import DetectorOptions, GroundingDinoDetector, build_detector
from reward_server.rewards.subject_consistency import SubjectConsistencyReward
from reward_server.tiny.detectors import write_grounding_dino, write_owlv2
from shared.protocol import Sample, Subject
from tests.unit.subject_helpers import patch, write_tiny_dino

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("detectors")
    torch.manual_seed(0)
    return {
        "grounding_dino": str(write_grounding_dino(root / "gd")),
        "owlv2": str(write_owlv2(root / "owl")),
        "dino": write_tiny_dino(root / "dino"),
    }


def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (80, 120, 3), dtype=np.uint8), rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)]


@pytest.mark.parametrize("kind", ["grounding_dino", "owlv2"])
def test_detector_returns_pixel_boxes_per_category(tiny, kind):
    opts = DetectorOptions(kind=kind, model=tiny[kind], box_threshold=0.0, text_threshold=0.0, max_per_category=3)
    detector = build_detector(opts, CPU, torch.float32)
    imgs = images()
    found = detector.detect(imgs, [["dog", "cat", "dog"], ["cup"]])
    assert [sorted(f) for f in found] == [["cat", "dog"], ["cup"]]
    for image, per_image in zip(imgs, found, strict=True):
        height, width = image.shape[:2]
        for detections in per_image.values():
            assert 1 <= len(detections) <= 3  # threshold 0 keeps something; top-k caps it
            scores = [d.score for d in detections]
            assert scores == sorted(scores, reverse=True)
            for d in detections:
                x0, y0, x1, y1 = d.box
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    # equal-size images: chunking does not change an image's boxes (Grounding DINO's image features
    # attend to its caption, so the categories asked for must be the same)
    same = [imgs[0], imgs[0][::-1].copy(), imgs[0][:, ::-1].copy()]
    whole = detector.detect(same, [["dog"], ["cup"], ["cup"]])
    one_by_one = build_detector(opts.model_copy(update={"batch_size": 1}), CPU, torch.float32).detect(same, [["dog"], ["cup"], ["cup"]])
    for a, b in zip(whole, one_by_one, strict=True):
        for category in b:
            np.testing.assert_allclose([d.box for d in a[category]], [d.box for d in b[category]], atol=1e-3)


@pytest.mark.parametrize("kind", ["grounding_dino", "owlv2"])
def test_threshold_one_finds_nothing(tiny, kind):
    opts = DetectorOptions(kind=kind, model=tiny[kind], box_threshold=1.0)
    found = build_detector(opts, CPU, torch.float32).detect(images(), [["dog"], ["cup"]])
    assert found == [{"dog": []}, {"cup": []}]


def test_grounding_dino_caption_spans():
    text, spans = GroundingDinoDetector.caption(["Dog", "teddy bear"])
    assert text == "dog. teddy bear."
    assert [text[a:b] for a, b in spans] == ["dog", "teddy bear"]


@pytest.mark.parametrize("kind", ["grounding_dino", "owlv2"])
def test_subject_reward_end_to_end_on_real_detector(tiny, kind):
    spec = RewardSpec(
        type="subject_consistency", model=tiny["dino"], device="cpu",
        options={"detector": {"kind": kind, "model": tiny[kind], "box_threshold": 0.0, "text_threshold": 0.0}},
    )
    reward = SubjectConsistencyReward("subject", spec)
    reward.load()
    imgs = images()
    samples = [
        Sample(image=imgs[0], subjects=(Subject("dog", patch(1)), Subject("dog", patch(2)))),
        Sample(image=imgs[1], subjects=(Subject("cup", patch(3)),)),
    ]
    results = reward.score(samples)
    for result, sample in zip(results, samples, strict=True):
        assert result.error is None and -1.0 <= result.score <= 1.0
        subjects = result.details["subjects"]
        assert len(subjects) == len(sample.subjects)
        assert all(not s["missing"] and s["box"] is not None for s in subjects)
        assert result.score == pytest.approx(np.mean([s["similarity"] for s in subjects]), abs=1e-6)
    assert len({tuple(s["box"]) for s in results[0].details["subjects"]}) == 2  # two dogs, two distinct boxes
