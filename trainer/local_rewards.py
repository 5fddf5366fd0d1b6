"""An in-process reward client with the ``RewardClient`` API (``score`` / ``submit``).

It runs configured rewards directly (no HTTP), assembling the answer with the server's own
``assemble_response`` so failures look exactly as over the wire (NaN + an error entry). Used by
tests, benchmarks and anywhere a reward server process is not wanted.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reward_server.config import RewardSpec, ServerConfig
from reward_server.registry import build_rewards, load_rewards
from reward_server.service import assemble_response
from shared.images import to_uint8_array
from shared.protocol import Sample, Subject


@dataclass
class LocalScores:
    """Same fields as ``shared.client.Scores``."""

    scores: dict[str, np.ndarray]
    total: np.ndarray
    errors: list[dict[str, Any]] = field(default_factory=list)
    details: dict[str, list[Any]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def valid(self) -> np.ndarray:
        return np.isfinite(self.total)


class InProcessRewardClient:
    """Scores with rewards built from a server config (or ``{name: RewardSpec-like dict}``)."""

    def __init__(self, config: ServerConfig | dict[str, Any], max_workers: int = 1):
        if not isinstance(config, ServerConfig):
            config = ServerConfig(rewards={k: RewardSpec.model_validate(v) for k, v in config.items()})
        self.rewards = build_rewards(config)
        load_rewards(self.rewards)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="local-rewards")
        self._lock = threading.Lock()

    def score(
        self,
        images: list[Any],
        rewards: dict[str, float],
        prompts: list[str] | None = None,
        subjects: list[list[tuple[str, Any]]] | None = None,
        metadata: list[dict[str, Any]] | None = None,
    ) -> LocalScores:
        unknown = sorted(set(rewards) - set(self.rewards))
        if unknown:
            raise ValueError(f"unknown rewards {unknown}; available: {sorted(self.rewards)}")
        samples = [
            Sample(
                image=to_uint8_array(img),
                prompt=prompts[i] if prompts else "",
                subjects=tuple(
                    Subject(c, None if r is None else to_uint8_array(r))
                    for c, r in (subjects or [[]] * len(images))[i]
                ),
                metadata=(metadata[i] if metadata else {}),
            )
            for i, img in enumerate(images)
        ]
        with self._lock:
            results = {name: self.rewards[name].score(samples) for name in rewards}
        versions = {k: r.version for k, r in self.rewards.items()}
        resp = assemble_response(rewards, results, versions, len(samples))
        return LocalScores(
            scores={
                k: np.array([np.nan if v is None else v for v in col], dtype=np.float64)
                for k, col in resp.scores.items()
            },
            total=np.array([np.nan if v is None else v for v in resp.total], dtype=np.float64),
            errors=[e.model_dump() for e in resp.errors],
            details=resp.details,
            versions=resp.versions,
        )

    def submit(self, *args: Any, **kwargs: Any) -> Future:
        return self._pool.submit(self.score, *args, **kwargs)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
