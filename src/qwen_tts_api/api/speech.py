"""``POST /v1/audio/speech``: validate, route to a model, synthesize, encode."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response

from ..audio.encode import CONTENT_TYPES
from ..audio.render import Renderer
from ..constants import ModelKind
from ..engine.errors import SynthesisTimeout
from ..engine.interface import SpeechEngine
from ..engine.models.loading import LoadedModel
from ..engine.runtime.jobs import SamplingChoice, SpeechJob
from ..settings import Settings
from ..telemetry.record import record_of
from ..text.echo import loggable
from ..text.markup import Markup, MarkupError
from ..text.prepare import PreparedText, prepare, read_markup
from ..voices.store import CallerVoices
from .errors import invalid_request, timeout_error
from .headers import SSML_IGNORED_HEADER, UNUSED_FIELDS_HEADER, header_list, safe_headers
from .protocol import STREAM_EVENTS, SpeechRequest, error_responses
from .state import EngineDep, SettingsDep, VoicesDep
from .streaming import ClientGone, SpeechStreamingResponse, audio_body, sse_body, until_ready
from .voice_plan import VoiceAsk, plan_voice

router = APIRouter()

log = logging.getLogger(__name__)


@dataclass
class SpeechPlan:
    kind: ModelKind
    job: SpeechJob
    voice_kind: str  # builtin | saved | clone | designed (for logs)
    headers: dict[str, str] = field(default_factory=dict)


def speakable_input(
    model: LoadedModel, text: str, language: str, normalized: bool, speed: float, param: str = "input"
) -> tuple[PreparedText, Markup]:
    """Input's markup read (pauses, SSML), then cleaned, normalised and cut into segments
    with their frame budgets (text/prepare.py); a 400 on ``param`` when it cannot be spoken.
    For ``/v1/audio/speech`` and a WebSocket SSML turn alike."""
    try:
        markup = read_markup(text, language)
    except MarkupError as exc:
        raise invalid_request(f"Invalid '{param}': {exc}", param=param, code="invalid_markup") from exc
    prepared = prepare(markup, model.control_tokens, model.max_new_tokens, language, normalized, speed)
    if prepared is None:
        raise invalid_request(
            f"Invalid '{param}': nothing left to speak once the markup and the model's control tokens are removed",
            param=param,
            code="invalid_value",
        )
    for segment in prepared.segments:
        if segment.language is not None and segment.language.lower() not in model.languages:
            raise invalid_request(
                f"Invalid '{param}': <lang> {segment.language} is not spoken by model {model.name}", param=param
            )
    log.debug("speaking: %s", loggable(prepared.text))
    return prepared, markup


def _one_of(body: SpeechRequest, ours: str, theirs: str):
    """A field sent under our name or vLLM-Omni's (``theirs``); both, and different, is a 400."""
    mine, other = getattr(body, ours), getattr(body, theirs)
    if ours in body.model_fields_set and other is not None and mine != other:
        raise invalid_request(f"'{theirs}' is vLLM-Omni's name for '{ours}'; send one of them", param=theirs)
    return other if other is not None else mine


def _voice_ask(body: SpeechRequest) -> VoiceAsk:
    audio_sample = _one_of(body, "audio_sample", "ref_audio")
    transcript = None if body.x_vector_only_mode else _one_of(body, "audio_sample_text", "ref_text")
    named = "ref_audio" if body.ref_audio is not None else "audio_sample"
    text_named = "ref_text" if body.ref_text is not None else "audio_sample_text"
    return VoiceAsk(
        voice=_one_of(body, "voice", "speaker"),
        language=body.language,
        instructions=body.instructions,
        audio_sample=audio_sample,
        audio_sample_text=transcript,
        task_type=body.task_type,
        model=body.model,
        voice_given="voice" in body.model_fields_set or body.speaker is not None,
        speaker_embedding=body.speaker_embedding,
        param={
            "audio_sample": named,
            "audio_sample_text": text_named,
            "speaker_embedding": "speaker_embedding",
        },
    )


async def plan_speech(body: SpeechRequest, engine: SpeechEngine, settings: Settings, store: CallerVoices) -> SpeechPlan:
    voice = await plan_voice(_voice_ask(body), engine, settings, store)
    normalized = settings.normalize if body.normalize is None else body.normalize
    prepared, markup = speakable_input(voice.model, body.input, body.language, normalized, body.speed)
    job = voice.job(
        prepared,
        sampling=SamplingChoice(**body.sampling_choice()),
        max_frames=body.max_new_tokens,
        first_chunk_frames=body.initial_codec_chunk_frames or None,
        streaming=not body.whole_body,
    )
    headers = safe_headers(voice.headers)
    if markup.ignored:  # SSML elements whose text was spoken but whose meaning was not applied
        headers[SSML_IGNORED_HEADER] = header_list(markup.ignored)
    if body.model_extra:  # never dropped in silence: the client learns what was not used
        headers[UNUSED_FIELDS_HEADER] = header_list(sorted(body.model_extra))
    return SpeechPlan(voice.kind, job, voice.voice_kind, headers)


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
        **error_responses(400, 413, 429, 500, 503, 504),
    },
)
async def create_speech(
    body: SpeechRequest, request: Request, engine: EngineDep, settings: SettingsDep, store: VoicesDep
) -> Response:
    plan = await plan_speech(body, engine, settings, store)
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
        if body.whole_body:
            # Whole body: exact length, and mp3 carries its gapless header.
            waveform = await until_ready(request, asyncio.ensure_future(stream.collect()), stream)
            audio = await asyncio.to_thread(Renderer(fmt, body.speed, body.output_rate).whole, waveform)
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
        return SpeechStreamingResponse(
            sse_body(first, chunks, stream, fmt, body.speed, body.output_rate),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", **plan.headers},
        )
    return SpeechStreamingResponse(
        audio_body(first, chunks, stream, fmt, body.speed, body.output_rate),
        media_type=CONTENT_TYPES[fmt],
        headers=plan.headers,
    )
