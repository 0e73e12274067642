"""Codec decoding on a thread of its own (``QWEN_TTS_DECODE_THREAD``), beside the steps.

Without it the scheduler thread decodes each stream's chunks between two steps, one stream
after another, and the batch waits (on a GPU, longer than the steps: docs/BENCHMARKS.md).
With it, the runner hands each request's decoding to this thread and the next step starts
at once; the decoder's kernels and the step's then overlap (PyTorch releases the GIL inside
its operators).

Order is what makes this safe: everything a request's stream receives from the scheduler
side (audio work, silences, part events, its end or its error) is queued under that stream,
and a stream's work runs in the order it was queued, so a client hears it in the order the
scheduler meant. Between streams the oldest work goes first, except a request's first audio:
it goes ahead of other streams' work (with what its own stream queued before it), so that a
request joining a busy server is not heard later for the chunks of those already speaking.
Audio work that fails tells the client at once and is reported to the runner
(``stream_audio.py``), which takes the request out of its batch. Work may belong to several
streams (their chunks decoded in one codec call): it runs after everything queued before it
for each of them, and everything queued after it for any of them waits for it.

First audio also goes ahead of the scheduler's next step: the scheduler waits for it
(``wait_for_first_audio``, half a second at most) before it prefills or steps again: on a
CPU both threads share the cores, and a first chunk decoded beside a step took far longer
(docs/BENCHMARKS.md); decoded alone it is heard sooner.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

import torch

from ..models.openmp import release_worker_threads

log = logging.getLogger(__name__)
FIRST_AUDIO_WAIT = 0.5  # seconds the scheduler waits at most for first audio before its next step


def decode_thread_wanted(setting: str, devices: Iterable[torch.device]) -> bool:
    """``QWEN_TTS_DECODE_THREAD`` (auto | on | off) for models on ``devices``: auto decodes
    on its own thread unless every model is on a CPU that PyTorch gives one thread (then
    there is nothing to overlap with)."""
    if setting != "auto":
        return setting == "on"
    return any(d.type != "cpu" or torch.get_num_threads() > 1 for d in devices)


class AudioWorker:
    def __init__(self) -> None:
        # (streams, work, urgent), oldest first
        self._work: list[tuple[tuple[object, ...], Callable[[], None], bool]] = []
        self._urgent = 0  # urgent work queued or running
        self._closing = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._run, name="qwen-tts-audio", daemon=True)
        self._thread.start()

    def submit(self, stream: object, work: Callable[[], None], urgent: bool = False) -> None:
        """Run ``work`` after everything submitted for ``stream`` before it; ``urgent`` (a
        request's first audio): before other streams' older work too."""
        self._queue((stream,), work, urgent)

    def submit_shared(self, streams: tuple[object, ...], work: Callable[[], None], urgent: bool = False) -> None:
        """Run ``work``, which belongs to all of ``streams``, after everything submitted for
        any of them before it (and before what is submitted for them after it)."""
        self._queue(streams, work, urgent)

    def _queue(self, streams: tuple[object, ...], work: Callable[[], None], urgent: bool) -> None:
        with self._ready:
            self._work.append((streams, work, urgent))
            self._urgent += urgent
            self._ready.notify_all()

    def wait_for_first_audio(self, limit: float = FIRST_AUDIO_WAIT) -> None:
        """Return once no urgent work (a request's first audio) is queued or running, or
        after ``limit`` seconds (a large first chunk asked for must not stall the others long)."""
        deadline = time.monotonic() + limit
        with self._ready:
            while self._urgent and (left := deadline - time.monotonic()) > 0:
                self._ready.wait(left)

    @property
    def on_thread(self) -> bool:
        return threading.current_thread() is self._thread

    def close(self) -> None:
        """Finish what is queued, then stop."""
        with self._ready:
            self._closing = True
            self._ready.notify_all()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def _next(self) -> tuple[Callable[[], None], bool] | None:
        """The next work and whether it is urgent (None once closed and done)."""
        with self._ready:
            while not self._work:
                if self._closing:
                    return None
                self._ready.wait()
            _, work, urgent = self._work.pop(self._pick())
            return work, urgent

    def _pick(self) -> int:
        """The index of the work to run next: of the work that nothing older of its streams
        waits before (the oldest work always), the first that the oldest urgent work waits
        for or that work itself, else the oldest."""
        ready: list[int] = []
        older: set[int] = set()  # streams with work before the one looked at
        urgent: set[int] | None = None  # the oldest urgent work's streams
        for index, (streams, _, is_urgent) in enumerate(self._work):
            ids = {id(stream) for stream in streams}
            if not ids & older:
                ready.append(index)
            if is_urgent:
                urgent = ids
                break
            older |= ids
        if urgent is not None:
            for index in ready:
                if urgent & {id(stream) for stream in self._work[index][0]}:
                    return index
        return 0

    def _run(self) -> None:
        while (taken := self._next()) is not None:
            work, urgent = taken
            try:
                work()
            except Exception:  # noqa: BLE001 - work reports its own failures; this keeps the thread alive
                log.exception("audio work failed")
            finally:
                if urgent:
                    with self._ready:
                        self._urgent -= 1
                        self._ready.notify_all()
            if not self._work:  # nothing queued: its OpenMP workers go until the next chunk (openmp.py)
                release_worker_threads()
