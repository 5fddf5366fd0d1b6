"""What turns the app into a shared front: API keys, per-caller limits, job routes, the Redis backend.

``install_front`` is called by ``psr serve`` after ``create_app``; each piece is optional so the
embedded single-machine setup keeps working without keys or Redis.
"""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from reward_server.auth import ApiKeys, AuthMiddleware, load_api_keys
from reward_server.jobs import MemoryJobStore, RedisJobStore, make_jobs_router
from reward_server.limits import CallerLimiter, LimitedBackend, QueueFull
from reward_server.openapi import retry_after
from reward_server.queue.backend import RedisBackend
from reward_server.queue.metrics import FrontQueueCollector

log = logging.getLogger(__name__)


def install_front(app: FastAPI, api_keys: dict[str, str] | None = None) -> None:
    """Add auth (when keys are configured), per-caller limits, the job routes and, for a
    ``RedisBackend``, its start-up. ``api_keys`` defaults to ``PSR_API_KEYS``/``PSR_API_KEYS_FILE``."""
    state = app.state.psr
    config, service = state.config, state.service
    keys = load_api_keys() if api_keys is None else api_keys
    if keys:
        app.add_middleware(AuthMiddleware, keys=ApiKeys(keys))
    else:
        log.warning("no API keys configured (%s): every caller is accepted", "PSR_API_KEYS")
    backend = service.backend
    limiter = None
    if config.limits.max_queued_samples_per_caller:
        limiter = CallerLimiter(config.limits.max_queued_samples_per_caller, config.limits.retry_after_s)
        service.backend = LimitedBackend(backend, limiter)
    if isinstance(backend, RedisBackend):
        state.metrics.registry.register(FrontQueueCollector(backend, limiter))

    @app.exception_handler(QueueFull)
    async def _queue_full(_request: Request, exc: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=429, headers=retry_after(exc.retry_after_s))

    store: Any = RedisJobStore(backend.producer.r) if isinstance(backend, RedisBackend) else MemoryJobStore()
    app.include_router(make_jobs_router(service, store, config.limits.max_body_bytes, config.request_timeout_s,
                                        config.queue.result_ttl_s, config.limits.retry_after_s))
    if isinstance(backend, RedisBackend):
        inner = app.router.lifespan_context

        @asynccontextmanager
        async def lifespan(a: FastAPI):  # read the worker registry before the first request
            await backend.start()
            async with inner(a) as value:
                yield value

        app.router.lifespan_context = lifespan
