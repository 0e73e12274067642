"""One request's audio, handed from the scheduler thread to the event loop as it is made."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .audio_worker import AudioWorker

END = object()  # the last item of a stream that finished normally


@dataclass(frozen=True)
class PartStarted:
    """A live turn's part begins (its audio follows); ``text``: the part's text so far."""

    index: int
    text: str


@dataclass(frozen=True)
class PartEnded:
    """A live turn's part has ended; ``error`` says why it failed, if it did."""

    index: int
    text: str  # as spoken (numbers written out)
    error: str | None = None
    typed: str | None = None  # a live part's text as the client sent it


@dataclass
class Usage:
    input_tokens: int = 0
    output_frames: int = 0


class SynthesisStream:
    """Audio chunks of one request, handed from the worker thread to the event loop."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        timeout: float,
        audio_worker: AudioWorker | None = None,
        on_cancel: Callable[[], None] = lambda: None,
    ):
        """``audio_worker``: the thread that decodes, if any: what the scheduler emits queues
        behind the audio work handed over before it (audio_worker.py). ``on_cancel``: tells
        the scheduler to look (a live turn between parts has no step to notice it)."""
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self.deadline = time.monotonic() + timeout
        self.started_at: float | None = None  # when the scheduler took it out of the queue
        self.usage = Usage()
        self.audio_worker = audio_worker
        self._on_cancel = on_cancel

    # --- worker side ---
    def emit(self, item: object) -> None:
        worker = self.audio_worker
        if worker is None or worker.on_thread:
            self._put(item)
        else:
            worker.submit(self, lambda: self._put(item))

    def _put(self, item: object) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    @property
    def started(self) -> bool:
        return self.started_at is not None

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
        self._on_cancel()

    async def __aiter__(self) -> AsyncIterator[np.ndarray | PartStarted | PartEnded]:
        while True:
            item = await self._queue.get()
            if item is END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def collect(self) -> np.ndarray:
        parts = [chunk async for chunk in self if isinstance(chunk, np.ndarray)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)
