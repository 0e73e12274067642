"""One request's audio path, owned by the runner: frames in, samples out to its stream.

It holds the current segment's (or live part's) decoder, its tempo filter and its first
chunk (``first_chunks.FirstChunk``, the one place that chunk's codes live until it is
decoded), the cross-fade between segments, and pauses. Decoding runs here, or on the audio
thread when there is one (``audio_worker.py``), in the order its stream queued it; there a
failure tells the client at once, skips the request's later audio work, and is reported
with ``report_failure`` (the scheduler's inbox: the queue that already joins the threads),
so the scheduler fails the request and the runner drops its row.

Decoding together (``QWEN_TTS_DECODE_TOGETHER``): a stream's frames wait here until its
chunk is due: the first once complete, later ones when the batch's step count is a multiple
of the stream's chunk size (which doubles as alone), and the rest when its row ends. So
streams decode chunks of one length at the same steps; the runner takes the chunks that
are due (``due``) and ``decode_due`` decodes those of one length in one codec call,
whatever each stream's position (first audio among them goes first, as alone).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial

import numpy as np
import torch

from ...audio.tempo import TempoFilter
from ...constants import SAMPLE_RATE
from ..errors import generation_error
from ..generation.crossfade import CrossFade
from ..generation.first_chunks import FirstChunk
from ..generation.streaming_decoder import StreamingDecoder, decode_together
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
        together: bool = False,
    ):
        """``segments``: how many the request has (None: a live turn, not known);
        ``together``: its chunks wait for ``due`` (to be decoded with other streams')."""
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
        self._together = together
        self._waiting: list[torch.Tensor] = []  # decoding together: frames until their chunk is due
        self._chunk = 0  # decoding together: the next chunk's frames
        self._first_due = False  # decoding together: the segment's first chunk is still to come
        self._urgent = False  # decoding together: that first chunk is a request's first audio

    def begin(
        self, index: int, decoder: StreamingDecoder, stretch: TempoFilter | None, first: FirstChunk | None
    ) -> None:
        """A new segment (or live part) starts: its decoder, rate and first chunk."""
        if self._together:  # the first chunk waits with the rest (``due``)
            self._waiting, self._chunk, self._first_due = [], decoder.next_chunk, True
            self._urgent, first = first is not None and first.urgent, None
        self._index, self._decoder, self._stretch, self.first = index, decoder, stretch, first
        self._flushed_at = None

    def frame(self, codes: torch.Tensor) -> None:
        """A frame the request's row made: its audio once a chunk is complete."""
        decoder, index, stretch, first = self._decoder, self._index, self._stretch, self.first
        assert decoder is not None
        if self._together:  # decoded once due (``due``)
            self._waiting.append(codes)
        elif first is None:
            self._run(lambda: self._out(index, decoder.push(codes), stretch))
        elif first.add(codes):  # the first chunk is complete: decoded whole (with its group, if any)
            self.first = None
            self._run(lambda: self._out(index, first.decode(decoder), stretch), first.urgent)

    def due(self, step: int, ending: bool = False) -> tuple[torch.Tensor, bool] | None:
        """Decoding together: the (n, 16) chunk to decode now, at the batch's step ``step``,
        and whether it is first audio; None while it waits. ``ending``: the row has ended,
        what waits is due."""
        waiting = len(self._waiting)
        if not waiting or not (ending or waiting >= self._chunk or (not self._first_due and step % self._chunk == 0)):
            return None
        assert self._decoder is not None
        chunk, self._waiting = torch.stack(self._waiting), []
        urgent, self._urgent, self._first_due = self._urgent, False, False
        self._chunk = min(self._chunk * 2, self._decoder.max_chunk)
        return chunk, urgent

    def decode_alone(self, chunk: torch.Tensor, urgent: bool) -> None:
        """A chunk that is due and has no other stream's to be decoded with."""
        assert self._decoder is not None
        self._run(partial(self._out_decoded, self._index, self._stretch, self._decoder, chunk), urgent)

    def end(self) -> None:
        """The segment's last audio, its rate's tail after it."""
        decoder, index, stretch, first = self._decoder, self._index, self._stretch, self.first
        assert decoder is not None
        self._stretch, self.first = None, None
        waiting, self._waiting = self._waiting, []

        def finish() -> None:
            self._take_unfinished(first, decoder)
            decoder.pending.extend(waiting)
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
        waiting, self._waiting = self._waiting, []

        def flush() -> None:
            self._take_unfinished(first, decoder)
            decoder.pending.extend(waiting)
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

    def _out_decoded(
        self, index: int, stretch: TempoFilter | None, decoder: StreamingDecoder, chunk: torch.Tensor
    ) -> None:
        self._out(index, decoder.decode_chunk(chunk), stretch)

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
        else:
            self._worker.submit(self.stream, lambda: self._contained(work), urgent)

    def _contained(self, work: Callable[[], None]) -> None:
        """Run ``work`` where decoding runs; if it fails, this request fails (its client is
        told at once, the scheduler through ``report_failure``) and its later work is skipped."""
        if self._failed:
            return
        try:
            work()
        except Exception as exc:  # noqa: BLE001 - this request fails, the others go on
            log.exception("decoding failed for %s", self.request_id)
            self._failed = True
            self.stream.emit(generation_error("decoding", exc))
            self._report_failure(self.request_id, exc)

    @staticmethod
    def decode_due(tts, worker: AudioWorker | None, due: list[tuple[StreamAudio, torch.Tensor]], urgent: bool) -> None:
        """Chunks due at one step, of one length, from several streams: decoded in one codec
        call (on the audio thread, after what each stream queued before), each stream's audio
        then out to it; ``urgent``: one of them is first audio. If that call fails, each
        stream decodes its chunk alone."""
        members = []
        for audio, chunk in due:
            assert audio._decoder is not None
            members.append((audio, audio._decoder, audio._index, audio._stretch, chunk))

        def work() -> None:
            live = [member for member in members if not member[0]._failed]
            if not live:
                return
            try:
                samples = decode_together(tts, [decoder for _, decoder, *_ in live], [m[-1] for m in live])
            except Exception:  # noqa: BLE001 - each stream then decodes alone and reports its own failure
                log.exception("decoding %d streams' chunks together failed; each decodes alone", len(live))
                for audio, decoder, index, stretch, chunk in live:
                    audio._contained(partial(audio._out_decoded, index, stretch, decoder, chunk))
                return
            for (audio, _, index, stretch, _), wave in zip(live, samples):
                audio._contained(partial(audio._out, index, wave, stretch))

        if worker is None:
            work()
        else:
            worker.submit_shared(tuple(audio.stream for audio, _ in due), work, urgent)
