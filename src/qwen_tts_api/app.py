"""``create_app(settings)``: the FastAPI application, with models loaded in its lifespan."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI

from . import __version__
from .api import health, models, speech, voices
from .api.errors import install_error_handlers
from .engine.synthesis import Engine, EngineConfig
from .settings import Settings
from .voices.store import VoiceStore


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Pass ``engine`` to reuse models already loaded (the CLI loads them before binding)."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.voices = await asyncio.to_thread(VoiceStore, settings.voices_dir)
        if app.state.engine is None:
            from .engine.loading import load_models

            models = await asyncio.to_thread(load_models, settings)
            app.state.engine = Engine(models, EngineConfig.from_settings(settings))
        try:
            yield
        finally:
            app.state.engine.close()

    app = FastAPI(title="qwen-tts-api", version=__version__, lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.voices = None  # the VoiceStore, opened in the lifespan
    install_error_handlers(app)
    app.include_router(speech.router)
    app.include_router(voices.router)
    app.include_router(models.router)
    app.include_router(health.router)
    return app
