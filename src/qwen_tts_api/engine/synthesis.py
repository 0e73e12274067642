"""The engine's front: one request in, an async stream of 24 kHz audio chunks out.

All model work runs on the scheduler's thread (``scheduler.py``), never on the event loop,
so the HTTP server (and `/health`) stays responsive. A request can be cancelled between
any two frames, which frees its place in the batch.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import numpy as np

from .admission import Admission
from .clone import ClonePrompt
from .loading import LoadedModel
from .scheduler import END, Scheduler

@dataclass(frozen=True)
class ReferenceAudio:
    """Decoded reference audio for cloning: mono float32 at 24 kHz."""

    waveform: np.ndarray
    transcript: str | None = None


@dataclass(frozen=True)
class SpeechJob:
    text: str
    language: str  # as the model names it, e.g. "English" or "Auto"
    speaker: str | None = None  # CustomVoice
    instructions: str | None = None  # CustomVoice; callers drop it for 0.6B models
    reference: ReferenceAudio | None = None  # Base, cloning from audio sent with the request
    voice_prompt: ClonePrompt | None = None  # Base, a saved voice's stored prompt


@dataclass(frozen=True)
class EngineConfig:
    first_chunk_frames: int = 3
    max_chunk_frames: int = 48
    max_queue: int = 16  # requests waiting beyond those in the batch
    request_timeout: float = 300.0  # seconds from admission to the last audio
    max_batch: int = 8  # requests generated together, per model
    prompt_cache_size: int = 32  # clone prompts of inline reference audio kept for reuse

    @classmethod
    def from_settings(cls, settings) -> "EngineConfig":
        return cls(settings.stream_first_frames, settings.stream_max_chunk_frames, settings.max_queue,
                   settings.request_timeout_seconds, settings.max_batch, settings.prompt_cache_size)


@dataclass
class Usage:
    input_tokens: int = 0
    output_frames: int = 0


class SynthesisStream:
    """Audio chunks of one request, handed from the worker thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self.deadline = time.monotonic() + timeout
        self.started = False  # set when the worker takes it up
        self.usage = Usage()

    # --- worker side ---
    def emit(self, item: object) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def should_stop(self) -> bool:
        return self.cancelled or self.expired

    # --- event-loop side ---
    def cancel(self) -> None:
        """Stop generating after the current frame (or never start, if still queued)."""
        self._cancelled.set()

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        while True:
            item = await self._queue.get()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def collect(self) -> np.ndarray:
        parts = [chunk async for chunk in self]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class Engine:
    """Owns the loaded models, admission control and the batching scheduler."""

    def __init__(self, models: dict[str, LoadedModel], config: EngineConfig | None = None):
        self.models = models
        self.config = config or EngineConfig()
        self.admission = Admission(self.config.max_queue, workers=self.config.max_batch)
        self.scheduler = Scheduler(models, self.config, self.admission)

    def model(self, kind: str) -> LoadedModel | None:
        return self.models.get(kind)

    def start(self, kind: str, job: SpeechJob) -> SynthesisStream:
        """Queue a request; raises EngineBusy when the queue is full."""
        self.admission.admit()
        stream = SynthesisStream(asyncio.get_running_loop(), self.config.request_timeout)
        self.scheduler.submit(kind, job, stream)
        return stream

    async def clone_prompt(self, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
        """The Base model's clone prompt for a reference (runs on the scheduler thread)."""
        return await asyncio.wrap_future(
            self.scheduler.call(lambda: self.scheduler.clone_prompt("base", waveform, transcript)))

    def close(self) -> None:
        self.scheduler.close()
