"""``POST /v1/audio/speech``: validate, route to a model, synthesize, encode."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

from fastapi import APIRouter, Request, Response

from ..audio.encode import CONTENT_TYPES
from ..audio.render import Renderer
from ..constants import ModelKind
from ..engine.interface import SpeechEngine
from ..engine.models.aligner import WordAligner
from ..engine.models.loading import LoadedModel
from ..engine.runtime.jobs import SamplingChoice, SpeechJob
from ..engine.runtime.stream import SynthesisStream
from ..settings import Settings
from ..telemetry.record import record_of
from ..text.echo import loggable
from ..text.markup import Markup, MarkupError
from ..text.prepare import PreparedText, prepare, read_markup
from ..voices.store import CallerVoices
from .errors import invalid_request
from .headers import SSML_IGNORED_HEADER, UNUSED_FIELDS_HEADER, header_list, safe_headers
from .protocol import STREAM_EVENTS, SpeechRequest, error_responses
from .state import EngineDep, SettingsDep, StateDep, VoicesDep
from .streaming import ClientGone, SpeechStreamingResponse, audio_body, awaited, sse_body
from .timing_protocol import word_timestamp_headers
from .voice_plan import VoiceAsk, plan_voice
from .word_timings import SegmentWords, WordTimer, collect_timed, display_text, plan_words, with_timings

router = APIRouter()

log = logging.getLogger(__name__)


@dataclass
class SpeechPlan:
    kind: ModelKind
    job: SpeechJob
    voice_kind: str  # builtin | saved | clone | designed (for logs)
    headers: dict[str, str] = field(default_factory=dict)
    text: str = ""  # the input without its markup: what word timings count words in
    words: list[SegmentWords] | None = None  # asked for word timings: each segment's words

    def timer(self, aligner: WordAligner | None, speed: float) -> WordTimer:
        words = self.words or []
        return WordTimer(lambda ended: words[ended.index], aligner, speed)


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


async def plan_speech(
    body: SpeechRequest, engine: SpeechEngine, settings: Settings, store: CallerVoices, timed: bool = False
) -> SpeechPlan:
    """``timed``: word timings are wanted (``word_timestamps``, or a route that always has them)."""
    voice = await plan_voice(_voice_ask(body), engine, settings, store)
    normalized = settings.normalize if body.normalize is None else body.normalize
    prepared, markup = speakable_input(voice.model, body.input, body.language, normalized, body.speed)
    job = voice.job(
        prepared,
        sampling=SamplingChoice(**body.sampling_choice()),
        max_frames=body.max_new_tokens,
        first_chunk_frames=body.initial_codec_chunk_frames or None,
        streaming=not body.whole_body,
        announce_parts=timed,
    )
    headers = safe_headers(voice.headers)
    if markup.ignored:  # SSML elements whose text was spoken but whose meaning was not applied
        headers[SSML_IGNORED_HEADER] = header_list(markup.ignored)
    if body.model_extra:  # never dropped in silence: the client learns what was not used
        headers[UNUSED_FIELDS_HEADER] = header_list(sorted(body.model_extra))
    text = display_text(markup)
    words = plan_words(text, prepared.segments) if timed else None
    return SpeechPlan(voice.kind, job, voice.voice_kind, headers, text, words)


@router.post(
    "/v1/audio/speech",
    response_class=Response,
    responses={
        200: {
            "description": "Audio in `response_format` (chunked while `stream` is true), or Server-Sent Events "
            "(`speech.audio.delta`, `speech.audio.done`, `error`; `speech.audio.timestamps` with `word_timestamps`) "
            "with `stream_format: sse`. With `word_timestamps` and a whole body: `X-Word-Timestamps` (or "
            "`X-Word-Timestamps-Omitted` past 4096 bytes) and `X-Word-Timestamps-Source`",
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
    body: SpeechRequest, request: Request, engine: EngineDep, settings: SettingsDep, store: VoicesDep, state: StateDep
) -> Response:
    if body.word_timestamps and body.stream_format == "audio" and not body.whole_body:
        raise invalid_request(
            "'word_timestamps' rides the X-Word-Timestamps header, sent before the audio: send 'stream': false "
            "(or leave it unset), or 'stream_format': 'sse' for a speech.audio.timestamps event per segment",
            param="word_timestamps",
        )
    plan = await plan_speech(body, engine, settings, store, timed=body.word_timestamps)
    stream = start_speech(plan, body, request, engine, settings)
    fmt = body.response_format
    timer = plan.timer(state.aligner, body.speed) if body.word_timestamps else None
    try:
        if body.whole_body:
            # Whole body: exact length, and mp3 carries its gapless header.
            headers = plan.headers
            if timer is None:
                waveform = await awaited(request, stream.collect(), stream, settings)
            else:
                waveform, timings = await awaited(request, collect_timed(stream, timer), stream, settings)
                headers = {**headers, **word_timestamp_headers(timings)}
            audio = await asyncio.to_thread(Renderer(fmt, body.speed, body.output_rate).whole, waveform)
            return Response(content=audio, media_type=CONTENT_TYPES[fmt], headers=headers)
        # Wait for the first audio before answering, so a failure up to then is a proper error status.
        chunks = aiter(stream if timer is None else with_timings(stream, timer))
        first = await awaited(request, anext(chunks, None), stream, settings)
    except ClientGone:
        return Response(status_code=499)
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


def start_speech(
    plan: SpeechPlan, body: SpeechRequest, request: Request, engine: SpeechEngine, settings: Settings
) -> SynthesisStream:
    """Queue the planned speech (EngineBusy: 429, errors.py), noted in the request's record."""
    record = record_of(request)
    if record is not None:
        record.model, record.voice_kind = engine.models[plan.kind].name, plan.voice_kind
        record.response_format, record.input_chars, record.speed = body.response_format, len(body.input), body.speed
        record.input_text = body.input if settings.log_input else None
    stream = engine.start(plan.kind, plan.job)
    if record is not None:
        record.stream = stream
    return stream
