"""The one door the API goes through: what a route may ask of the engine.

Routes depend on ``SpeechEngine`` (reached through ``api/state.py``'s typed dependencies),
never on the concrete ``runtime.engine.Engine``, its scheduler or its batches; an
import-linter contract (pyproject.toml) keeps it so.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, Protocol

import numpy as np

from ..constants import ModelKind
from ..voices.prompt import ClonePrompt
from .models.loading import LoadedModel
from .runtime.jobs import SpeechJob
from .runtime.live_text import LiveText
from .runtime.stream import SynthesisStream


class SpeechEngine(Protocol):
    @property
    def models(self) -> Mapping[ModelKind, LoadedModel]: ...

    def model(self, kind: ModelKind) -> LoadedModel | None: ...

    @property
    def failure(self) -> str | None:
        """Why the engine can no longer generate (restart the process), or None."""
        ...

    def step_state(self) -> Literal["eager", "compiled"]:
        """How the steps run: ``compiled`` where the compiled graphs run (``QWEN_TTS_COMPILE``), else ``eager``."""
        ...

    def start(self, kind: ModelKind, job: SpeechJob) -> SynthesisStream:
        """Queue a speech job (EngineBusy: the queue is full; EngineUnavailable: stopped)."""
        ...

    def live_text(self) -> LiveText:
        """A channel for a live turn's text, to put in ``SpeechJob.live``."""
        ...

    def start_live(self, kind: ModelKind, job: SpeechJob) -> SynthesisStream:
        """Queue a live turn (its text arrives through ``job.live``)."""
        ...

    async def clone_prompt(self, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
        """The Base model's clone prompt for reference audio (24 kHz mono)."""
        ...
