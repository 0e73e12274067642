"""Codec decoding on a thread of its own (``QWEN_TTS_DECODE_THREAD``), beside the steps.

Without it the scheduler thread decodes each stream's chunks between two steps, one stream
after another, and the batch waits: on an H200 sixteen concurrent streams' decoding took
longer than their steps (docs/BENCHMARKS.md). With it, the scheduler hands each request's
decoding to this thread and goes on to the next step; the decoder's kernels and the step's
then overlap (PyTorch releases the GIL inside its operators).

Order is what makes this safe: everything a request's stream receives from the scheduler
side (audio work, silences, part events, its end or its error) goes through the one queue,
so a client hears it in the order the scheduler meant. Audio work that fails marks its
request (``Request.audio_error``) and tells the client at once; the scheduler then takes the
request out of its batch.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Iterable

import torch

log = logging.getLogger(__name__)


def decode_thread_wanted(setting: str, devices: Iterable[torch.device]) -> bool:
    """``QWEN_TTS_DECODE_THREAD`` (auto | on | off) for models on ``devices``: auto decodes
    on its own thread where a model runs on a GPU."""
    return setting == "on" or (setting == "auto" and any(d.type == "cuda" for d in devices))  # read if auto


class AudioWorker:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="qwen-tts-audio", daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` after everything submitted before it."""
        self._queue.put(work)

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Finish what is queued, then stop."""
        self._queue.put(None)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _run(self) -> None:
        while (work := self._queue.get()) is not None:
            try:
                work()
            except Exception:  # noqa: BLE001 - work reports its own failures; this keeps the thread alive
                log.exception("audio work failed")
