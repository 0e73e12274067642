"""``POST /v1/audio/speech``: validate, route to a model, synthesize, encode."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from ..audio.encode import CONTENT_TYPES
from ..audio.reference import AudioSampleError, decode_reference
from ..audio.render import Renderer
from ..audio.source import read_audio_sample
from ..constants import ModelKind
from ..engine.admission import SynthesisTimeout
from ..engine.jobs import ReferenceAudio, SamplingChoice, SpeechJob
from ..engine.loading import LoadedModel
from ..engine.synthesis import Engine
from ..settings import Settings
from ..telemetry.record import record_of
from ..text.prepare import PreparedText, clean, prepare
from ..voices.prompt import ClonePrompt
from ..voices.speakers import is_builtin_voice, resolve_speaker, voice_names
from ..voices.store import SavedVoice, VoiceStore
from .errors import invalid_request, timeout_error
from .protocol import STREAM_EVENTS, SpeechRequest, VoiceRef, error_responses
from .routing import names_voicedesign, require_model
from .streaming import ClientGone, audio_body, sse_body, until_ready

router = APIRouter()

INSTRUCTIONS_IGNORED_HEADER = "X-Instructions-Ignored"
VOICE_IGNORED_HEADER = "X-Voice-Ignored"


@dataclass
class VoicePlan:
    """Which model speaks, and with what voice (everything of a speech job but its text)."""

    kind: ModelKind
    model: LoadedModel
    language: str
    voice_kind: str  # builtin | saved | clone | designed (for logs)
    speaker: str | None = None
    instructions: str | None = None
    reference: ReferenceAudio | None = None
    voice_prompt: ClonePrompt | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def job(self, text: PreparedText, **extra) -> SpeechJob:
        return SpeechJob(
            text=text,
            language=self.language,
            speaker=self.speaker,
            instructions=self.instructions,
            reference=self.reference,
            voice_prompt=self.voice_prompt,
            **extra,
        )


@dataclass
class SpeechPlan:
    kind: ModelKind
    job: SpeechJob
    voice_kind: str  # builtin | saved | clone | designed (for logs)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class VoiceAsk:
    """What a request says about its voice, from ``/v1/audio/speech`` or a WebSocket
    ``session.config`` (whose fields have other names: ``param`` maps ours to theirs)."""

    voice: str | VoiceRef
    language: str
    instructions: str | None = None
    audio_sample: str | None = None
    audio_sample_text: str | None = None
    task_type: str | None = None  # CustomVoice | Base | VoiceDesign, or None: routed by model and voice
    model: str | None = None  # picks VoiceDesign by its id or alias (api/routing.py)
    voice_given: bool = True  # False: ``voice`` is the default, not the client's
    param: dict[str, str] = field(default_factory=dict)

    def name(self, field_name: str) -> str:
        return self.param.get(field_name, field_name)


def _check_language(model: LoadedModel, ask: VoiceAsk) -> None:
    if ask.language.lower() not in model.languages:
        raise invalid_request(
            f"language {ask.language!r} is not supported by model {model.name}", param=ask.name("language")
        )


async def _reference(ask: VoiceAsk, settings: Settings, model: LoadedModel) -> ReferenceAudio:
    assert ask.audio_sample is not None
    try:
        data = await read_audio_sample(ask.audio_sample, settings)
        waveform = await asyncio.to_thread(decode_reference, data, settings.audio_sample_max_seconds)
    except AudioSampleError as exc:
        raise invalid_request(str(exc), param=ask.name("audio_sample"), code="invalid_audio_sample") from exc
    return ReferenceAudio(
        waveform=waveform, transcript=clean(ask.audio_sample_text or "", model.control_tokens) or None
    )


def _speakable(model: LoadedModel, body: SpeechRequest) -> PreparedText:
    """The input, cleaned and cut into segments with their frame budgets (text/prepare.py)."""
    prepared = prepare(body.input, model.control_tokens, model.max_new_tokens)
    if prepared is None:
        raise invalid_request(
            "Invalid 'input': nothing left to speak once the model's control tokens are removed",
            param="input",
            code="invalid_value",
        )
    return prepared


async def _saved_voice(ask: VoiceAsk, store: VoiceStore) -> SavedVoice | None:
    """The saved voice a request names: ``{"id": ...}``, or a string that is not a built-in
    voice and matches a saved voice's id or name."""
    voice = ask.voice
    if isinstance(voice, VoiceRef):
        saved = await asyncio.to_thread(store.get, voice.id.strip())
        if saved is None:
            message = f"no saved voice with id {voice.id!r}"
            raise invalid_request(message, param=ask.name("voice"), code="voice_not_found")
        return saved
    if is_builtin_voice(voice):
        return None
    return await asyncio.to_thread(store.find, voice)


def _design_plan(ask: VoiceAsk, engine: Engine) -> VoicePlan:
    """VoiceDesign: the voice is whatever ``instructions`` describe."""
    if ask.task_type not in (None, "VoiceDesign"):
        raise invalid_request(
            f"model {ask.model!r} is the VoiceDesign model; task_type {ask.task_type} needs another model",
            param=ask.name("task_type"),
        )
    if ask.audio_sample is not None:
        raise invalid_request(
            f"VoiceDesign designs a voice from instructions; {ask.name('audio_sample')} clones one (task_type Base)",
            param=ask.name("audio_sample"),
        )
    model = require_model(engine, ModelKind.VOICEDESIGN, ask.name("task_type" if ask.task_type else "model"))
    _check_language(model, ask)
    instructions = clean(ask.instructions or "", model.control_tokens) or None
    if instructions is None:
        raise invalid_request(
            "VoiceDesign needs 'instructions': a description of the voice, "
            "e.g. 'a warm, slightly husky alto, speaking slowly'",
            param=ask.name("instructions"),
            code="missing_required_parameter",
        )
    headers = {VOICE_IGNORED_HEADER: "VoiceDesign speaks in the voice the instructions describe"}
    return VoicePlan(
        ModelKind.VOICEDESIGN,
        model,
        ask.language,
        "designed",
        instructions=instructions,
        headers=headers if ask.voice_given else {},
    )


async def plan_voice(ask: VoiceAsk, engine: Engine, settings: Settings, store: VoiceStore) -> VoicePlan:
    if ask.task_type == "VoiceDesign" or names_voicedesign(engine, ask.model):
        return _design_plan(ask, engine)
    instructions = (ask.instructions or "").strip() or None

    if ask.audio_sample is not None:
        # Specification: audio_sample routes to Base; voice and instructions are ignored.
        if ask.task_type == "CustomVoice":
            raise invalid_request(
                f"task_type CustomVoice speaks built-in voices; {ask.name('audio_sample')} clones (task_type Base)",
                param=ask.name("task_type"),
            )
        model = require_model(engine, ModelKind.BASE, ask.name("audio_sample"))
        _check_language(model, ask)
        headers = (
            {INSTRUCTIONS_IGNORED_HEADER: "voice cloning (audio_sample) does not use instructions"}
            if instructions
            else {}
        )
        reference = await _reference(ask, settings, model)
        return VoicePlan(ModelKind.BASE, model, ask.language, "clone", reference=reference, headers=headers)

    saved = None if ask.task_type == "CustomVoice" else await _saved_voice(ask, store)
    if saved is not None:
        model = require_model(engine, ModelKind.BASE, ask.name("voice"))
        _check_language(model, ask)
        headers = {INSTRUCTIONS_IGNORED_HEADER: "saved (cloned) voices do not use instructions"} if instructions else {}
        return VoicePlan(ModelKind.BASE, model, ask.language, "saved", voice_prompt=saved.prompt, headers=headers)

    if ask.task_type == "Base":
        raise invalid_request(
            f"task_type Base speaks saved voices or {ask.name('audio_sample')}; {ask.voice!r} is neither",
            param=ask.name("voice"),
            code="invalid_voice",
        )
    if isinstance(ask.voice, VoiceRef):  # task_type CustomVoice with a saved voice's id
        raise invalid_request("task_type CustomVoice speaks built-in voices", param=ask.name("voice"))
    model = engine.model(ModelKind.CUSTOMVOICE)
    speaker = resolve_speaker(ask.voice, model.speakers) if model is not None else None
    if speaker is None:
        if model is None and is_builtin_voice(ask.voice):
            require_model(engine, ModelKind.CUSTOMVOICE, ask.name("voice"))
        names = (voice_names(model.speakers) if model is not None else []) + [
            v.name for v in await asyncio.to_thread(store.list)
        ]
        raise invalid_request(
            f"unknown voice {ask.voice!r}; available: {', '.join(names) or 'none'}",
            param=ask.name("voice"),
            code="invalid_voice",
        )
    _check_language(model, ask)
    headers: dict[str, str] = {}
    if instructions and not model.supports_instructions:
        headers[INSTRUCTIONS_IGNORED_HEADER] = f"model {model.name} (0.6B) does not support instructions"
        instructions = None
    instructions = clean(instructions or "", model.control_tokens) or None
    kind = ModelKind.CUSTOMVOICE
    return VoicePlan(kind, model, ask.language, "builtin", speaker, instructions=instructions, headers=headers)


async def plan_speech(body: SpeechRequest, engine: Engine, settings: Settings, store: VoiceStore) -> SpeechPlan:
    ask = VoiceAsk(
        voice=body.voice,
        language=body.language,
        instructions=body.instructions,
        audio_sample=body.audio_sample,
        audio_sample_text=body.audio_sample_text,
        task_type=body.task_type,
        model=body.model,
        voice_given="voice" in body.model_fields_set,
    )
    voice = await plan_voice(ask, engine, settings, store)
    job = voice.job(_speakable(voice.model, body), sampling=SamplingChoice(**body.sampling_choice()))
    return SpeechPlan(voice.kind, job, voice.voice_kind, voice.headers)


@router.post(
    "/v1/audio/speech",
    response_class=Response,
    responses={
        200: {
            "description": "Audio in `response_format` (chunked while `stream` is true), or Server-Sent Events "
            "(`speech.audio.delta`, `speech.audio.done`, `error`) with `stream_format: sse`",
            "content": {
                **{media: {} for media in sorted(set(CONTENT_TYPES.values()))},
                "text/event-stream": {
                    "schema": {"oneOf": [{"$ref": f"#/components/schemas/{event.__name__}"} for event in STREAM_EVENTS]}
                },
            },
        },
        **error_responses(400, 429, 500, 503, 504),
    },
)
async def create_speech(body: SpeechRequest, request: Request) -> Response:
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings
    plan = await plan_speech(body, engine, settings, request.app.state.voices)
    record = record_of(request)
    if record is not None:
        record.model, record.voice_kind = engine.models[plan.kind].name, plan.voice_kind
        record.response_format, record.input_chars, record.speed = body.response_format, len(body.input), body.speed
        record.input_text = body.input if settings.log_input else None
    stream = engine.start(plan.kind, plan.job)  # EngineBusy: 429 (errors.py)
    if record is not None:
        record.stream = stream
    fmt = body.response_format
    try:
        if body.stream_format == "audio" and not body.stream:
            # Whole body: exact length, and mp3 carries its gapless header.
            waveform = await until_ready(request, asyncio.ensure_future(stream.collect()), stream)
            audio = await asyncio.to_thread(Renderer(fmt, body.speed).whole, waveform)
            return Response(content=audio, media_type=CONTENT_TYPES[fmt], headers=plan.headers)
        # Wait for the first audio before answering, so a failure up to then is a proper error status.
        chunks = aiter(stream)
        first = await until_ready(request, asyncio.ensure_future(anext(chunks, None)), stream)
    except ClientGone:
        return Response(status_code=499)
    except SynthesisTimeout as exc:
        raise timeout_error(settings) from exc
    except BaseException:
        stream.cancel()
        raise
    if body.stream_format == "sse":
        return StreamingResponse(
            sse_body(first, chunks, stream, fmt, body.speed),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **plan.headers},
        )
    return StreamingResponse(
        audio_body(first, chunks, stream, fmt, body.speed), media_type=CONTENT_TYPES[fmt], headers=plan.headers
    )
