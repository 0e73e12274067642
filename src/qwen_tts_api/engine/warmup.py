"""One short synthesis through each loaded model before the server says it is ready."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from .synthesis import Engine, ReferenceAudio, SpeechJob

log = logging.getLogger(__name__)

WARMUP_TEXT = "Hello."


@dataclass
class Readiness:
    models: list[str] = field(default_factory=list)
    warmed_up: bool = False
    error: str | None = None

    @property
    def ready(self) -> bool:
        return self.warmed_up and self.error is None


def _warmup_reference() -> ReferenceAudio:
    t = np.arange(24000) / 24000  # one second of a gliding tone stands in for a voice
    return ReferenceAudio(waveform=(0.2 * np.sin(2 * np.pi * (150 + 50 * t) * t)).astype(np.float32))


async def warm_up(engine: Engine, readiness: Readiness) -> None:
    try:
        for kind, model in engine.models.items():
            if kind == "customvoice":
                job = SpeechJob(text=WARMUP_TEXT, language="Auto", speaker=model.speakers[0] if model.speakers else None)
            else:
                job = SpeechJob(text=WARMUP_TEXT, language="Auto", reference=_warmup_reference())
            audio = await engine.start(kind, job).collect()
            log.info("warm-up of %s done (%.2f s of audio)", model.name, audio.size / 24000)
        readiness.warmed_up = True
    except Exception as exc:  # noqa: BLE001 - reported by /ready, the server keeps running
        log.exception("warm-up synthesis failed")
        readiness.error = f"warm-up synthesis failed: {type(exc).__name__}"
