"""Liveness and readiness.

``/health`` says the process can serve: HTTP is up and the engine can still generate. If
the engine's scheduler has stopped (e.g. the device became unusable), it answers 503 with
the reason, so a liveness probe restarts the process instead of keeping a zombie.
``/ready`` says it is worth sending speech: the models are loaded and a warm-up has gone
through each of them (the first request after loading is otherwise slow: allocator,
kernels, caches), and the engine has not failed since.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from .protocol import HealthStatus, ReadyStatus
from .state import ServerState, StateDep

router = APIRouter()


def _engine_failure(state: ServerState) -> str | None:
    return None if state.engine is None else state.engine.failure


@router.get("/health", response_model=HealthStatus, responses={503: {"model": HealthStatus}})
async def health(state: StateDep) -> JSONResponse:
    failure = _engine_failure(state)
    body = HealthStatus(status="failed", error=failure) if failure else HealthStatus(status="ok")
    return JSONResponse(body.model_dump(exclude_none=True), status_code=503 if failure else 200)


@router.get("/ready", response_model=ReadyStatus, responses={503: {"model": ReadyStatus}})
async def ready(state: StateDep) -> JSONResponse:
    readiness = state.readiness
    failure = _engine_failure(state) or readiness.error
    body = ReadyStatus(
        status="ready" if readiness.ready else "starting",
        models=readiness.models,
        warmed_up=readiness.warmed_up,
        word_timings="aligner" if state.aligner is not None else "estimate",
        aligner=state.aligner.name if state.aligner is not None else None,
        aligner_error=state.aligner_error,
        step=state.engine.step_state() if state.engine is not None else "eager",
    )
    if failure:
        body.status, body.error = "failed", failure
    ok = readiness.ready and not failure
    return JSONResponse(body.model_dump(exclude_none=True), status_code=200 if ok else 503)
