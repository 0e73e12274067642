"""One request's audio path, owned by the runner: frames in, samples out to its stream.

It holds the current segment's (or live part's) decoder, its tempo filter and its first
chunk (``first_chunks.FirstChunk``, the one place that chunk's codes live until it is
decoded), the cross-fade between segments, and pauses. Decoding runs here, or on the audio
thread when there is one (``audio_worker.py``), in the order its stream queued it; there a
failure tells the client at once, skips the request's later audio work, and is reported
with ``report_failure`` (the scheduler's inbox: the queue that already joins the threads),
so the scheduler fails the request and the runner drops its row.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from ...audio.tempo import TempoFilter
from ...constants import SAMPLE_RATE
from ..errors import generation_error
from ..generation.crossfade import CrossFade
from ..generation.first_chunks import FirstChunk
from ..generation.streaming_decoder import StreamingDecoder
from .audio_worker import AudioWorker
from .stream import SynthesisStream

log = logging.getLogger(__name__)
AudioFailure = Callable[[str, Exception], None]  # (request id, what its decoding raised)


class StreamAudio:
    def __init__(
        self,
        request_id: str,
        stream: SynthesisStream,
        worker: AudioWorker | None,
        report_failure: AudioFailure,
        segments: int | None,
    ):
        """``segments``: how many the request has (None: a live turn, not known)."""
        self.request_id = request_id
        self.stream = stream
        self._worker = worker
        self._report_failure = report_failure
        self._crossfade = CrossFade(segments)
        self._decoder: StreamingDecoder | None = None
        self._stretch: TempoFilter | None = None
        self._index = 0
        self.first: FirstChunk | None = None  # until the segment's first chunk is decoded
        self._flushed_at: int | None = None  # frames made at the last flush while waiting for text
        self._failed = False  # read and written where the work runs only

    def begin(
        self, index: int, decoder: StreamingDecoder, stretch: TempoFilter | None, first: FirstChunk | None
    ) -> None:
        """A new segment (or live part) starts: its decoder, rate and first chunk."""
        self._index, self._decoder, self._stretch, self.first = index, decoder, stretch, first
        self._flushed_at = None

    def frame(self, codes: torch.Tensor) -> None:
        """A frame the request's row made: its audio once a chunk is complete."""
        decoder, index, stretch, first = self._decoder, self._index, self._stretch, self.first
        assert decoder is not None
        if first is None:
            self._run(lambda: self._out(index, decoder.push(codes), stretch))
        elif first.add(codes):  # the first chunk is complete: decoded whole (with its group, if any)
            self.first = None
            self._run(lambda: self._out(index, first.decode(decoder), stretch), first.urgent)

    def end(self) -> None:
        """The segment's last audio, its rate's tail after it."""
        decoder, index, stretch, first = self._decoder, self._index, self._stretch, self.first
        assert decoder is not None
        self._stretch, self.first = None, None

        def finish() -> None:
            self._take_unfinished(first, decoder)
            self._out(index, decoder.flush(), stretch, ending=True)
            if stretch is not None:
                self._emit(stretch.flush(), None)

        self._run(finish, first is not None and first.urgent)  # it ended before its first chunk

    def flush_waiting(self, frames_made: int, first_chunk: int) -> None:
        """A live part waits for text: the listener hears what is made (once per frame made),
        and small chunks follow once text comes."""
        if self._flushed_at == frames_made:
            return
        self._flushed_at = frames_made
        decoder, index, first = self._decoder, self._index, self.first
        assert decoder is not None
        self.first = None

        def flush() -> None:
            self._take_unfinished(first, decoder)
            if (audio := decoder.flush()) is not None:
                self._emit(self._crossfade.feed(index, audio), None)
                decoder.next_chunk = first_chunk

        self._run(flush, first is not None and first.urgent)

    def silence(self, seconds: float) -> None:
        """A pause: real samples, as long as asked (not stretched by the segment's rate)."""
        samples = round(seconds * SAMPLE_RATE)
        if samples > 0:
            self.stream.emit(np.zeros(samples, np.float32))

    @staticmethod
    def _take_unfinished(first: FirstChunk | None, decoder: StreamingDecoder) -> None:
        """A first chunk cut short: its frames become the decoder's pending ones."""
        for codes in first.codes if first is not None else ():
            decoder.push(codes)

    def _out(self, index: int, audio: np.ndarray | None, stretch: TempoFilter | None, ending: bool = False) -> None:
        if ending:
            self._emit(self._crossfade.end_segment(index, audio), stretch)
        elif audio is not None:
            self._emit(self._crossfade.feed(index, audio), stretch)

    def _emit(self, audio: np.ndarray | None, stretch: TempoFilter | None) -> None:
        if audio is not None and audio.size and stretch is not None:
            audio = stretch.process(audio)
        if audio is not None and audio.size:
            self.stream.emit(audio)

    def _run(self, work: Callable[[], None], urgent: bool = False) -> None:
        """Decoding and the audio it makes: here (a failure raises to the runner), or on the
        audio thread, ``urgent`` (first audio) ahead of other requests' work. ``work`` takes
        what it needs now, not when it runs."""
        if self._worker is None:
            work()
            return

        def contained() -> None:
            if self._failed:
                return
            try:
                work()
            except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
                log.exception("decoding failed for %s", self.request_id)
                self._failed = True
                self.stream.emit(generation_error("decoding", exc))
                self._report_failure(self.request_id, exc)

        self._worker.submit(self.stream, contained, urgent)
