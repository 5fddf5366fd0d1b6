"""The Redis queue between fronts and reward workers: key names, settings and messages.

Every Redis key and stream the system uses is named here, and nowhere else. Messages are
msgpack dicts (``shared.protocol.pack``/``unpack``), never pickles.

Layout (``{p}`` is ``PREFIX``):

* ``{p}:jobs:{reward}`` -- one stream per reward; workers hosting that reward read it through
  the consumer group ``GROUP``. An entry's field ``FIELD`` holds a packed ``Job``.
* ``{p}:blob:{request}`` -- a list with one packed wire sample per entry, stored once per
  request and referenced by every job (``lo``/``hi`` slice); expires after ``blob_ttl_s``.
* ``{p}:result:{job}`` -- the packed ``JobResult`` (first writer wins), kept ``result_ttl_s``.
* ``{p}:reply:{front}`` -- a stream per front (or queue client) on which workers announce
  results, so a waiting caller wakes up at once.
* ``{p}:workers:{reward}`` -- sorted set of worker ids scored by their last heartbeat.
* ``{p}:rewards`` -- hash reward name -> packed description (version, max_batch_size) that
  workers publish, so a queue client knows how to cut requests and label versions.
* ``{p}:dead:{reward}`` -- dead-letter stream: jobs given up after ``max_attempts``.
* ``{p}:task:{id}`` -- record of an asynchronous ``POST /v1/jobs`` task.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import Field, model_validator

from shared.config import StrictModel
from shared.protocol import pack, unpack

PREFIX = "psr"
GROUP = "psr-workers"
FIELD = "m"  # the single field of every stream entry
MESSAGE_VERSION = 1


def jobs_stream(reward: str) -> str:
    return f"{PREFIX}:jobs:{reward}"


def blob_key(request_id: str) -> str:
    return f"{PREFIX}:blob:{request_id}"


def result_key(job_id: str) -> str:
    return f"{PREFIX}:result:{job_id}"


def reply_stream(front_id: str) -> str:
    return f"{PREFIX}:reply:{front_id}"


def workers_key(reward: str) -> str:
    return f"{PREFIX}:workers:{reward}"


def dead_stream(reward: str) -> str:
    return f"{PREFIX}:dead:{reward}"


def task_key(task_id: str) -> str:
    return f"{PREFIX}:task:{task_id}"


REWARDS_KEY = f"{PREFIX}:rewards"


def new_id() -> str:
    """A random id for requests, jobs, fronts and tasks."""
    return uuid.uuid4().hex


class QueueSettings(StrictModel):
    """How fronts and workers use Redis. Both sides must agree (same ``rewards.yaml``)."""

    visibility_timeout_s: float = Field(
        default=30.0, gt=0, description="a job held this long by a silent worker is claimed by another"
    )
    heartbeat_interval_s: float = Field(
        default=2.0, gt=0, description="how often workers announce themselves and renew their jobs"
    )
    worker_ttl_s: float = Field(default=6.0, gt=0, description="a worker silent this long counts as dead")
    max_attempts: int = Field(
        default=3, ge=1, le=100, description="deliveries of a job (crashes included) before it is dead-lettered"
    )
    blob_ttl_s: float = Field(default=3600.0, gt=0, description="how long a request's images stay in Redis")
    result_ttl_s: float = Field(default=3600.0, gt=0, description="how long results stay readable")
    outage_grace_s: float = Field(
        default=10.0, gt=0, description="a waiting caller gets an error after Redis is unreachable this long"
    )
    max_stream_length: int = Field(default=100_000, ge=100, description="approximate cap of reply/dead streams")

    @model_validator(mode="after")
    def _consistent(self) -> QueueSettings:
        if self.visibility_timeout_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                "queue.visibility_timeout_s must be at least 3 x heartbeat_interval_s, or live workers "
                "would lose their jobs between two lease renewals"
            )
        if self.worker_ttl_s < 2 * self.heartbeat_interval_s:
            raise ValueError("queue.worker_ttl_s must be at least 2 x heartbeat_interval_s")
        return self


@dataclass
class Job:
    """One reward on a slice ``[lo, hi)`` of one request's samples."""

    id: str
    request: str
    reward: str
    lo: int
    hi: int
    reply: str  # stream to announce the result on
    enqueued: float = field(default_factory=time.time)  # unix time, for latency metrics
    deadline: float = 0.0  # unix time after which nobody waits for the result (0: none)

    @property
    def size(self) -> int:
        return self.hi - self.lo

    def encode(self) -> bytes:
        return pack({"v": MESSAGE_VERSION, **asdict(self)})

    @classmethod
    def decode(cls, data: bytes) -> Job:
        msg = _checked(data, "job")
        try:
            return cls(**{k: msg[k] for k in cls.__dataclass_fields__ if k in msg})
        except (KeyError, TypeError) as exc:
            raise MessageError(f"malformed job message: {exc!r}") from exc


@dataclass
class JobResult:
    """Per-sample outcome of a job: ``scores[i]`` is None where ``errors[i]`` says why."""

    id: str
    request: str
    reward: str
    scores: list[float | None]
    errors: list[str | None]
    details: list[dict[str, Any] | None]
    version: str = ""
    worker: str = ""
    attempts: int = 1
    enqueued: float = 0.0
    finished: float = field(default_factory=time.time)

    @classmethod
    def failure(cls, job: Job, message: str, worker: str = "", attempts: int = 1) -> JobResult:
        """Every sample of ``job`` failed for the same reason."""
        n = job.size
        return cls(
            job.id, job.request, job.reward, [None] * n, [message] * n, [None] * n,
            worker=worker, attempts=attempts, enqueued=job.enqueued,
        )  # fmt: skip

    def encode(self) -> bytes:
        return pack({"v": MESSAGE_VERSION, **asdict(self)})

    @classmethod
    def decode(cls, data: bytes) -> JobResult:
        msg = _checked(data, "result")
        try:
            result = cls(**{k: msg[k] for k in cls.__dataclass_fields__ if k in msg})
        except (KeyError, TypeError) as exc:
            raise MessageError(f"malformed result message: {exc!r}") from exc
        if not (len(result.scores) == len(result.errors) == len(result.details)):
            raise MessageError(f"result {result.id} has mismatched score/error/detail lengths")
        return result


class MessageError(ValueError):
    """A queue message that cannot be decoded (wrong version, missing fields)."""


def _checked(data: bytes, what: str) -> dict[str, Any]:
    try:
        msg = unpack(data)
    except ValueError as exc:
        raise MessageError(f"{what} message is not valid msgpack: {exc}") from exc
    if not isinstance(msg, dict) or msg.get("v") != MESSAGE_VERSION:
        raise MessageError(f"{what} message has version {msg.get('v') if isinstance(msg, dict) else '?'}, "
                           f"expected {MESSAGE_VERSION} (front and workers must run the same release)")
    return msg


def _wire_image(image: Any) -> Any:
    return image.model_dump() if hasattr(image, "model_dump") else image


def encode_wire_sample(sample: Any) -> bytes:
    """Pack one ``SampleIn`` (images kept as sent: PNG/JPEG bytes or raw) for the blob list."""
    return pack({
        "image": _wire_image(sample.image),
        "prompt": sample.prompt,
        "subjects": [{"category": s.category, "reference": None if s.reference is None else _wire_image(s.reference)}
                     for s in sample.subjects],
        "metadata": sample.metadata,
    })  # fmt: skip


def pack_description(desc: dict[str, Any]) -> bytes:
    return pack(desc)


def unpack_description(data: bytes) -> dict[str, Any]:
    desc = unpack(data)
    if not isinstance(desc, dict):
        raise MessageError("reward description is not a mapping")
    return desc
