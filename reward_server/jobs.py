"""``POST /v1/jobs`` -> id and ``GET /v1/jobs/{id}``: scoring for callers that poll.

A job runs ``ScoringService.score`` in the background on the front; its record (pending, done
with the answer, or failed with status and reason) lives in a ``JobStore``: in memory for the
embedded backend, in Redis for the queue backend, so any front can answer the poll.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal, Protocol

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from reward_server.auth import CURRENT_CALLER
from reward_server.http_io import read_score_request, render
from reward_server.limits import QueueFull, ServerBusy
from reward_server.openapi import answers, msgpack_too, retry_after
from reward_server.service import RewardUnavailable, ScoringService, within
from shared.protocol import InvalidRequest, ScoreRequest, ScoreResponse, pack, unpack
from shared.queue import messages as q


class JobCreated(BaseModel):
    """Answer to ``POST /v1/jobs``: poll ``GET /v1/jobs/{id}``."""

    id: str
    status: Literal["pending"]


class JobRecord(BaseModel):
    """State of a job: pending, done with its ``result``, or failed with the ``code`` and ``error``
    that ``POST /v1/score`` would have answered."""

    id: str
    status: Literal["pending", "done", "failed"]
    caller: str
    created: float = Field(description="unix time")
    samples: int
    finished: float | None = Field(default=None, description="unix time")
    result: ScoreResponse | None = None
    code: int | None = Field(default=None, description="HTTP status the request would have got")
    error: str | None = None


class JobStore(Protocol):
    async def put(self, job_id: str, record: dict[str, Any], ttl_s: float) -> None: ...
    async def get(self, job_id: str) -> dict[str, Any] | None: ...


class MemoryJobStore:
    """Records in this process (embedded backend); expired ones are dropped on access."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[float, dict[str, Any]]] = {}
        self._puts = 0

    async def put(self, job_id: str, record: dict[str, Any], ttl_s: float) -> None:
        now = time.monotonic()
        self._puts += 1
        if self._puts % 256 == 0:  # prune now and then, not on every write
            self._records = {k: v for k, v in self._records.items() if v[0] > now}
        self._records[job_id] = (now + ttl_s, record)

    async def get(self, job_id: str) -> dict[str, Any] | None:
        entry = self._records.get(job_id)
        return entry[1] if entry and entry[0] > time.monotonic() else None


class RedisJobStore:
    """Records in Redis under ``{p}:task:{id}`` (msgpack), shared by every front."""

    def __init__(self, client: Any):
        self.r = client

    async def put(self, job_id: str, record: dict[str, Any], ttl_s: float) -> None:
        await self.r.set(q.task_key(job_id), pack(record), px=int(ttl_s * 1000))

    async def get(self, job_id: str) -> dict[str, Any] | None:
        raw = await self.r.get(q.task_key(job_id))
        return None if raw is None else unpack(raw)


def _failure(exc: BaseException, timeout_s: float) -> tuple[int, str]:
    if isinstance(exc, InvalidRequest):
        return 422, str(exc)
    if isinstance(exc, QueueFull):
        return 429, str(exc)
    if isinstance(exc, ServerBusy):
        return 503, str(exc)
    if isinstance(exc, RewardUnavailable):
        return 503, str(exc)
    if isinstance(exc, TimeoutError):
        return 504, f"scores not ready within {timeout_s} s"
    return 500, f"internal error: {exc!r}"


def make_jobs_router(
    service: ScoringService, store: JobStore, max_body_bytes: int, timeout_s: float, ttl_s: float = 3600.0,
    retry_after_s: float = 1.0,
) -> APIRouter:
    """The two job routes, bound to a service and a record store."""
    router = APIRouter(tags=["jobs"])
    running: set[asyncio.Task] = set()

    async def _run(job_id: str, request: ScoreRequest, base: dict[str, Any]) -> None:
        try:
            answer = await within(service.score(request), timeout_s)
            record = {**base, "status": "done", "result": answer.model_dump(mode="json")}
        except Exception as exc:
            code, message = _failure(exc, timeout_s)
            record = {**base, "status": "failed", "code": code, "error": message}
        record["finished"] = time.time()
        await store.put(job_id, record, ttl_s)

    @router.post("/v1/jobs", status_code=202, response_model=JobCreated,
                 summary="Queue a score request; poll GET /v1/jobs/{id}",
                 responses=answers(400, 401, 413, 415, 422, 429, 503))
    async def submit(request: Request) -> JSONResponse:
        body = await read_score_request(request, max_body_bytes)
        try:
            service.validate(body)
        except InvalidRequest as exc:
            raise HTTPException(422, str(exc)) from exc
        except RewardUnavailable as exc:
            raise HTTPException(503, str(exc), headers=retry_after(retry_after_s)) from exc
        limiter = getattr(service.backend, "limiter", None)
        if limiter is not None:  # refuse now (429) rather than fail the job later
            limiter.check(CURRENT_CALLER.get(), len(body.samples))
        job_id = q.new_id()
        base = {"id": job_id, "caller": CURRENT_CALLER.get(), "created": time.time(), "samples": len(body.samples)}
        await store.put(job_id, {**base, "status": "pending"}, ttl_s)
        task = asyncio.create_task(_run(job_id, body, base))  # copies the context: the caller's limits apply
        running.add(task)
        task.add_done_callback(running.discard)
        return JSONResponse({"id": job_id, "status": "pending"}, status_code=202)

    @router.get("/v1/jobs/{job_id}", response_model=JobRecord, summary="State of a queued job; its ScoreResponse once done",
                responses={**msgpack_too("the job's record"), **answers(401, 404)})
    async def poll(job_id: str, request: Request) -> Any:
        record = await store.get(job_id)
        if record is None or record.get("caller") != CURRENT_CALLER.get():  # others' jobs do not exist
            raise HTTPException(404, f"no job {job_id!r} (unknown, expired after {ttl_s:g}s, or not yours)")
        if record["status"] == "pending" and time.time() - record["created"] > timeout_s + 60:
            record = {**record, "status": "failed", "code": 504, "error": "the front running this job went away"}
        return render(request, record)

    return router
