"""Liveness and readiness.

``/health`` says the process is up and serving HTTP. ``/ready`` says it is worth sending
speech: the models are loaded and a warm-up synthesis has gone through each of them (the
first request after loading is otherwise slow: allocator, kernels, caches).
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    readiness = request.app.state.readiness
    body = {"status": "ready" if readiness.ready else "starting", "models": readiness.models,
            "warmed_up": readiness.warmed_up}
    if readiness.error:
        body.update(status="failed", error=readiness.error)
    return JSONResponse(body, status_code=200 if readiness.ready else 503)
