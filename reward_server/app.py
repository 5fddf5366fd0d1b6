"""The FastAPI front of the reward server: routes only.

Validation, decoding and fan-out live in ``service.py``; batching in ``batching.py``; where
rewards run is the backend's business (in-process batchers, or Redis workers).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response

from reward_server.config import ServerConfig
from reward_server.http_io import read_score_request, render
from reward_server.limits import PixelBudget, ServerBusy
from reward_server.metrics import MetricsMiddleware, ServerMetrics
from reward_server.openapi import PrometheusText, answers, install_schema, msgpack_too, retry_after
from reward_server.registry import build_rewards, load_rewards
from reward_server.rewards.base import Reward
from reward_server.service import Backend, LocalBackend, RewardUnavailable, ScoringService, within
from shared import __version__
from shared.protocol import InvalidRequest, ScoreRequest, ScoreResponse

log = logging.getLogger(__name__)


@dataclass
class AppState:
    """Everything the routes need, kept on ``app.state.psr``."""

    config: ServerConfig
    rewards: dict[str, Reward]
    service: ScoringService
    metrics: ServerMetrics
    load_error: str | None = None
    on_load_failure: Callable[[str], None] | None = None
    loading: asyncio.Task | None = field(default=None, repr=False)


async def _load_models(state: AppState) -> None:
    backend = state.service.backend
    try:
        if isinstance(backend, LocalBackend):
            await backend.load()  # on each reward's model thread
        else:
            await asyncio.to_thread(load_rewards, {n: r for n, r in state.rewards.items() if not r.loaded})
        log.info("all %d rewards loaded: %s", len(state.rewards), ", ".join(state.rewards))
    except Exception as exc:
        state.load_error = str(exc)
        log.error("start-up failed: %s", exc)
        if state.on_load_failure is not None:
            state.on_load_failure(state.load_error)


def create_app(
    config: ServerConfig,
    rewards: dict[str, Reward] | None = None,
    backend: Backend | None = None,
    load_models: bool = True,
    metrics: ServerMetrics | None = None,
) -> FastAPI:
    """Build the app. By default it hosts every configured reward in-process and loads them
    in the background at start-up (``/readyz`` answers 200 once they are loaded)."""
    rewards = rewards if rewards is not None else build_rewards(config)
    metrics = metrics or ServerMetrics()
    backend = backend or LocalBackend(rewards, observer_factory=metrics.batch_observer)
    limits = config.limits
    service = ScoringService(
        rewards,
        backend,
        limits=limits.image_limits(),
        max_samples_per_request=limits.max_samples_per_request,
        budget=PixelBudget(limits.max_pixels_in_flight, limits.busy_wait_s, limits.retry_after_s),
    )
    state = AppState(config=config, rewards=rewards, service=service, metrics=metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if load_models:
            state.loading = asyncio.create_task(_load_models(state))
        yield
        if state.loading is not None and not state.loading.done():
            state.loading.cancel()
        await backend.close()

    app = FastAPI(
        title="PSR reward service",
        version=__version__,
        description="Scores generated images with configured reward models. See the README for the wire forms.",
        lifespan=lifespan,
    )
    app.state.psr = state
    app.add_middleware(MetricsMiddleware, metrics=metrics)

    @app.exception_handler(ServerBusy)
    async def _busy(_request: Request, exc: ServerBusy) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers=retry_after(exc.retry_after_s))

    @app.post(
        "/v1/score",
        response_model=ScoreResponse,
        summary="Score samples with weighted rewards",
        responses={**msgpack_too("the scores"), **answers(400, 401, 413, 415, 422, 429, 503, 504)},
    )
    async def score(request: Request) -> Response:
        """Body: JSON or msgpack ScoreRequest. Answer: ScoreResponse (msgpack if `Accept: application/msgpack`)."""
        body = await read_score_request(request, config.limits.max_body_bytes)
        answer = await run_scoring(state, body)
        return render(request, answer)

    @app.get("/v1/rewards", summary="Hosted rewards: inputs, models, versions", responses=answers(401))
    async def list_rewards() -> dict:
        ready = backend.ready()
        return {
            "rewards": [{**r.describe(), "ready": ready.get(name, False)} for name, r in rewards.items()],
            "server_version": __version__,
        }

    @app.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", summary="Readiness: 200 once every reward can be computed",
             responses={503: {"description": "not ready: `rewards` and `error` say what is missing"}})
    async def readyz() -> JSONResponse:
        ready = backend.ready()
        ok = state.load_error is None and all(ready.values())
        error = state.load_error or (None if ok else backend.unavailable(list(ready)))
        body = {"ready": ok, "rewards": ready, "error": error}
        if hasattr(backend, "workers"):  # queue backend: live workers per reward
            body["workers"] = backend.workers()
        return JSONResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", summary="Prometheus metrics", response_class=PrometheusText, responses=answers(401))
    async def prometheus() -> PrometheusText:
        if isinstance(backend, LocalBackend):
            for name, depth in backend.queued().items():
                metrics.queue_depth.labels(name).set(depth)
        return PrometheusText(metrics.render())

    install_schema(app)
    return app


async def run_scoring(state: AppState, request: ScoreRequest) -> ScoreResponse:
    """Score with the server's timeout, mapping failures to HTTP errors and recording metrics."""
    try:
        answer = await within(state.service.score(request), state.config.request_timeout_s)
    except InvalidRequest as exc:
        raise HTTPException(422, str(exc)) from exc
    except RewardUnavailable as exc:
        raise HTTPException(503, str(exc), headers=retry_after(state.config.limits.retry_after_s)) from exc
    except TimeoutError as exc:
        raise HTTPException(504, f"scores not ready within {state.config.request_timeout_s} s") from exc
    for name, column in answer.scores.items():
        failed = sum(v is None for v in column)
        state.metrics.record_results(name, len(column) - failed, failed)
    return answer
