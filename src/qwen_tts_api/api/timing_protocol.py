"""Word timings in the shapes clients already read, as pydantic models (so ``/openapi.json``
describes them) and the conversions from ``word_timings.SegmentTimings``:

- vLLM-Omni: ``[{word, start_ms, end_ms}]`` (its ``X-Word-Timestamps`` header, its WebSocket's
  trailing ``audio.chunk``);
- ElevenLabs: ``alignment`` / ``normalized_alignment`` by character, in seconds;
- LiveKit's Baseten plugin: ``timestamp_info.word_alignment`` (words and their start and end
  seconds) in ``audio.done`` or in ``audio.timestamps``;
- ours: ``speech.audio.timestamps`` events and the JSON of ``/v1/audio/speech/with-timestamps``.

Every shape says when its times are an estimate (``estimated``; a header on plain HTTP).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .protocol import MAX_INPUT_CHARS, TimestampInfo, WordAlignment, WordTimestamp, WordTiming
from .word_timings import SegmentTimings, TimedWord, all_words

WORD_TIMESTAMPS_HEADER = "X-Word-Timestamps"  # vLLM-Omni's: JSON [{word, start_ms, end_ms}]
WORD_TIMESTAMPS_OMITTED = "X-Word-Timestamps-Omitted"  # vLLM-Omni's: set instead, when they do not fit
WORD_TIMESTAMPS_SOURCE = "X-Word-Timestamps-Source"  # ours: aligner, or estimate
WORD_TIMESTAMPS_CAP = 4096  # bytes of the header, as vLLM-Omni caps it


def vllm_words(words: Sequence[TimedWord], offset: float = 0.0) -> list[WordTimestamp]:
    """``offset``: seconds subtracted (vLLM-Omni's WebSocket times each sentence from its start)."""
    return [
        WordTimestamp(word=w.word, start_ms=round((w.start - offset) * 1000), end_ms=round((w.end - offset) * 1000))
        for w in words
    ]


def word_timestamp_headers(timings: Sequence[SegmentTimings]) -> dict[str, str]:
    """vLLM-Omni's header for a whole body (ASCII JSON: any word fits in a header), or its
    omission header when past the cap; and ours saying how the times were found."""
    words, _, estimated = all_words(timings)
    payload = json.dumps([w.model_dump() for w in vllm_words(words)], ensure_ascii=True, separators=(",", ":"))
    headers = {WORD_TIMESTAMPS_SOURCE: "estimate" if estimated else "aligner"}
    if len(payload) <= WORD_TIMESTAMPS_CAP:
        headers[WORD_TIMESTAMPS_HEADER] = payload
    else:
        headers[WORD_TIMESTAMPS_OMITTED] = (
            f"{len(words)} words take {len(payload)} bytes, over {WORD_TIMESTAMPS_CAP}: "
            "POST /v1/audio/speech/with-timestamps, or stream_format sse"
        )
    return headers


def our_words(words: Sequence[TimedWord], offset: float = 0.0) -> list[WordTiming]:
    return [WordTiming(word=w.word, start=round(w.start - offset, 3), end=round(w.end - offset, 3)) for w in words]


class Captions(BaseModel):
    srt: str
    vtt: str


class SpeechWithTimestamps(BaseModel):
    """``POST /v1/audio/speech/with-timestamps``: the whole audio and when each word is heard."""

    audio_base64: str
    content_type: str
    sample_rate: int
    duration: float  # seconds
    words: list[WordTiming]  # the input's words
    spoken_words: list[WordTiming]  # the words as spoken (numbers written out, SSML applied)
    estimated: bool  # some or all times are spread by syllables, not measured by the aligner
    captions: Captions


# ---------- ElevenLabs ----------


class ElevenLabsVoiceSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    speed: float | None = Field(default=None, ge=0.25, le=4.0)  # the only one Qwen3-TTS has a meaning for
    stability: float | None = None
    similarity_boost: float | None = None
    style: float | None = None
    use_speaker_boost: bool | None = None


class ElevenLabsSpeechRequest(BaseModel):
    """ElevenLabs' text-to-speech body; fields without a meaning here are named in
    ``X-Unused-Fields``."""

    model_config = ConfigDict(extra="allow")

    text: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    model_id: str | None = None  # any: the voice picks the model, as OpenAI's `model` here
    voice_settings: ElevenLabsVoiceSettings | None = None
    language_code: str | None = None  # ISO 639-1, e.g. "en"
    seed: int | None = Field(default=None, ge=0, le=4294967295)
    apply_text_normalization: Literal["auto", "on", "off"] | None = None


class CharacterAlignment(BaseModel):
    characters: list[str]
    character_start_times_seconds: list[float]
    character_end_times_seconds: list[float]


class ElevenLabsWithTimestamps(BaseModel):
    """ElevenLabs' with-timestamps answer (and each line of its stream, alignments null
    where a chunk brings none)."""

    audio_base64: str
    alignment: CharacterAlignment | None = None
    normalized_alignment: CharacterAlignment | None = None
    estimated: bool | None = None  # ours: the times are spread by syllables


class CharacterClock:
    """Character times of one text, handed out in order: each call covers the text from
    where the last stopped to the end of the last word given (``final``: to the end).
    Spaces and punctuation between words take the gap between them."""

    def __init__(self, text: str):
        self.text = text
        self._at = 0
        self._last_end = 0.0

    def through(self, words: Sequence[TimedWord], final: bool = False) -> CharacterAlignment | None:
        placed = [w for w in words if w.place is not None]
        stop = len(self.text) if final else max([self._at, *(w.place[1] for w in placed if w.place)])
        if stop <= self._at:
            return None
        starts: list[float] = []
        ends: list[float] = []
        # Words do not overlap: one pass over them, in order, as the characters advance.
        spans = sorted((w.place[0], w.place[1], w.start, w.end) for w in placed if w.place)
        at = 0
        for index in range(self._at, stop):
            while at < len(spans) and spans[at][1] <= index:
                at += 1
            if at < len(spans) and spans[at][0] <= index:
                s, e, ts, te = spans[at]
                step = (te - ts) / (e - s)
                starts.append(round(ts + step * (index - s), 3))
                ends.append(round(ts + step * (index - s + 1), 3))
                self._last_end = te
            else:
                following = spans[at][2] if at < len(spans) else self._last_end
                starts.append(round(self._last_end, 3))
                ends.append(round(max(following, self._last_end), 3))
        characters = list(self.text[self._at : stop])
        self._at = stop
        return CharacterAlignment(
            characters=characters, character_start_times_seconds=starts, character_end_times_seconds=ends
        )


def spoken_placed(words: Sequence[TimedWord]) -> tuple[str, list[TimedWord]]:
    """The spoken words as one text (joined by spaces), each with its place in it."""
    placed: list[TimedWord] = []
    at = 0
    for word in words:
        placed.append(TimedWord(word.word, word.start, word.end, (at, at + len(word.word))))
        at += len(word.word) + 1
    return " ".join(word.word for word in words), placed


# ---------- LiveKit's Baseten plugin (our WebSocket, ``timestamp_type: "word"``) ----------


def timestamp_info(words: Sequence[TimedWord], offset: float, estimated: bool) -> TimestampInfo:
    return TimestampInfo(
        word_alignment=WordAlignment(
            words=[w.word for w in words],
            word_start_times_seconds=[round(w.start - offset, 3) for w in words],
            word_end_times_seconds=[round(w.end - offset, 3) for w in words],
        ),
        estimated=estimated,
    )
