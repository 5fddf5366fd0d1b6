"""The reward contract: a name, the inputs it needs, ``load()`` and a batched ``score()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from reward_server.config import RewardSpec
from shared.config import StrictModel
from shared.protocol import Sample
from shared.scoring import PROMPT, REFERENCES, SUBJECTS, ScoreResult, missing_input

__all__ = ["PROMPT", "REFERENCES", "SUBJECTS", "NoOptions", "Reward", "ScoreResult", "missing_input"]

class NoOptions(StrictModel):
    """A reward without options."""


class Reward(ABC):
    """Base class of every reward. Subclasses set ``type_name`` and register with ``@register``.

    ``score`` receives a whole batch (possibly merged from many requests) and returns one
    ``ScoreResult`` per sample, in order. It may raise: the batcher then isolates the failing
    request so the others still get their scores.
    """

    type_name: ClassVar[str]
    inputs: ClassVar[frozenset[str]] = frozenset()
    Options: ClassVar[type[StrictModel]] = NoOptions
    code_version: ClassVar[str] = "1"
    description: ClassVar[str] = ""

    def __init__(self, name: str, spec: RewardSpec):
        self.name = name
        self.spec = spec
        self.options = self.Options.model_validate(spec.options)
        self.loaded = False

    @abstractmethod
    def load(self) -> None:
        """Load model weights onto ``self.spec.device``. Called once before any ``score``."""

    @abstractmethod
    def score(self, samples: Sequence[Sample]) -> list[ScoreResult]:
        """Score a batch; one result per sample."""

    def check_sample(self, sample: Sample) -> str | None:
        """Return why ``sample`` lacks an input this reward needs, or ``None`` if it is complete."""
        return missing_input(self.name, self.inputs, sample)

    @property
    def version(self) -> str:
        """Identifies the scores: reward type and code version, model id, config hash."""
        return f"{self.type_name}/{self.code_version}:{self.spec.model or '-'}@{self.spec.fingerprint()}"

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/rewards`` shows about this reward."""
        return {
            "name": self.name,
            "type": self.type_name,
            "description": self.description,
            "inputs": ["image", *sorted(self.inputs)],
            "model": self.spec.model,
            "device": self.spec.device,
            "version": self.version,
            "max_batch_size": self.spec.max_batch_size,
            "max_wait_ms": self.spec.max_wait_ms,
            "options": self.options.model_dump(),
            "loaded": self.loaded,
        }
