"""Quality filters: the box rules (pure functions) and the filters that are rewards (the reward service).

Box rules, per subject: no box -> ``not_detected``; more than one box of its category ->
``detected_twice`` (two candidates and no way to tell which one is the subject); a box covering
less than ``detect.min_box_area`` of the image -> ``box_too_small``.

Reward filters call the reward service through ``shared.client.RewardClient`` (HTTP or
``redis://``) like any other project would: the aesthetic floor scores targets
(``filters.aesthetic_reward``), the identity window scores each regenerated reference against its
crop (``filters.identity_reward``, an ``image_similarity`` reward such as DINO-I).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from reward_server.models.detectors import Box, Detections
from reward_server.rewards.position import iou
from shared.config import ConfigError
from trainer.datagen.config import FiltersConfig

# "A <phrase> B" as the position reward parses it back (reward_server.rewards.position.RELATIONS).
RELATION_PHRASES = {"left": "to the left of", "right": "to the right of", "above": "above", "below": "below",
                    "next_to": "next to"}


@dataclass
class BoxCheck:
    """Each subject's single box and score, or why the item fails."""

    boxes: list[Box] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    reason: str = ""
    message: str = ""


def check_boxes(found: Detections, categories: Sequence[str], height: int, width: int, min_area: float) -> BoxCheck:
    """Apply the box rules to one image's detections of ``categories`` (distinct words)."""
    out = BoxCheck()
    for category in categories:
        boxes = found.get(category, [])
        if not boxes:
            return BoxCheck(reason="not_detected", message=f"no box for {category!r}")
        if len(boxes) > 1:
            scores = ", ".join(f"{d.score:.2f}" for d in boxes)
            return BoxCheck(reason="detected_twice", message=f"{len(boxes)} boxes for {category!r} (scores {scores})")
        x0, y0, x1, y1 = boxes[0].box
        area = (x1 - x0) * (y1 - y0) / float(height * width)
        if area < min_area:
            return BoxCheck(reason="box_too_small",
                            message=f"the box of {category!r} covers {area:.4f} of the image (< {min_area})")
        out.boxes.append(boxes[0].box)
        out.scores.append(round(boxes[0].score, 4))
    return out


def padded(box: Box, margin: float, height: int, width: int) -> Box:
    """``box`` grown by ``margin`` of its side on each side, inside the image."""
    x0, y0, x1, y1 = box
    dx, dy = (x1 - x0) * margin, (y1 - y0) * margin
    return (max(0.0, x0 - dx), max(0.0, y0 - dy), min(float(width), x1 + dx), min(float(height), y1 + dy))


def relation_of(a: Box, b: Box, iou_threshold: float = 0.1) -> str:
    """Where A is relative to B, by the position reward's rule: overlapping boxes are "next to",
    else the dominant axis of the centre offset decides left/right/above/below."""
    if iou(a, b) >= iou_threshold:
        return "next_to"
    dx = (b[0] + b[2]) / 2 - (a[0] + a[2]) / 2
    dy = (b[1] + b[3]) / 2 - (a[1] + a[3]) / 2
    if abs(dx) >= abs(dy):
        return "left" if dx > 0 else "right"
    return "above" if dy > 0 else "below"


def position_instruction(a: str, b: str, relation: str) -> str:
    """``"a dog to the left of a cup"``."""
    from trainer.datagen.text import subjects_phrase

    return f"{subjects_phrase([a])} {RELATION_PHRASES[relation]} {subjects_phrase([b])}"


@dataclass
class Scored:
    """One score from the service, or ``None`` with its message."""

    value: float | None
    error: str | None = None


class RewardFilters:
    """The filters that are rewards, scored by the reward service."""

    def __init__(self, cfg: FiltersConfig):
        from shared.client import RewardClient

        self.cfg = cfg
        self.client = None
        self.versions: dict[str, str] = {}
        self.hosted: dict[str, str | None] = {}  # reward name -> the version the service reports
        if cfg.server:  # without a server both filters are off (the config checks that)
            api_key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
            try:
                self.client = RewardClient(cfg.server, api_key=api_key, timeout=cfg.timeout_s, image_format="raw")
            except ValueError as exc:
                raise ConfigError(f"filters.server: {exc}") from exc

    def check_service(self) -> None:
        """Fail now, in one line, if the service is unreachable or lacks a configured reward."""
        from shared.client import RewardServiceError

        if self.client is None:
            return
        try:
            hosted = {r["name"]: r for r in self.client.rewards()}
        except (RewardServiceError, OSError) as exc:
            raise ConfigError(f"filters.server: the reward service at {self.cfg.server} is unreachable ({exc})") from exc
        except Exception as exc:  # httpx / redis connection errors have no common base with OSError
            raise ConfigError(f"filters.server: the reward service at {self.cfg.server} is unreachable "
                              f"({type(exc).__name__}: {exc})") from exc
        for key in ("aesthetic_reward", "identity_reward"):
            name = getattr(self.cfg, key)
            if name and name not in hosted:
                raise ConfigError(f"filters.{key}: the reward service at {self.cfg.server} does not host {name!r} "
                                  f"(it hosts {', '.join(sorted(hosted)) or 'nothing'})")
        self.hosted = {name: info.get("version") for name, info in hosted.items()}

    def hosted_versions(self, keys: Sequence[str]) -> dict[str, str | None]:
        """``{reward name: version}`` of the configured filters ``keys`` (e.g. ``aesthetic_reward``) that are on."""
        names = [getattr(self.cfg, key) for key in keys]
        return {name: self.hosted.get(name) for name in names if name}

    def _score(self, name: str, images, **kwargs) -> list[Scored]:
        from shared.client import RewardServiceError

        try:
            res = self.client.score(images, {name: 1.0}, **kwargs)
        except RewardServiceError as exc:
            from trainer.datagen.text import EndpointUnavailable

            raise EndpointUnavailable(f"filters: the reward service failed scoring {name!r}: {exc}") from exc
        self.versions.update(res.versions)
        errors = {e["sample"]: e["message"] for e in res.errors if e.get("reward") in (name, None)}
        column = res.scores[name]
        return [Scored(None, errors.get(i, "no score")) if not np.isfinite(v) else Scored(float(v))
                for i, v in enumerate(column)]

    def aesthetic(self, images: Sequence[np.ndarray], prompts: Sequence[str]) -> list[Scored]:
        """The aesthetic reward of each image (or ``None`` scores when the filter is off)."""
        if not self.cfg.aesthetic_reward:
            return [Scored(None) for _ in images]
        return self._score(self.cfg.aesthetic_reward, list(images), prompts=list(prompts))

    def identity(self, images: Sequence[np.ndarray], categories: Sequence[str], crops: Sequence[np.ndarray]) -> list[Scored]:
        """The similarity of each regenerated reference to the crop it was made from."""
        if not self.cfg.identity_reward:
            return [Scored(None) for _ in images]
        subjects = [[(c, crop)] for c, crop in zip(categories, crops, strict=True)]
        return self._score(self.cfg.identity_reward, list(images), subjects=subjects)

    def close(self) -> None:
        if self.client is not None:
            self.client.close()
