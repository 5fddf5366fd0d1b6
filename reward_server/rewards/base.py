"""The reward contract: a name, the inputs it needs, ``load()`` and a batched ``score()``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from reward_server.config import RewardSpec
from shared.config import StrictModel
from shared.paths import check_model_ref
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
        # "FILE: rewards.NAME.KEY" or "--set rewards.NAME.KEY" for messages (build_rewards sets it)
        self.origin: Callable[[str], str] = lambda key: f"rewards.{name}.{key}"

    def model_refs(self) -> dict[str, str]:
        """Checkpoints and files this reward loads, by key (``model``, ``options.detector.model``...)."""
        refs = {"model": self.spec.model} if self.spec.model else {}
        refs.update(_option_refs(self.options, "options"))
        return refs

    def set_model_ref(self, key: str, value: str) -> None:
        """Replace one of ``model_refs()`` (e.g. with the resolved absolute path)."""
        if key == "model":
            self.spec = self.spec.model_copy(update={"model": value})
            return
        *parents, leaf = key.split(".")[1:]
        node = self.options
        for part in parents:
            node = getattr(node, part)
        setattr(node, leaf, value)

    def check(self) -> None:
        """What can be checked without loading anything (``--check``, and before loading): the local
        paths exist; subclasses add their own (raise ``ConfigError`` naming ``self.origin(key)``)."""
        self.check_model_refs()

    def check_model_refs(self) -> None:
        """Report a local checkpoint path that does not exist, naming the config file and key."""
        for key, value in self.model_refs().items():
            check_model_ref(value, self.origin(key))

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


def _option_refs(options: StrictModel, prefix: str) -> dict[str, str]:
    """Values of fields marked ``MODEL_REF`` in an options model, nested models included."""
    refs: dict[str, str] = {}
    for field_name, info in type(options).model_fields.items():
        value = getattr(options, field_name)
        if isinstance(value, StrictModel):
            refs.update(_option_refs(value, f"{prefix}.{field_name}"))
        elif value and (info.json_schema_extra or {}).get("model_ref"):
            refs[f"{prefix}.{field_name}"] = value
    return refs
