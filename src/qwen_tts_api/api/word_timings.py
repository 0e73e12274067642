"""When each word of a response is heard: measured on each segment's audio as it is made.

A request that asks for timings runs with its segments announced (``announce_parts``), so
the stream says where each segment starts and ends among its samples. When a segment ends,
its speech (the audio between its pauses) is timed: by the forced aligner
(``engine/models/aligner.py``) on its own thread, or, without one, by an estimate that
spreads the segment's spoken words over its louder part by syllables. Times are then
placed on the response's timeline: the segment's place among all samples before it
(pauses, ``<break>``s and ``<prosody rate>`` stretches are real samples there), divided by
``speed`` (which the renderer applies to the whole response; the output sample rate does
not change time). The words reported are the client's (``text/words.py``), each timed from
the spoken words it became.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..audio.voiced import voiced_span
from ..constants import SAMPLE_RATE
from ..engine.models.aligner import AlignerError, WordAligner
from ..engine.runtime.stream import PartEnded, PartStarted
from ..text.markup import Markup, Speech
from ..text.prepare import Segment
from ..text.words import WrittenSpan, WrittenWord, match, spoken_words, spread, written_words

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimedWord:
    word: str
    start: float  # seconds from the start of the response's audio
    end: float
    place: tuple[int, int] | None = None  # where the word stands in the client's text


@dataclass(frozen=True)
class SegmentTimings:
    """The words of one segment (a live turn's part), timed once its audio is out."""

    index: int
    offset: float  # where the segment begins in the response's audio, seconds
    words: list[TimedWord]
    spoken: list[TimedWord]  # the words as spoken (normalised), timed the same way
    estimated: bool  # spread by syllables, not measured by the aligner


@dataclass(frozen=True)
class SegmentWords:
    """What one segment says: its words as spoken, the client's words it speaks (their
    ``first``/``last`` count among this segment's spoken words), its pauses in samples."""

    spoken: list[str]
    written: list[tuple[WrittenWord, WrittenSpan]]
    pause_before: int = 0
    pause_after: int = 0


def display_text(markup: Markup) -> str:
    """The client's text without its markup: what its words are counted in."""
    return " ".join(piece.text for piece in markup.pieces if isinstance(piece, Speech))


def plan_words(text: str, segments: Sequence[Segment], speed: float = 1.0) -> list[SegmentWords]:
    """Each segment's words, the client's ``text`` shared among them. Pauses were lengthened
    by ``speed`` (text/prepare.py) and are counted as made."""
    written = written_words(text)
    spoken = [spoken_words(segment.text) for segment in segments]
    flat = [word for words in spoken for word in words]
    spans = match([word.text for word in written], flat)
    bases = np.cumsum([0] + [len(words) for words in spoken])
    plans: list[SegmentWords] = [
        SegmentWords(words, [], round(segment.pause_before * SAMPLE_RATE), round(segment.pause_after * SAMPLE_RATE))
        for words, segment in zip(spoken, segments)
    ]
    for word, span in zip(written, spans):
        # A word belongs to the segment of its last spoken word (one not spoken: where it stands).
        last = max(int(np.ceil(span.last)) - 1, int(span.first))
        index = int(np.searchsorted(bases, min(last, max(len(flat) - 1, 0)), side="right")) - 1
        index = min(max(index, 0), len(plans) - 1)
        base, size = float(bases[index]), len(spoken[index])
        local = WrittenSpan(span.word, min(max(span.first - base, 0.0), size), min(max(span.last - base, 0.0), size))
        plans[index].written.append((word, local))
    return plans


def part_words(ended: PartEnded) -> SegmentWords:
    """A live part's words: its text as received, and as it was spoken."""
    said = spoken_words(ended.text)
    written = written_words(ended.typed if ended.typed is not None else ended.text)
    return SegmentWords(said, list(zip(written, match([word.text for word in written], said))))


def _at(times: Sequence[tuple[float, float]], position: float, ending: bool) -> float:
    """The time at a (fractional) position among timed words; ``ending``: a whole position
    is the end of the word before it, not the start of the next (the gap is not the word's)."""
    if not times:
        return 0.0
    whole = int(position)
    if ending and position == whole and whole > 0:
        return times[min(whole, len(times)) - 1][1]
    if whole >= len(times):
        return times[-1][1]
    start, end = times[whole]
    return start + (end - start) * (position - whole)


def _ordered(times: Sequence[tuple[float, float]], length: float) -> list[tuple[float, float]]:
    """Times inside the audio, each word starting no earlier than the one before."""
    out: list[tuple[float, float]] = []
    floor = 0.0
    for start, end in times:
        start = min(max(start, floor), length)
        end = min(max(end, start), length)
        out.append((start, end))
        floor = start
    return out


@dataclass
class WordTimer:
    """Follows one response's stream: counts its samples, keeps the current segment's audio,
    and times each segment's words when it ends."""

    words_of: Callable[[PartEnded], SegmentWords]  # the words of the segment (or live part) that ended
    aligner: WordAligner | None
    speed: float = 1.0
    samples: int = 0
    _start: int = 0
    _audio: list[np.ndarray] = field(default_factory=list)

    def started(self, index: int) -> None:
        self._start, self._audio = self.samples, []

    def audio(self, chunk: np.ndarray) -> None:
        self.samples += chunk.size
        self._audio.append(chunk)

    def ended(self, ended: PartEnded) -> Callable[[], SegmentTimings]:
        """The work that times the segment that just ended (run it off the event loop)."""
        plan, index = self.words_of(ended), ended.index
        audio = np.concatenate(self._audio) if self._audio else np.zeros(0, np.float32)
        self._audio = []
        speech = audio[plan.pause_before : max(plan.pause_before, audio.size - plan.pause_after)]
        speech_start = self._start + plan.pause_before
        offset = self._start / SAMPLE_RATE / self.speed
        aligner, speed = self.aligner, self.speed

        def work() -> SegmentTimings:
            estimated = aligner is None
            times: list[tuple[float, float]] = []
            if aligner is not None:
                try:
                    times = aligner.align(speech, plan.spoken)
                except AlignerError as exc:
                    log.warning("word timings of segment %d estimated: %s", index, exc)
                    estimated = True
            if estimated:
                first, last = voiced_span(speech)
                times = spread(plan.spoken, first / SAMPLE_RATE, last / SAMPLE_RATE)
            times = _ordered(times, speech.size / SAMPLE_RATE)

            def placed(seconds: float) -> float:
                return (speech_start / SAMPLE_RATE + seconds) / speed

            words = [
                TimedWord(
                    word.text,
                    placed(_at(times, span.first, ending=span.first == span.last)),
                    placed(_at(times, span.last, ending=True)),
                    (word.start, word.end),
                )
                for word, span in plan.written
            ]
            spoken = [TimedWord(word, placed(start), placed(end)) for word, (start, end) in zip(plan.spoken, times)]
            return SegmentTimings(index, offset, words, spoken, estimated)

        return work


async def _timed(timer: WordTimer, work: Callable[[], SegmentTimings]) -> SegmentTimings:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(timer.aligner.thread if timer.aligner is not None else None, work)


async def with_timings(
    items: AsyncIterable, timer: WordTimer, markers: bool = False, hold_ends: bool = False
) -> AsyncIterator:
    """``items`` (a stream's audio and part markers) with each segment's ``SegmentTimings``
    put in as soon as they are ready, in segment order, the audio never waiting for them.
    ``markers``: pass the part markers on (else they are consumed here); ``hold_ends``: a
    ``PartEnded`` waits for its timings, which come just before it (the audio after it
    waits too: the client asked for timings with the end of each part)."""
    pending: deque[asyncio.Future] = deque()
    source = aiter(items)
    ended = object()
    upcoming: asyncio.Future = asyncio.ensure_future(anext(source, ended))
    try:
        while True:
            head = {pending[0]} if pending else set()
            await asyncio.wait({upcoming, *head}, return_when=asyncio.FIRST_COMPLETED)
            while pending and pending[0].done():
                yield pending.popleft().result()
            if not upcoming.done():
                continue
            item = upcoming.result()
            if item is ended:
                break
            upcoming = asyncio.ensure_future(anext(source, ended))
            if isinstance(item, np.ndarray):
                timer.audio(item)
                yield item
                continue
            if isinstance(item, PartStarted):
                timer.started(item.index)
            elif isinstance(item, PartEnded) and item.error is None:
                pending.append(asyncio.ensure_future(_timed(timer, timer.ended(item))))
                if hold_ends:
                    while pending:
                        yield await pending.popleft()
            if markers:
                yield item
        while pending:
            yield await pending.popleft()
    finally:
        upcoming.cancel()
        for task in pending:
            task.cancel()


async def collect_timed(stream: AsyncIterable, timer: WordTimer) -> tuple[np.ndarray, list[SegmentTimings]]:
    """A whole response's audio and its segments' timings."""
    audio: list[np.ndarray] = []
    timings: list[SegmentTimings] = []
    async for item in with_timings(stream, timer):
        if isinstance(item, np.ndarray):
            audio.append(item)
        else:
            timings.append(item)
    return (np.concatenate(audio) if audio else np.zeros(0, np.float32)), timings


def all_words(timings: Sequence[SegmentTimings]) -> tuple[list[TimedWord], list[TimedWord], bool]:
    """A whole response's words, its spoken words, and whether any segment's are estimated."""
    words = [word for segment in timings for word in segment.words]
    spoken = [word for segment in timings for word in segment.spoken]
    return words, spoken, any(segment.estimated for segment in timings)
