"""Speech with its word timings in one JSON answer (or a stream of JSON lines):

- ``POST /v1/audio/speech/with-timestamps``: ours: the ``/v1/audio/speech`` body; the whole
  audio, each word's start and end, and captions (SRT, WebVTT);
- ``POST /v1/text-to-speech/{voice_id}/with-timestamps`` and ``.../stream/with-timestamps``:
  ElevenLabs' routes (what Pipecat's ElevenLabs HTTP service calls), ``voice_id`` any voice
  of ours, ``output_format`` as ElevenLabs names it (``mp3_44100_128``, ``pcm_24000``, ...).
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from ..audio.encode import CONTENT_TYPES
from ..audio.render import Renderer
from ..constants import SAMPLE_RATE
from ..engine.runtime.stream import SynthesisStream
from ..text.captions import Timed, srt, webvtt
from .errors import invalid_request
from .headers import UNUSED_FIELDS_HEADER, header_list
from .protocol import LANGUAGES, SpeechRequest, error_responses
from .speech import SpeechPlan, plan_speech, start_speech
from .state import EngineDep, SettingsDep, StateDep, VoicesDep
from .streaming import ClientGone, SpeechStreamingResponse, awaited
from .timing_protocol import (
    Captions,
    CharacterClock,
    ElevenLabsSpeechRequest,
    ElevenLabsWithTimestamps,
    SpeechWithTimestamps,
    our_words,
    spoken_placed,
)
from .word_timings import SegmentTimings, TimedWord, WordTimer, all_words, collect_timed, with_timings

router = APIRouter()

ESTIMATE_NOTE = "word times estimated from each sentence's audio span (no forced aligner)"
# ElevenLabs' language_code (ISO 639-1) for each of our languages.
_ISO_LANGUAGES = {
    "en": "English",
    "zh": "Chinese",
    "ja": "Japanese",
    "ko": "Korean",
    "fr": "French",
    "de": "German",
    "es": "Spanish",
    "it": "Italian",
    "pt": "Portuguese",
    "ru": "Russian",
}
assert sorted(_ISO_LANGUAGES.values()) == sorted(name for name in LANGUAGES if name != "Auto")
_OUTPUT_FORMAT = re.compile(r"^(mp3|pcm|wav|opus|ulaw|alaw|flac|aac)_(\d+)(?:_\d+)?$")


@router.post(
    "/v1/audio/speech/with-timestamps",
    response_model=SpeechWithTimestamps,
    responses=error_responses(400, 413, 429, 500, 503, 504),
)
async def speech_with_timestamps(
    body: SpeechRequest, request: Request, engine: EngineDep, settings: SettingsDep, store: VoicesDep, state: StateDep
) -> Response:
    plan = await plan_speech(body, engine, settings, store, timed=True)
    stream = start_speech(plan, body, request, engine, settings)
    timer = plan.timer(state.aligner, body.speed)
    try:
        waveform, timings = await awaited(request, collect_timed(stream, timer), stream, settings)
    except ClientGone:
        return Response(status_code=499)
    renderer = Renderer(body.response_format, body.speed, body.output_rate)
    audio = await asyncio.to_thread(renderer.whole, waveform)
    words, spoken, estimated = all_words(timings)
    timed = [Timed(w.word, w.start, w.end) for w in words]
    answer = SpeechWithTimestamps(
        audio_base64=base64.b64encode(audio).decode("ascii"),
        content_type=CONTENT_TYPES[body.response_format],
        sample_rate=body.output_rate,
        duration=round(waveform.size / SAMPLE_RATE / body.speed, 3),
        words=our_words(words),
        spoken_words=our_words(spoken),
        estimated=estimated,
        captions=Captions(srt=srt(timed), vtt=webvtt(timed, ESTIMATE_NOTE if estimated else None)),
    )
    return Response(answer.model_dump_json(), media_type="application/json", headers=plan.headers)


# ---------- ElevenLabs ----------


def _output_format(value: str) -> tuple[str, int]:
    found = _OUTPUT_FORMAT.match(value)
    if found is None:
        raise invalid_request(
            f"Invalid 'output_format' {value[:40]!r}: use ElevenLabs' codec_rate[_bitrate], e.g. mp3_44100_128 "
            "or pcm_24000",
            param="output_format",
        )
    return found.group(1), int(found.group(2))


def _speech_request(
    voice_id: str, body: ElevenLabsSpeechRequest, output_format: str
) -> tuple[SpeechRequest, list[str]]:
    """Ours for theirs, and the fields we have no meaning for."""
    fmt, rate = _output_format(output_format)
    unused = sorted(body.model_extra or {})
    settings = body.voice_settings
    if settings is not None:
        unused += [f"voice_settings.{name}" for name in sorted(settings.model_fields_set - {"speed"})]
        unused += [f"voice_settings.{name}" for name in sorted(settings.model_extra or {})]
    language = "Auto"
    if body.language_code:
        language = _ISO_LANGUAGES.get(body.language_code.strip().lower()[:2], "")
        if not language:
            raise invalid_request(
                f"Invalid 'language_code': Qwen3-TTS speaks {', '.join(sorted(_ISO_LANGUAGES))}", param="language_code"
            )
    normalize = {"on": True, "off": False}.get(body.apply_text_normalization or "auto")
    fields = {
        "model": body.model_id or "qwen3-tts",
        "input": body.text,
        "voice": voice_id,
        "response_format": fmt,
        "sample_rate": rate,
        "language": language,
        "seed": body.seed,
        "normalize": normalize,
        "stream": False,
    }
    if settings is not None and settings.speed is not None:
        fields["speed"] = settings.speed
    try:
        return SpeechRequest.model_validate(fields), unused
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        theirs = {"input": "text", "voice": "voice_id", "sample_rate": "output_format", "speed": "voice_settings.speed"}
        param = theirs.get(where, where)
        raise invalid_request(f"Invalid '{param}': {first['msg']}", param=param) from exc


@dataclass
class ElevenLabsCall:
    """An ElevenLabs request, planned and started as ours."""

    ours: SpeechRequest
    plan: SpeechPlan
    stream: SynthesisStream
    timer: WordTimer


async def elevenlabs_call(
    voice_id: str,
    body: ElevenLabsSpeechRequest,
    request: Request,
    engine: EngineDep,
    settings: SettingsDep,
    store: VoicesDep,
    state: StateDep,
    output_format: str = "mp3_44100_128",
) -> ElevenLabsCall:
    ours, unused = _speech_request(voice_id, body, output_format)
    unused += sorted(f"?{name}" for name in request.query_params if name != "output_format")
    plan = await plan_speech(ours, engine, settings, store, timed=True)
    if unused:
        plan.headers[UNUSED_FIELDS_HEADER] = header_list(unused)
    stream = start_speech(plan, ours, request, engine, settings)
    return ElevenLabsCall(ours, plan, stream, plan.timer(state.aligner, ours.speed))


ElevenLabsDep = Annotated[ElevenLabsCall, Depends(elevenlabs_call)]


@router.post(
    "/v1/text-to-speech/{voice_id}/with-timestamps",
    response_model=ElevenLabsWithTimestamps,
    responses=error_responses(400, 404, 413, 429, 500, 503, 504),
)
async def elevenlabs_with_timestamps(call: ElevenLabsDep, request: Request, settings: SettingsDep) -> Response:
    ours, stream = call.ours, call.stream
    try:
        waveform, timings = await awaited(request, collect_timed(stream, call.timer), stream, settings)
    except ClientGone:
        return Response(status_code=499)
    audio = await asyncio.to_thread(Renderer(ours.response_format, ours.speed, ours.output_rate).whole, waveform)
    words, spoken, estimated = all_words(timings)
    text, placed = spoken_placed(spoken)
    answer = ElevenLabsWithTimestamps(
        audio_base64=base64.b64encode(audio).decode("ascii"),
        alignment=CharacterClock(call.plan.text).through(words, final=True),
        normalized_alignment=CharacterClock(text).through(placed, final=True),
        estimated=estimated,
    )
    return Response(answer.model_dump_json(), media_type="application/json", headers=call.plan.headers)


@router.post(
    "/v1/text-to-speech/{voice_id}/stream/with-timestamps",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "Newline-delimited JSON: each line an ElevenLabsWithTimestamps, a segment's alignments "
            "on the line after it is timed (null on the others), times from the start of the audio",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ElevenLabsWithTimestamps"}}},
        },
        **error_responses(400, 404, 413, 429, 500, 503, 504),
    },
)
async def elevenlabs_stream_with_timestamps(call: ElevenLabsDep, request: Request, settings: SettingsDep) -> Response:
    items = aiter(with_timings(call.stream, call.timer))
    try:
        first = await awaited(request, anext(items, None), call.stream, settings)
    except ClientGone:
        return Response(status_code=499)
    body = _lines(first, items, call.stream, call.ours, call.plan.text)
    return SpeechStreamingResponse(body, media_type="application/json", headers=call.plan.headers)


async def _lines(first, items: AsyncIterator, stream, ours: SpeechRequest, text: str) -> AsyncIterator[bytes]:
    """One JSON line per encoded chunk. A segment's alignments (its characters, written and
    spoken) ride the next line once they are timed; the characters left (trailing
    punctuation) the last line, which alone may carry no audio."""
    renderer = Renderer(ours.response_format, ours.speed, ours.output_rate)
    written, said = CharacterClock(text), CharacterClock("")
    spoken: list[TimedWord] = []
    pending: list[SegmentTimings] = []

    def line(audio: bytes, final: bool = False) -> bytes:
        words = [w for segment in pending for w in segment.words]
        new = [w for segment in pending for w in segment.spoken]
        spoken.extend(new)
        said.text, placed = spoken_placed(spoken)
        estimated = any(segment.estimated for segment in pending) if pending else None
        pending.clear()
        answer = ElevenLabsWithTimestamps(
            audio_base64=base64.b64encode(audio).decode("ascii"),
            alignment=written.through(words, final),
            normalized_alignment=said.through(placed[len(placed) - len(new) :], final),
            estimated=estimated,
        )
        return answer.model_dump_json().encode() + b"\n"

    try:
        item = first
        while item is not None:
            if isinstance(item, np.ndarray):
                data = await asyncio.to_thread(renderer.chunk, item)
                if data:
                    yield line(data)
            else:
                pending.append(item)
            item = await anext(items, None)
        yield line(await asyncio.to_thread(renderer.finish), final=True)
    finally:
        stream.cancel()
