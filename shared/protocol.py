"""Wire models of the scoring API and the decoded samples rewards work on.

Two wire forms carry the same structure:

* JSON (``application/json``): images are base64 PNG/JPEG strings, or
  ``{"format": "raw", "shape": [h, w, 3], "data": "<base64>"}``.
* msgpack (``application/msgpack``): the same keys, images as PNG/JPEG ``bytes`` or
  ``{"format": "raw", "shape": [h, w, 3], "data": <bytes>}`` -- the fast path.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgpack
import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    Strict,
    ValidationError,
    WithJsonSchema,
    field_validator,
)

from shared.images import (
    DEFAULT_LIMITS,
    ImageDecodeError,
    ImageLimits,
    b64decode,
    compressed_size,
    decode_compressed,
    decode_raw,
)

MSGPACK = "application/msgpack"
JSON = "application/json"
API_VERSION = "v1"

# How deeply a request body may nest (objects/maps and arrays inside one another, the body itself
# counted), in JSON and msgpack alike. The body's own structure takes 4 levels (body > samples >
# sample > metadata); the rest is for ``metadata``.
MAX_NESTING = 32
_METADATA_LEVELS = MAX_NESTING - 3
# Integers every transport carries: msgpack (the queue's encoding) stops at 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def nesting_error(depth: int | None = None) -> str:
    """The one message for a body nested too deeply, whatever its wire form."""
    found = f"nests {depth} levels deep" if depth else "nests too deeply"
    return f"the body {found}; bodies may nest at most {MAX_NESTING} levels (metadata included)"


def _portable(value: Any, where: str) -> Any:
    """Refuse what one transport would carry and another would not, so every route answers alike:
    integers beyond 64 bits, nesting beyond ``MAX_NESTING``, non-string keys, non-data types."""
    stack = [(value, where, 1)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, dict):
            if depth > _METADATA_LEVELS:
                raise ValueError(nesting_error(depth + 3))
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValueError(f"{path}: keys must be strings, got {type(key).__name__}")
                stack.append((child, f"{path}.{key}", depth + 1))
        elif isinstance(item, (list, tuple)):
            if depth > _METADATA_LEVELS:
                raise ValueError(nesting_error(depth + 3))
            stack.extend((child, f"{path}[{i}]", depth + 1) for i, child in enumerate(item))
        elif isinstance(item, bool) or item is None or isinstance(item, (float, str, bytes)):
            continue
        elif isinstance(item, int):
            if not _INT_MIN <= item <= _INT_MAX:
                raise ValueError(f"{path}: integer {item} is outside the 64-bit range [-2**63, 2**64 - 1]; "
                                 "send it as a string")
        else:
            raise ValueError(f"{path}: values must be null, booleans, numbers, strings, arrays or objects, "
                             f"got {type(item).__name__}")
    return value


def _portable_metadata(value: dict[str, Any]) -> dict[str, Any]:
    return _portable(value, "metadata") if value else value


Metadata = Annotated[dict[str, Any], AfterValidator(_portable_metadata)]
# A weight is a number: "1" or true is refused rather than read as 1.0.
Weight = Annotated[float, Strict()]


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
    metadata: Metadata = Field(
        default_factory=dict,
        description=f"free-form, passed to rewards: JSON values, integers within 64 bits, at most "
        f"{_METADATA_LEVELS} levels deep",
    )


_EXAMPLE_PNG = (  # a 1x1 red PNG, so clients generated from the schema have a body that scores
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4z8AAAAMBAQDJ/pLvAAAAAElFTkSuQmCC"
)


class ScoreRequest(_Strict):
    """``POST /v1/score`` body: which rewards (name -> weight) to compute on which samples."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"rewards": {"clip_t": 1.0}, "samples": [{"image": _EXAMPLE_PNG, "prompt": "a red square"}]}]})

    rewards: dict[str, Weight] = Field(
        min_length=1, description="reward name -> weight in `total` (a finite number; each name once)"
    )
    samples: list[SampleIn] = Field(description="the images to score")

    @field_validator("rewards")
    @classmethod
    def _finite_weights(cls, rewards: dict[str, float]) -> dict[str, float]:
        for name, weight in rewards.items():
            if not math.isfinite(weight):
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


def image_pixels(image: RawImage | bytes) -> int | None:
    """Pixels ``image`` will decode to, read from its header (microseconds, nothing decoded);
    None when the header cannot be read (decoding will say why)."""
    if isinstance(image, RawImage):
        return image.shape[0] * image.shape[1]
    size = compressed_size(image)
    return size[0] * size[1] if size else None


def request_images(request: ScoreRequest) -> Iterator[tuple[RawImage | bytes, str]]:
    """Every image of ``request``, references included, with the field that holds it."""
    for i, sample in enumerate(request.samples):
        yield sample.image, f"samples[{i}].image"
        for j, subject in enumerate(sample.subjects):
            if subject.reference is not None:
                yield subject.reference, f"samples[{i}].subjects[{j}].reference"


def request_pixels(request: ScoreRequest, limits: ImageLimits = DEFAULT_LIMITS) -> int:
    """Pixels all images of ``request`` (references included) will decode to, from their headers;
    an unreadable header counts as the largest image ``limits`` allow."""
    total = 0
    for image, _ in request_images(request):
        pixels = image_pixels(image)
        total += limits.max_pixels if pixels is None else pixels
    return total


def _decode(image: RawImage | bytes, where: str, limits: ImageLimits, decoded: list[int]) -> np.ndarray:
    try:
        if isinstance(image, RawImage):
            array = decode_raw(image.data, image.shape, limits)
        else:
            array = decode_compressed(image, limits)
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


def _unique_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[Any] = set()
        duplicate = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise DuplicateKey(f"duplicate key {duplicate!r}: every key of a map must be unique")
    return out


class DuplicateKey(ValueError):
    """A JSON object or msgpack map names the same key twice (which one would count is a guess)."""


class TooDeep(InvalidRequest):
    """A body nested deeper than ``MAX_NESTING`` (422, like deep metadata)."""


def _msgpack_problem(exc: Exception) -> str:
    """A reason for every unpacking failure (some of msgpack's exceptions carry no message)."""
    if isinstance(exc, msgpack.exceptions.FormatError):
        return "it holds a byte that starts no msgpack value (0xc1 or a corrupt type byte)"
    if isinstance(exc, msgpack.exceptions.ExtraData):
        return "bytes follow the first complete value (send exactly one msgpack map)"
    text = str(exc).strip()
    return f"{text} ({type(exc).__name__})" if text else f"{type(exc).__name__}"


def unpack(data: bytes, max_bytes: int | None = None, unique_keys: bool = False) -> Any:
    """msgpack-decode without ever executing or unpickling anything.

    ``unique_keys`` refuses maps naming a key twice (``DuplicateKey``, for request bodies)."""
    if max_bytes is not None and len(data) > max_bytes:
        raise InvalidRequest(f"body of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        if unique_keys:
            return msgpack.unpackb(data, raw=False, strict_map_key=True, object_pairs_hook=_unique_keys)
        return msgpack.unpackb(data, raw=False, strict_map_key=True)
    except DuplicateKey:
        raise
    except msgpack.exceptions.StackError as exc:
        raise TooDeep(nesting_error()) from exc
    except (msgpack.exceptions.ExtraData, msgpack.exceptions.UnpackException, ValueError) as exc:
        raise InvalidRequest(f"body is not valid msgpack: {_msgpack_problem(exc)}") from exc
