"""``create_app(settings)``: the FastAPI application, with models loaded in its lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from fastapi import FastAPI

from . import __version__
from .api import health, live, metrics, models, playground, speech, voices
from .api.auth import ApiKeyMiddleware
from .api.errors import install_error_handlers
from .api.protocol import stream_event_schemas
from .api.state import ServerState
from .engine.runtime.engine import Engine
from .engine.runtime.jobs import EngineConfig
from .engine.runtime.warmup import warm_up
from .settings import Settings
from .telemetry.metrics import ServerMetrics
from .telemetry.middleware import RequestTelemetry
from .voices.store import VoiceStore


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Pass ``engine`` to reuse models already loaded (the CLI loads them before binding)."""
    settings = settings or Settings()

    state = ServerState(settings=settings, metrics=ServerMetrics(), engine=engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nonlocal engine
        state.voices = await asyncio.to_thread(VoiceStore, settings.voices_dir)
        if engine is None:
            from .engine.models.loading import load_models

            models = await asyncio.to_thread(load_models, settings)
            engine = Engine(models, EngineConfig.from_settings(settings))
        state.engine = engine
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

    app = FastAPI(title="qwen-tts-api", version=__version__, lifespan=lifespan)
    app.state.server = state  # read only through api/state.py's typed dependencies
    install_error_handlers(app)
    if settings.api_keys:
        app.add_middleware(ApiKeyMiddleware, keys=settings.api_keys)
    # Outermost, so every response (401s and 500s included) carries its request id and is logged.
    app.add_middleware(RequestTelemetry, metrics=state.metrics)
    app.include_router(speech.router)
    app.include_router(live.router)
    app.include_router(voices.router)
    app.include_router(models.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(playground.router)
    _document_what_is_sent(app)
    return app


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
