"""``create_app(settings)``: the FastAPI application, with models loaded in its lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from typing import Any

import numpy as np
from fastapi import FastAPI

from . import __version__
from .api import health, live, metrics, models, playground, speech, timed_speech, voices
from .api.auth import ApiKeyMiddleware, KeyRing
from .api.errors import SafeJSONResponse, install_error_handlers
from .api.limits import ClientLimits
from .api.protocol import stream_event_schemas
from .api.state import ServerState
from .constants import SAMPLE_RATE
from .engine.runtime.engine import Engine
from .engine.runtime.warmup import warm_up
from .settings import Settings
from .telemetry.metrics import ServerMetrics
from .telemetry.middleware import RequestTelemetry
from .voices.store import VoiceStore

log = logging.getLogger(__name__)


def server_options(settings: Settings) -> dict[str, Any]:
    """What uvicorn must be told for the app's limits (``uvicorn.run``/``uvicorn.Config``
    keywords): WebSocket messages past twice QWEN_TTS_WS_MAX_MESSAGE_BYTES are refused by the
    protocol itself (close 1009) before they are read; those in between get the app's own
    ``error`` event saying why (api/live.py)."""
    return {"ws_max_size": 2 * settings.ws_max_message_bytes}


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Pass ``engine`` to reuse models already loaded (the CLI loads them before binding)."""
    settings = settings or Settings()

    state = ServerState(settings=settings, metrics=ServerMetrics(), engine=engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal engine
        state.voices = await asyncio.to_thread(VoiceStore, settings.voices_dir)
        unowned = await asyncio.to_thread(state.voices.unowned)
        if settings.keys_required and unowned and not settings.share_unowned_voices:
            log.warning(
                "%d saved voices have no owner (saved without keys): only admin keys see them "
                "(QWEN_TTS_ADMIN_API_KEYS), unless QWEN_TTS_SHARE_UNOWNED_VOICES=true shares them with every key",
                unowned,
            )
        if engine is None:
            from .engine.models.loading import load_models, with_profile

            profiled = await asyncio.to_thread(with_profile, settings)
            models = await asyncio.to_thread(load_models, profiled)
            engine = Engine.from_settings(models, profiled)
        state.engine = engine
        if settings.aligner_model_path is not None:
            await asyncio.to_thread(_load_aligner, state, settings.aligner_model_path)
        state.metrics.watch_engine(engine)
        state.readiness.models = [model.name for model in engine.models.values()]
        # Warm up in the background: /health answers meanwhile, /ready once it is done.
        warming = asyncio.create_task(warm_up(engine, state.readiness))
        try:
            yield
        finally:
            warming.cancel()
            with suppress(asyncio.CancelledError):
                await warming
            engine.close()
            if state.aligner is not None:
                state.aligner.close()

    app = FastAPI(title="qwen-tts-api", version=__version__, lifespan=lifespan, default_response_class=SafeJSONResponse)
    app.state.server = state  # read only through api/state.py's typed dependencies
    install_error_handlers(app)
    # Inside the key check (a caller without a key holds nothing), outside everything else.
    app.add_middleware(ClientLimits, settings=settings)
    if settings.keys_required:
        app.add_middleware(ApiKeyMiddleware, keys=KeyRing(settings))
    # Outermost, so every response (401s and 500s included) carries its request id and is logged.
    app.add_middleware(RequestTelemetry, metrics=state.metrics)
    app.include_router(speech.router)
    app.include_router(timed_speech.router)
    app.include_router(live.router)
    app.include_router(voices.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(playground.router)
    _document_what_is_sent(app)
    return app


def _load_aligner(state: ServerState, value: str) -> None:
    """The word-timing aligner, on the models' device, warmed with one alignment. A failure
    is logged and reported (/ready's ``aligner_error``): timings are then estimated."""
    from .engine.models.aligner import WordAligner
    from .engine.models.loading import resolve_device

    device = resolve_device(state.settings.device)
    try:
        aligner = WordAligner.load(value, device, "bfloat16" if device.startswith("cuda") else "float32")
        aligner.align(np.zeros(SAMPLE_RATE, np.float32), ["warm"])
    except (ValueError, OSError) as exc:  # AlignerError, or the Hub's ModelDirectoryError
        state.aligner_error = str(exc)
        log.error("word timings will be estimated: %s", exc)
        return
    state.aligner = aligner


def _document_what_is_sent(app: FastAPI) -> None:
    """Make /openapi.json match the wire: add the SSE event models the speech route refers to,
    and drop FastAPI's automatic 422 responses (validation errors are sent as 400 in the
    OpenAI envelope, see api/errors.py)."""
    build = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build()
            schemas = schema.setdefault("components", {}).setdefault("schemas", {})
            schemas.update(stream_event_schemas())
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schemas.pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
