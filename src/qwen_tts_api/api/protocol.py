"""Every JSON body the server reads or sends, as pydantic models: routes name them as
``response_model`` / ``responses``, so ``/openapi.json`` describes what actually goes over
the wire, errors included."""

from __future__ import annotations

import json
from typing import ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import models_json_schema
from pydantic_core import PydanticSerializationError

from ..audio.encode import DEFAULT_SAMPLE_RATES, RESPONSE_FORMATS, UNSUPPORTED_RATES
from ..audio.resample import SAMPLE_RATES
from ..constants import SAMPLE_RATE, TaskType
from ..text.echo import quoted
from ..voices.speakers import DEFAULT_VOICE

MAX_INPUT_CHARS = 4096

# Languages of the specification; "Auto" lets the model decide.
LANGUAGES = [
    "Auto",
    "English",
    "Chinese",
    "Japanese",
    "Korean",
    "French",
    "German",
    "Spanish",
    "Italian",
    "Portuguese",
    "Russian",
]
_LANGUAGE_BY_LOWER = {name.lower(): name for name in LANGUAGES}

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm", "ulaw", "alaw"]
assert set(RESPONSE_FORMATS) == set(get_args(ResponseFormat))  # one list of formats


def canonical_language(value: str) -> str:
    canonical = _LANGUAGE_BY_LOWER.get(value.strip().lower())
    if canonical is None:
        raise ValueError(f"unsupported language {quoted(value)}; use one of {', '.join(LANGUAGES)}")
    return canonical


def checked_sample_rate(value: int | None, response_format: str | None) -> int | None:
    """``sample_rate``: one of SAMPLE_RATES, and one the format's encoder can take."""
    if value is None:
        return None
    if value not in SAMPLE_RATES:
        raise ValueError(f"must be one of {', '.join(map(str, SAMPLE_RATES))}")
    if value in UNSUPPORTED_RATES.get(response_format or "", ()):
        raise ValueError(f"{response_format} cannot be encoded at {value} Hz")
    return value


def output_rate(response_format: str, sample_rate: int | None) -> int:
    """The rate a response is sent at: as asked, else the format's own (G.711: 8 kHz), else 24 kHz."""
    return sample_rate or DEFAULT_SAMPLE_RATES.get(response_format, SAMPLE_RATE)


class VoiceRef(BaseModel):
    """OpenAI's saved custom voice reference: ``{"id": "voice_..."}``."""

    id: str = Field(min_length=1)


SEED_MAX = 2**63 - 1
MAX_FIRST_CHUNK = 96  # initial_codec_chunk_frames: frames of the first audio chunk, at most


class SamplingFields(BaseModel):
    """Qwen extras: how tokens are chosen. Unset: the model's generation config."""

    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)  # 0: greedy; above 0: sampling
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1, le=4096)
    repetition_penalty: float | None = Field(default=None, ge=1.0, le=2.0)

    def sampling_choice(self) -> dict:
        return self.model_dump(include={"seed", "temperature", "top_p", "top_k", "repetition_penalty"})


class SpeechChecks(BaseModel):
    """Checks that speech on HTTP and on the WebSocket share: the language, and a sample rate
    the response format can take (``response_format`` is declared before ``sample_rate``)."""

    @field_validator("language", check_fields=False)
    @classmethod
    def _known_language(cls, value: str) -> str:
        return canonical_language(value)

    @field_validator("sample_rate", check_fields=False)
    @classmethod
    def _supported_rate(cls, value: int | None, info) -> int | None:
        return checked_sample_rate(value, info.data.get("response_format"))


class SpeechRequest(SamplingFields, SpeechChecks):
    # Unknown fields are accepted (clients send extras over time) and named in the response's
    # X-Unused-Fields header, never dropped in silence.
    model_config = ConfigDict(extra="allow")

    # Required by the OpenAI contract. The specification accepts any value for compatibility and
    # routes by voice / audio_sample; only the VoiceDesign model's id or alias picks a model
    # (api/routing.py).
    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str | VoiceRef = DEFAULT_VOICE
    response_format: ResponseFormat = "mp3"
    # Ours and vLLM-Omni's: the output's sample rate (unset: 24000, or 8000 for ulaw and alaw).
    sample_rate: int | None = None
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    language: str = "Auto"
    instructions: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    audio_sample: str | None = None
    audio_sample_text: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    stream_format: Literal["audio", "sse"] = "audio"
    # vLLM-Omni's: the family to speak with (VoiceDesign: `instructions` describe the voice).
    # Unset: routed by `model`, `voice` and `audio_sample`.
    task_type: TaskType | None = None
    # Ours: false waits for the whole utterance and answers with one complete body.
    stream: bool = True
    # vLLM-Omni's names, as its clients send them (the same meaning as on our WebSocket).
    speaker: str | None = None  # `voice`
    ref_audio: str | None = None  # `audio_sample`
    ref_text: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)  # `audio_sample_text`
    x_vector_only_mode: bool | None = None  # true: clone from the speaker embedding alone, ignoring ref_text
    max_new_tokens: int | None = Field(default=None, ge=1)  # frames per generation, below the model's limit
    initial_codec_chunk_frames: int | None = Field(default=None, ge=0, le=MAX_FIRST_CHUNK)  # 0: the server's
    # A raw x-vector (the Base model's width): that voice, as from a reference's embedding alone.
    speaker_embedding: list[float] | None = Field(default=None, max_length=8192)
    # Ours: numbers, dates, money and units written out in `language` (unset: QWEN_TTS_NORMALIZE).
    normalize: bool | None = None
    # vLLM-Omni's: when each word is heard (README, "Word timings"): the X-Word-Timestamps header
    # of a whole body (`stream` unset means false then), or speech.audio.timestamps events (SSE).
    word_timestamps: bool = False

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain text to speak, not only whitespace")
        return value

    @property
    def whole_body(self) -> bool:
        """One complete audio body (``stream`` false), not audio sent as it is made. Word
        timings ride a header, so with them an unset ``stream`` is false (as vLLM-Omni's)."""
        streamed = self.stream if "stream" in self.model_fields_set or not self.word_timestamps else False
        return self.stream_format == "audio" and not streamed

    @property
    def output_rate(self) -> int:
        return output_rate(self.response_format, self.sample_rate)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen"
    # Ours: the family a model (or an alias) speaks with; absent for "qwen3-tts", which routes by voice.
    task_type: TaskType | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ModelId(BaseModel):
    id: str


class AudioModelList(ModelList):
    """``GET /v1/audio/models``: OpenAI's list, and ``models`` as Open WebUI reads it."""

    models: list[ModelId]


# ---------- errors ----------


class ErrorDetail(BaseModel):
    message: str
    type: str  # invalid_request_error, authentication_error, not_found_error, rate_limit_error, server_error
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """OpenAI's error envelope, for every failure."""

    error: ErrorDetail


_ERROR_DESCRIPTIONS = {
    400: "Invalid request: `param` names the field",
    401: "Missing or invalid API key (when QWEN_TTS_API_KEYS is set)",
    404: "Unknown model, voice or route",
    413: "Body larger than QWEN_TTS_MAX_BODY_BYTES (JSON, a form) or QWEN_TTS_AUDIO_SAMPLE_MAX_BYTES (an upload)",
    429: "Queue full: retry after the seconds in the Retry-After header",
    500: "Generation failed for this request (the server goes on)",
    503: "The engine has stopped: the server must be restarted",
    504: "Not done within QWEN_TTS_REQUEST_TIMEOUT",
}


def error_responses(*statuses: int) -> dict[int | str, dict]:
    """``responses=`` for a route: the error envelope for each status (401 always: API keys)."""
    return {
        status: {"model": ErrorResponse, "description": _ERROR_DESCRIPTIONS[status]}
        for status in sorted({401, *statuses})
    }


# ---------- voices ----------


VoiceType = Literal["audio_sample", "prompt", "builtin", "alias"]


class VoiceCard(BaseModel):
    """OpenAI's ``audio.voice`` object: saved voices are ``audio_sample`` (cloned from an
    upload) or ``prompt`` (designed from a description, kept in ``prompt``); the built-in
    speakers (``builtin``) and OpenAI's names for them (``alias``, with ``speaker``) are ours."""

    object: Literal["audio.voice"] = "audio.voice"
    id: str
    name: str
    created_at: int | None = None  # saved voices
    type: VoiceType
    prompt: str | None = None  # designed voices: the description they were designed from
    speaker: str | None = None  # aliases: the built-in speaker they stand for


class VoiceEntry(BaseModel):
    """A voice as Kokoro-FastAPI lists it, which Open WebUI and LiveKit's Kokoro plugin read."""

    id: str  # what to send as ``voice``
    name: str  # for a menu: the speaker an OpenAI name stands for is in it
    type: VoiceType


class VoiceList(BaseModel):
    object: Literal["list"] = "list"
    data: list[VoiceCard]
    voices: list[VoiceEntry]  # the same voices, in the Kokoro-FastAPI shape


class VoiceUpload(BaseModel):
    """``POST /v1/audio/voices`` as multipart/form-data: a voice cloned from a sample. (The
    route reads the body itself, to refuse an oversized upload early; this model is its
    description.)"""

    name: str
    audio_sample: bytes = Field(json_schema_extra={"format": "binary"})  # the file
    type: Literal["audio_sample"] = "audio_sample"
    consent: str | None = None
    audio_sample_text: str | None = None  # ours: the sample's transcript (in-context cloning)


class VoiceDesign(BaseModel):
    """``POST /v1/audio/voices`` designing a voice (multipart, a form or JSON): OpenAI's
    field names, or ours in brackets (api/voice_design.py)."""

    name: str
    type: Literal["prompt"] = "prompt"
    prompt: str = Field(max_length=MAX_INPUT_CHARS)  # or `description`: the voice, in words
    script_hint: str | None = None  # or `sample_text`: what the voice reads to be kept
    language: str = "Auto"  # the sample's; Auto: the description's script
    seed: int | None = Field(default=None, ge=0, le=SEED_MAX)
    consent: str | None = None


VOICE_CREATION = (VoiceUpload, VoiceDesign)


def voice_creation_body() -> dict:
    """``openapi_extra`` for ``POST /v1/audio/voices``: its two request bodies."""
    refs = [{"$ref": f"#/components/schemas/{model.__name__}"} for model in VOICE_CREATION]
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": {"oneOf": refs}},
                "application/json": {"schema": refs[1]},
            },
        }
    }


class VoiceDeleted(BaseModel):
    object: Literal["audio.voice.deleted"] = "audio.voice.deleted"
    id: str
    deleted: bool = True


# ---------- speech as Server-Sent Events (stream_format "sse") ----------


class SpeechUsage(BaseModel):
    input_tokens: int  # text tokens read
    output_tokens: int  # codec frames made
    total_tokens: int


class SpeechAudioDelta(BaseModel):
    type: Literal["speech.audio.delta"] = "speech.audio.delta"
    audio: str  # base64 of the next piece of the encoded stream


class SpeechAudioDone(BaseModel):
    type: Literal["speech.audio.done"] = "speech.audio.done"
    usage: SpeechUsage


class SpeechStreamError(BaseModel):
    type: Literal["error"] = "error"
    error: ErrorDetail


class WordTiming(BaseModel):
    """A word and when it is heard, in seconds from the start of the response's audio."""

    word: str
    start: float
    end: float


class SpeechAudioTimestamps(BaseModel):
    """``word_timestamps: true``: one segment's words, after that segment's audio."""

    type: Literal["speech.audio.timestamps"] = "speech.audio.timestamps"
    segment_index: int
    words: list[WordTiming]
    estimated: bool  # spread by syllables over the segment's audio, not measured by the aligner


STREAM_EVENTS = (SpeechAudioDelta, SpeechAudioDone, SpeechAudioTimestamps, SpeechStreamError)


def stream_event_schemas() -> dict[str, dict]:
    """JSON schemas of the SSE events, the WebSocket messages and the voice-creation bodies
    (and what they contain), for ``components.schemas``: none is a route's model, so FastAPI
    does not collect them."""
    _, top = models_json_schema(
        [(model, "serialization") for model in (*STREAM_EVENTS, *LIVE_MESSAGES, *VOICE_CREATION)],
        ref_template="#/components/schemas/{model}",
    )
    return top["$defs"]


# ---------- text streamed in over a WebSocket (/v1/audio/speech/stream) ----------
# The wire protocol of vLLM-Omni's Qwen3-TTS streaming endpoint, which LiveKit's Baseten
# plugin speaks; docs/CLIENTS.md ("Voice agents") describes it.

LIVE_SAMPLE_RATE = 24000


class LiveSessionConfig(SamplingFields, SpeechChecks):
    """``session.config``: sticky for the socket until the next one. Unknown fields are an
    error (the event names them), unlike HTTP: a misspelt field here would go unnoticed
    for the whole session."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["session.config"] = "session.config"
    model: str | None = None  # routes as on HTTP: only VoiceDesign's id or alias picks a model
    voice: str | VoiceRef = DEFAULT_VOICE
    task_type: TaskType | None = None
    language: str = "Auto"
    instructions: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    response_format: ResponseFormat = "wav"
    sample_rate: int | None = None  # as on HTTP: unset, 24000 (8000 for ulaw and alaw)
    stream_audio: bool = False
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    initial_codec_chunk_frames: int | None = Field(default=None, ge=0, le=MAX_FIRST_CHUNK)
    max_new_tokens: int | None = Field(default=None, ge=1)
    ref_audio: str | None = None
    ref_text: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    x_vector_only_mode: bool | None = None
    normalize: bool | None = None  # as on HTTP (unset: QWEN_TTS_NORMALIZE)
    # Word timings (README, "Word timings"). vLLM-Omni's: audio as JSON audio.chunk messages, each
    # part's words in a last one (stream_audio true). LiveKit's Baseten plugin: `timestamp_type`
    # "word", the words in audio.done ("sync") or in an audio.timestamps message ("async").
    word_timestamps: bool = False
    timestamp_type: Literal["word"] | None = None
    timestamp_transport_strategy: Literal["sync", "async"] = "sync"

    @property
    def output_rate(self) -> int:
        return output_rate(self.response_format, self.sample_rate)

    @property
    def timed(self) -> bool:
        return self.word_timestamps or self.timestamp_type == "word"

    @field_validator("word_timestamps")
    @classmethod
    def _timestamps_ride_pcm_chunks(cls, value: bool, info) -> bool:
        if value and not info.data.get("stream_audio"):
            raise ValueError(
                "word_timestamps true sends each part's words in its JSON audio.chunk stream: it needs stream_audio "
                "true (and response_format 'pcm'); timestamp_type 'word' works with either"
            )
        return value

    @field_validator("stream_audio")
    @classmethod
    def _stream_audio_is_pcm(cls, value: bool, info) -> bool:
        if value and info.data.get("response_format") != "pcm":
            raise ValueError("stream_audio true sends raw PCM: response_format must be 'pcm'")
        return value

    @field_validator("speed")
    @classmethod
    def _native_speed_when_streaming(cls, value: float, info) -> float:
        if info.data.get("stream_audio") and value != 1.0:
            raise ValueError("stream_audio true plays at the native speed: speed must be 1.0")
        return value


class LiveInputText(BaseModel):
    """``input.text``: any fragment of the turn's text, down to single tokens."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["input.text"] = "input.text"
    text: str = Field(max_length=MAX_INPUT_CHARS)


class LiveAudioStart(BaseModel):
    """A part of the turn begins; its audio follows as binary frames."""

    type: Literal["audio.start"] = "audio.start"
    utterance_index: int  # which turn (input.done) of the socket, from 0
    sentence_index: int  # which part of the turn, from 0
    sentence_text: str  # the part's text received so far (it may grow while it is spoken)
    format: ResponseFormat
    sample_rate: int = LIVE_SAMPLE_RATE
    channels: int = 1
    word_timestamps: bool | None = None  # vLLM-Omni's: the part's audio comes as audio.chunk messages


class LiveAudioDone(BaseModel):
    type: Literal["audio.done"] = "audio.done"
    utterance_index: int
    sentence_index: int
    sentence_text: str  # the part's whole text
    total_bytes: int
    error: bool = False  # the part failed (an ``error`` event says why)
    timestamp_info: TimestampInfo | None = None  # timestamp_type "word", "sync": the part's words


class WordTimestamp(BaseModel):
    """vLLM-Omni's word timing: milliseconds."""

    word: str
    start_ms: int
    end_ms: int


class LiveAudioChunk(BaseModel):
    """vLLM-Omni's ``word_timestamps``: a part's PCM as base64 JSON; its last chunk carries no
    audio and the part's words (times from the part's start; ``[]``: nothing spoken)."""

    ALWAYS: ClassVar[frozenset[str]] = frozenset({"timestamps"})  # null: not the part's last chunk

    type: Literal["audio.chunk"] = "audio.chunk"
    utterance_index: int
    sentence_index: int
    chunk_id: int
    audio_b64: str
    timestamps: list[WordTimestamp] | None = None
    estimated: bool | None = None  # ours: the words' times are spread by syllables


class WordAlignment(BaseModel):
    words: list[str]
    word_start_times_seconds: list[float]  # from the start of the part's audio (its audio.start)
    word_end_times_seconds: list[float]


class TimestampInfo(BaseModel):
    """LiveKit's Baseten plugin reads ``word_alignment``; ``estimated`` is ours."""

    word_alignment: WordAlignment
    estimated: bool


class LiveAudioTimestamps(BaseModel):
    """``timestamp_type`` "word" with ``timestamp_transport_strategy`` "async": a part's words,
    sent as soon as they are timed (after its audio, maybe after its audio.done)."""

    type: Literal["audio.timestamps"] = "audio.timestamps"
    utterance_index: int
    sentence_index: int
    timestamp_info: TimestampInfo


class LiveSessionDone(BaseModel):
    """The answer to ``input.done``: everything received has been spoken."""

    type: Literal["session.done"] = "session.done"
    utterance_index: int
    total_sentences: int
    usage: SpeechUsage | None = None


class LiveError(BaseModel):
    type: Literal["error"] = "error"
    message: str
    code: str | None = None
    param: str | None = None
    retry_after: int | None = None  # server_busy: seconds, as Retry-After on HTTP


def json_text(message: BaseModel) -> str:
    """A message as JSON text, unset fields left out (but those a message always carries,
    its ``ALWAYS``): any string fits (one that cannot be UTF-8, a lone surrogate, goes out as
    a ``\\u`` escape)."""
    keep: frozenset[str] = getattr(message, "ALWAYS", frozenset())
    if keep:
        data = message.model_dump()
        return json.dumps({k: v for k, v in data.items() if v is not None or k in keep}, ensure_ascii=True)
    try:
        return message.model_dump_json(exclude_none=True)
    except PydanticSerializationError:
        return json.dumps(message.model_dump(exclude_none=True), ensure_ascii=True)


# What goes over /v1/audio/speech/stream besides binary audio, both ways.
LIVE_MESSAGES = (
    LiveSessionConfig,
    LiveInputText,
    LiveAudioStart,
    LiveAudioChunk,
    LiveAudioDone,
    LiveAudioTimestamps,
    LiveSessionDone,
    LiveError,
)


# ---------- liveness and readiness ----------


class HealthStatus(BaseModel):
    status: Literal["ok", "failed"]
    error: str | None = None  # why the engine cannot generate any more


class ReadyStatus(BaseModel):
    status: Literal["ready", "starting", "failed"]
    models: list[str]
    warmed_up: bool
    error: str | None = None
    # Word timings: "aligner" (ALIGNER_MODEL_PATH loaded) or "estimate" (none, or it failed to load)
    word_timings: Literal["aligner", "estimate"] = "estimate"
    aligner: str | None = None  # the aligner's name
    aligner_error: str | None = None  # why the configured aligner is not in use
    # How the steps run: "compiled" where QWEN_TTS_COMPILE's graphs run (compiled during the
    # warm-up), else "eager" (off, or a graph failed and the eager step took over)
    step: Literal["eager", "compiled"] = "eager"
