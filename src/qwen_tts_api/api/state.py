"""What the routes share, typed, and the FastAPI dependencies that hand it to them.

The app keeps one ``ServerState`` (``app.state.server``); this module is the only place that
reads it, so every route says in its signature what it uses (``EngineDep``, ``SettingsDep``,
...) and a type checker can follow it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ..engine.interface import SpeechEngine
from ..engine.models.aligner import WordAligner
from ..engine.runtime.readiness import Readiness
from ..settings import Settings
from ..telemetry.metrics import ServerMetrics
from ..voices.store import EVERYONE, NOBODY, CallerVoices, Viewer, VoiceStore


@dataclass
class ServerState:
    settings: Settings
    metrics: ServerMetrics
    readiness: Readiness = field(default_factory=Readiness)
    engine: SpeechEngine | None = None  # set in the app's lifespan, before the first request
    voices: VoiceStore | None = None  # opened in the app's lifespan
    aligner: WordAligner | None = None  # ALIGNER_MODEL_PATH, loaded in the app's lifespan (else estimates)
    aligner_error: str | None = None  # why the configured aligner is not in use

    def require_engine(self) -> SpeechEngine:
        if self.engine is None:
            raise RuntimeError("the engine is not started (the app's lifespan has not run)")
        return self.engine

    def require_voices(self) -> VoiceStore:
        if self.voices is None:
            raise RuntimeError("the voice store is not open (the app's lifespan has not run)")
        return self.voices


def server_state(connection: HTTPConnection) -> ServerState:
    """The app's ``ServerState`` (HTTP requests and WebSockets alike)."""
    state = connection.app.state.server
    assert isinstance(state, ServerState)
    return state


def _engine(connection: HTTPConnection) -> SpeechEngine:
    return server_state(connection).require_engine()


def _settings(connection: HTTPConnection) -> Settings:
    return server_state(connection).settings


VIEWER_STATE = "viewer"  # where api/auth.py keeps the caller's Viewer in scope["state"]


def viewer_of(connection: HTTPConnection) -> Viewer:
    """Whose saved voices this caller sees: its key's (api/auth.py), or every voice when
    the server has no keys. A keyed server never falls back to every voice."""
    viewer = connection.scope.get("state", {}).get(VIEWER_STATE)
    if isinstance(viewer, Viewer):
        return viewer
    return NOBODY if server_state(connection).settings.keys_required else EVERYONE


def _voices(connection: HTTPConnection) -> CallerVoices:
    """The saved voices this caller sees (and saves as its own)."""
    return server_state(connection).require_voices().seen_by(viewer_of(connection))


def _metrics(connection: HTTPConnection) -> ServerMetrics:
    return server_state(connection).metrics


def _readiness(connection: HTTPConnection) -> Readiness:
    return server_state(connection).readiness


StateDep = Annotated[ServerState, Depends(server_state)]
EngineDep = Annotated[SpeechEngine, Depends(_engine)]
SettingsDep = Annotated[Settings, Depends(_settings)]
VoicesDep = Annotated[CallerVoices, Depends(_voices)]
MetricsDep = Annotated[ServerMetrics, Depends(_metrics)]
ReadinessDep = Annotated[Readiness, Depends(_readiness)]
