"""Configuration of the reward server: which rewards to host and the request limits."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from shared.config import StrictModel, config_hash
from shared.images import ImageLimits
from shared.queue.messages import QueueSettings

Dtype = Literal["auto", "float32", "float16", "bfloat16"]


class RewardSpec(StrictModel):
    """One hosted reward: a registered reward type, its model and how to batch it."""

    type: str = Field(description="registered reward type (see `GET /v1/rewards`) or 'package.module:Class'")
    model: str | None = Field(default=None, description="hub id or local path given to from_pretrained")
    device: str = Field(default="auto", description="'auto' (cuda if available), 'cpu', 'cuda:0', ...")
    dtype: Dtype = Field(default="auto", description="'auto' = bfloat16 on cuda, float32 on cpu")
    max_batch_size: int = Field(default=32, ge=1, le=4096, description="most samples per model call")
    max_wait_ms: float = Field(
        default=5.0, ge=0, le=10_000,
        description="most a batch waits for more samples: a queue worker for more jobs; the embedded server "
        "only when the model frees under load, for the callers it just answered (at most a quarter of that "
        "batch's model time; a request that finds the model idle runs at once; 0: never)",
    )
    options: dict[str, Any] = Field(default_factory=dict, description="reward-specific options")

    def fingerprint(self) -> str:
        """Hash of everything that changes scores (not the batching knobs)."""
        return config_hash({"type": self.type, "model": self.model, "dtype": self.dtype, "options": self.options})


class LimitsConfig(StrictModel):
    """Bounds on what one request may ask for."""

    max_body_bytes: int = Field(default=256 * 1024 * 1024, ge=1024, description="largest request body")
    max_samples_per_request: int = Field(default=1024, ge=1)
    max_image_side: int = Field(default=4096, ge=8)
    max_image_pixels: int = Field(default=4096 * 4096, ge=64)
    max_image_aspect_ratio: float = Field(
        default=32.0, ge=1, description="longest side / shortest side of an image (rewards resize the short side)"
    )
    max_request_pixels: int = Field(
        default=2**28, ge=64, description="decoded pixels of all images of one request together (3 bytes each)"
    )
    max_pixels_in_flight: int = Field(
        default=2**29, ge=64,
        description="decoded pixels all requests of this process may hold at once (3 bytes each; the default, "
        "1.6 GB, suits a 16 GB host); a request that does not fit waits busy_wait_s, then gets 503",
    )
    busy_wait_s: float = Field(
        default=2.0, ge=0, description="how long a request waits for max_pixels_in_flight before a 503"
    )
    max_queued_samples_per_caller: int = Field(
        default=0, ge=0, description="samples one API key may have waiting; more is 429 (0: no limit)"
    )
    retry_after_s: float = Field(default=1.0, gt=0, description="Retry-After sent with a 429 or 503")

    @model_validator(mode="after")
    def _request_fits_in_flight(self) -> LimitsConfig:
        if self.max_request_pixels > self.max_pixels_in_flight:
            raise ValueError(f"limits.max_request_pixels ({self.max_request_pixels}) must be at most "
                             f"limits.max_pixels_in_flight ({self.max_pixels_in_flight}), or a request could never "
                             "be admitted; lower the first or raise the second")
        return self

    def image_limits(self) -> ImageLimits:
        return ImageLimits(max_side=self.max_image_side, max_pixels=self.max_image_pixels,
                           max_request_pixels=self.max_request_pixels,
                           max_aspect_ratio=self.max_image_aspect_ratio)


class ServerConfig(StrictModel):
    """Top level of ``rewards.yaml``."""

    rewards: dict[str, RewardSpec] = Field(description="reward name -> spec")
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    request_timeout_s: float = Field(default=600.0, gt=0, description="longest a request may wait for scores")
    queue: QueueSettings = Field(
        default_factory=QueueSettings, description="Redis queue settings (used by `psr serve --redis` and `psr worker`)"
    )

    @model_validator(mode="after")
    def _some_rewards(self) -> ServerConfig:
        if not self.rewards:
            raise ValueError("the config hosts no rewards: add at least one entry under `rewards:`")
        short = {k: v for k, v in (("blob_ttl_s", self.queue.blob_ttl_s), ("result_ttl_s", self.queue.result_ttl_s))
                 if v < self.request_timeout_s}
        if short:  # images or job records would expire while a caller still waits for them
            raise ValueError(f"queue {short} must be at least request_timeout_s ({self.request_timeout_s:g}); "
                             "raise them or lower request_timeout_s")
        return self
