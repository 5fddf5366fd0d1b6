"""Wire models of the scoring API and the decoded samples rewards work on.

Two wire forms carry the same structure:

* JSON (``application/json``): images are base64 PNG/JPEG strings, or
  ``{"format": "raw", "shape": [h, w, 3], "data": "<base64>"}``.
* msgpack (``application/msgpack``): the same keys, images as PNG/JPEG ``bytes`` or
  ``{"format": "raw", "shape": [h, w, 3], "data": <bytes>}`` -- the fast path.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgpack
import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from shared.images import DEFAULT_LIMITS, ImageDecodeError, ImageLimits, b64decode, decode_image

MSGPACK = "application/msgpack"
JSON = "application/json"
API_VERSION = "v1"


def _bytes_from_wire(value: Any) -> Any:
    """JSON carries base64 text, msgpack carries bytes; both end as bytes."""
    if isinstance(value, str):
        return b64decode(value)
    return value


WireBytes = Annotated[bytes, BeforeValidator(_bytes_from_wire)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RawImage(_Strict):
    """An uncompressed (H, W, 3) uint8 image."""

    format: Literal["raw"] = "raw"
    shape: tuple[int, int, int] = Field(description="[height, width, 3]")
    data: WireBytes = Field(description="H*W*3 bytes, row-major RGB (base64 in JSON)")


def _wire_image(value: Any) -> RawImage | bytes:
    """One validator for every image field, so errors name the problem, not every union branch."""
    if isinstance(value, RawImage):
        return value
    if isinstance(value, dict):
        try:
            return RawImage.model_validate(value)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ValueError(f"invalid raw image ({problems})") from None
    if isinstance(value, str):
        return b64decode(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError("an image must be base64 PNG/JPEG text, PNG/JPEG bytes, or a raw image object")


_IMAGE_SCHEMA = {
    "anyOf": [
        {"type": "string", "contentEncoding": "base64", "description": "PNG or JPEG file, base64"},
        {
            "type": "object",
            "description": "raw RGB pixels",
            "properties": {
                "format": {"const": "raw"},
                "shape": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3},
                "data": {"type": "string", "contentEncoding": "base64", "description": "H*W*3 bytes"},
            },
            "required": ["shape", "data"],
        },
    ]
}
WireImage = Annotated[RawImage | bytes, PlainValidator(_wire_image), WithJsonSchema(_IMAGE_SCHEMA)]


class SubjectIn(_Strict):
    """One subject the generated image should contain."""

    category: str = Field(min_length=1, max_length=200, description="category word, e.g. 'dog'")
    reference: WireImage | None = Field(default=None, description="reference image of the subject")


class SampleIn(_Strict):
    """One generated image with what it was asked to show."""

    image: WireImage = Field(description="base64 PNG/JPEG (JSON), bytes (msgpack) or a raw image object")
    prompt: str = Field(default="", max_length=10_000)
    subjects: list[SubjectIn] = Field(default_factory=list, max_length=16)
    metadata: dict[str, Any] = Field(default_factory=dict, description="free-form, passed to rewards")


class ScoreRequest(_Strict):
    """``POST /v1/score`` body: which rewards (name -> weight) to compute on which samples."""

    rewards: dict[str, float] = Field(min_length=1, description="reward name -> weight in `total`")
    samples: list[SampleIn] = Field(description="the images to score")

    @field_validator("rewards")
    @classmethod
    def _finite_weights(cls, rewards: dict[str, float]) -> dict[str, float]:
        for name, weight in rewards.items():
            if not np.isfinite(weight):
                raise ValueError(f"weight of reward {name!r} must be finite, got {weight}")
        return rewards


class SampleError(BaseModel):
    """A reward that failed on one sample."""

    sample: int
    reward: str
    message: str


class ScoreResponse(BaseModel):
    """Answer to a score request; failed scores are null, never 0."""

    scores: dict[str, list[float | None]] = Field(description="reward name -> one score or null per sample")
    total: list[float | None] = Field(description="weighted sum per sample; null where a reward failed")
    errors: list[SampleError] = Field(default_factory=list)
    details: dict[str, list[dict[str, Any] | None]] = Field(
        default_factory=dict, description="reward name -> per-sample details, for rewards that have them"
    )
    versions: dict[str, str] = Field(default_factory=dict, description="reward name -> model id + config hash")


# ----------------------------------------------------------------------------------------------
# Decoded form, what rewards receive.


@dataclass(frozen=True)
class Subject:
    category: str
    reference: np.ndarray | None = None


@dataclass(frozen=True)
class Sample:
    """A decoded sample: ``image`` is an (H, W, 3) uint8 array."""

    image: np.ndarray
    prompt: str = ""
    subjects: tuple[Subject, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


class InvalidRequest(ValueError):
    """A request that cannot be scored; the message names the offending field."""


def _decode(image: RawImage | bytes, where: str, limits: ImageLimits, decoded: list[int]) -> np.ndarray:
    payload = image.model_dump() if isinstance(image, RawImage) else image
    try:
        array = decode_image(payload, limits)
    except ImageDecodeError as exc:
        raise InvalidRequest(f"{where}: {exc}") from exc
    decoded[0] += array.shape[0] * array.shape[1]
    if decoded[0] > limits.max_request_pixels:
        raise InvalidRequest(f"{where}: the request's images decode to more than {limits.max_request_pixels} "
                             "pixels in all; send fewer or smaller images per request")
    return array


def decode_samples(
    request: ScoreRequest, limits: ImageLimits = DEFAULT_LIMITS, stop: threading.Event | None = None
) -> list[Sample]:
    """Decode every image of a request; errors name the field, e.g. ``samples[2].subjects[0].reference``.

    ``stop`` set (the caller gave up) ends the work between samples with ``InvalidRequest``."""
    samples = []
    decoded = [0]  # pixels so far, against limits.max_request_pixels
    for i, sample in enumerate(request.samples):
        if stop is not None and stop.is_set():
            raise InvalidRequest("decoding stopped: the request was cancelled")
        subjects = tuple(
            Subject(
                category=subject.category,
                reference=None
                if subject.reference is None
                else _decode(subject.reference, f"samples[{i}].subjects[{j}].reference", limits, decoded),
            )
            for j, subject in enumerate(sample.subjects)
        )
        samples.append(
            Sample(
                image=_decode(sample.image, f"samples[{i}].image", limits, decoded),
                prompt=sample.prompt,
                subjects=subjects,
                metadata=sample.metadata,
            )
        )
    return samples


def pack(obj: Any) -> bytes:
    """msgpack-encode a JSON-like object (bytes stay bytes)."""
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes, max_bytes: int | None = None) -> Any:
    """msgpack-decode without ever executing or unpickling anything."""
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidRequest(f"body of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException, ValueError) as exc:
        raise InvalidRequest(f"body is not valid msgpack: {exc}") from exc
