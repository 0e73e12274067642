"""``POST /v1/audio/speech``: validate, route to a model, synthesize, encode."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import numpy as np
from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from ..audio.encode import CONTENT_TYPES, encode_audio
from ..audio.reference import AudioSampleError, decode_reference
from ..audio.source import read_audio_sample
from ..audio.tempo import change_speed
from ..engine.admission import EngineBusy, SynthesisTimeout
from ..engine.loading import LoadedModel
from ..engine.synthesis import Engine, ReferenceAudio, SpeechJob
from ..settings import Settings
from ..voices.speakers import resolve_speaker, voice_names
from .errors import APIError, invalid_request
from .schemas import SpeechRequest, VoiceRef
from .streaming import ClientGone, audio_body, sse_body, until_ready

router = APIRouter()

INSTRUCTIONS_IGNORED_HEADER = "X-Instructions-Ignored"
_MODEL_ENV = {"customvoice": "CUSTOMVOICE_MODEL_PATH", "base": "BASE_MODEL_PATH"}


@dataclass
class SpeechPlan:
    kind: str
    job: SpeechJob
    headers: dict[str, str] = field(default_factory=dict)


def _require_model(engine: Engine, kind: str, param: str) -> LoadedModel:
    model = engine.model(kind)
    if model is None:
        need = "voice cloning (audio_sample) needs the Base model" if kind == "base" else \
            "built-in voices need the CustomVoice model"
        raise invalid_request(f"{need}, which this server has not loaded (set {_MODEL_ENV[kind]})", param=param,
                              code="model_not_loaded")
    return model


def _check_language(model: LoadedModel, language: str) -> None:
    if language.lower() not in model.languages:
        raise invalid_request(f"language {language!r} is not supported by model {model.name}", param="language")


async def _reference(body: SpeechRequest, settings: Settings) -> ReferenceAudio:
    assert body.audio_sample is not None
    try:
        data = await read_audio_sample(body.audio_sample, settings)
        waveform = await asyncio.to_thread(decode_reference, data, settings.audio_sample_max_seconds)
    except AudioSampleError as exc:
        raise invalid_request(str(exc), param="audio_sample", code="invalid_audio_sample") from exc
    return ReferenceAudio(waveform=waveform, transcript=(body.audio_sample_text or "").strip() or None)


async def plan_speech(body: SpeechRequest, engine: Engine, settings: Settings) -> SpeechPlan:
    text = body.input.strip()
    instructions = (body.instructions or "").strip() or None

    if body.audio_sample is not None:
        # Specification: audio_sample routes to Base; voice and instructions are ignored.
        model = _require_model(engine, "base", "audio_sample")
        _check_language(model, body.language)
        job = SpeechJob(text=text, language=body.language, reference=await _reference(body, settings))
        headers = {INSTRUCTIONS_IGNORED_HEADER: "voice cloning (audio_sample) does not use instructions"} \
            if instructions else {}
        return SpeechPlan("base", job, headers)

    if isinstance(body.voice, VoiceRef):
        raise invalid_request("saved custom voices ({\"id\": ...}) are not supported by this server yet",
                              param="voice")
    model = _require_model(engine, "customvoice", "voice")
    speaker = resolve_speaker(body.voice, model.speakers)
    if speaker is None:
        raise invalid_request(
            f"unknown voice {body.voice!r}; available: {', '.join(voice_names(model.speakers))}",
            param="voice", code="invalid_voice",
        )
    _check_language(model, body.language)
    headers: dict[str, str] = {}
    if instructions and not model.supports_instructions:
        headers[INSTRUCTIONS_IGNORED_HEADER] = f"model {model.name} (0.6B) does not support instructions"
        instructions = None
    job = SpeechJob(text=text, language=body.language, speaker=speaker, instructions=instructions)
    return SpeechPlan("customvoice", job, headers)


def render(waveform: np.ndarray, speed: float, fmt: str) -> bytes:
    return encode_audio(change_speed(waveform, speed), fmt)


@router.post("/v1/audio/speech")
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings
    plan = await plan_speech(body, engine, settings)
    try:
        stream = engine.start(plan.kind, plan.job)
    except EngineBusy as busy:
        raise APIError(429, "The server is busy with other requests; retry after the time in Retry-After",
                       code="server_busy", headers={"Retry-After": str(busy.retry_after)}) from busy
    fmt = body.response_format
    try:
        if body.stream_format == "audio" and not body.stream:
            # Whole body: exact length, and mp3 carries its gapless header.
            waveform = await until_ready(request, asyncio.ensure_future(stream.collect()), stream)
            audio = await asyncio.to_thread(render, waveform, body.speed, fmt)
            return Response(content=audio, media_type=CONTENT_TYPES[fmt], headers=plan.headers)
        # Wait for the first audio before answering, so a failure up to then is a proper error status.
        chunks = aiter(stream)
        first = await until_ready(request, asyncio.ensure_future(anext(chunks, None)), stream)
    except ClientGone:
        return Response(status_code=499)
    except SynthesisTimeout as exc:
        raise APIError(504, f"Speech was not ready within {settings.request_timeout_seconds:g} s "
                            "(QWEN_TTS_REQUEST_TIMEOUT)", type="server_error", code="timeout") from exc
    except BaseException:
        stream.cancel()
        raise
    if body.stream_format == "sse":
        return StreamingResponse(sse_body(first, chunks, stream, fmt, body.speed),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache", **plan.headers})
    return StreamingResponse(audio_body(first, chunks, stream, fmt, body.speed),
                             media_type=CONTENT_TYPES[fmt], headers=plan.headers)
