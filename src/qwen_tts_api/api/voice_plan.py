"""Which model speaks a request, and in what voice: one plan for ``/v1/audio/speech`` and the
WebSocket ``session.config`` alike (``VoiceAsk`` names each field as its route calls it)."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

from ..audio.reference import AudioSampleError, decode_reference
from ..audio.source import read_audio_sample
from ..constants import ModelKind
from ..engine.interface import SpeechEngine
from ..engine.models.loading import LoadedModel
from ..engine.runtime.jobs import ReferenceAudio, SpeechJob
from ..settings import Settings
from ..text.echo import quoted
from ..text.prepare import PreparedText, clean
from ..voices.prompt import ClonePrompt
from ..voices.speakers import is_builtin_voice, resolve_speaker, voice_names
from ..voices.store import CallerVoices, SavedVoice
from .errors import invalid_request
from .protocol import VoiceRef
from .routing import names_voicedesign, require_model

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
    speaker_embedding: list[float] | None = None  # vLLM-Omni's: a raw x-vector for the Base model
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


async def _saved_voice(ask: VoiceAsk, store: CallerVoices) -> SavedVoice | None:
    """The saved voice a request names: ``{"id": ...}``, or a string that is not a built-in
    voice and matches a saved voice's id or name."""
    voice = ask.voice
    if isinstance(voice, VoiceRef):
        saved = await asyncio.to_thread(store.get, voice.id.strip())
        if saved is None:
            message = f"no saved voice with id {quoted(voice.id)}"
            raise invalid_request(message, param=ask.name("voice"), code="voice_not_found")
        return saved
    if is_builtin_voice(voice):
        return None
    return await asyncio.to_thread(store.find, voice)


def _design_plan(ask: VoiceAsk, engine: SpeechEngine) -> VoicePlan:
    """VoiceDesign: the voice is whatever ``instructions`` describe."""
    if ask.task_type not in (None, "VoiceDesign"):
        raise invalid_request(
            f"model {quoted(ask.model)} is the VoiceDesign model; task_type {ask.task_type} needs another model",
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


def _embedding_plan(ask: VoiceAsk, engine: SpeechEngine, instructions: str | None) -> VoicePlan:
    """vLLM-Omni's ``speaker_embedding``: the Base model speaks with that x-vector, as it
    would with the embedding of a reference (x_vector_only_mode)."""
    param = ask.name("speaker_embedding")
    if ask.audio_sample is not None:
        raise invalid_request(
            f"send either {param} or {ask.name('audio_sample')}, not both: each is a whole voice", param=param
        )
    if ask.task_type == "CustomVoice":
        raise invalid_request(f"task_type CustomVoice speaks built-in voices; {param} is a Base voice", param=param)
    model = require_model(engine, ModelKind.BASE, param)
    _check_language(model, ask)
    values = ask.speaker_embedding or []
    if len(values) != model.speaker_embedding_width:
        raise invalid_request(
            f"{param} has {len(values)} values; model {model.name} takes {model.speaker_embedding_width}",
            param=param,
        )
    if not all(math.isfinite(v) and abs(v) < 3e38 for v in values):  # finite in float32 too
        raise invalid_request(f"{param} must hold finite numbers only", param=param)
    headers = {INSTRUCTIONS_IGNORED_HEADER: "voice cloning does not use instructions"} if instructions else {}
    if ask.voice_given:
        headers[VOICE_IGNORED_HEADER] = f"{param} is the voice"
    prompt = ClonePrompt.from_embedding(values)
    return VoicePlan(ModelKind.BASE, model, ask.language, "embedding", voice_prompt=prompt, headers=headers)


async def plan_voice(ask: VoiceAsk, engine: SpeechEngine, settings: Settings, store: CallerVoices) -> VoicePlan:
    if ask.task_type == "VoiceDesign" or names_voicedesign(engine, ask.model):
        return _design_plan(ask, engine)
    instructions = (ask.instructions or "").strip() or None

    if ask.speaker_embedding is not None:
        return _embedding_plan(ask, engine, instructions)
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
        if ask.voice_given:
            headers[VOICE_IGNORED_HEADER] = (
                f"voice cloning ({ask.name('audio_sample')}) speaks in the reference's voice"
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
            f"task_type Base speaks saved voices or {ask.name('audio_sample')}; {quoted(ask.voice)} is neither",
            param=ask.name("voice"),
            code="invalid_voice",
        )
    if isinstance(ask.voice, VoiceRef):  # task_type CustomVoice with a saved voice's id
        raise invalid_request("task_type CustomVoice speaks built-in voices", param=ask.name("voice"))
    customvoice = engine.model(ModelKind.CUSTOMVOICE)
    speaker = resolve_speaker(ask.voice, customvoice.speakers) if customvoice is not None else None
    if customvoice is None or speaker is None:
        if customvoice is None and is_builtin_voice(ask.voice):
            require_model(engine, ModelKind.CUSTOMVOICE, ask.name("voice"))
        names = (voice_names(customvoice.speakers) if customvoice is not None else []) + [
            v.name for v in await asyncio.to_thread(store.list)
        ]
        raise invalid_request(
            f"unknown voice {quoted(ask.voice)}; available: {', '.join(names) or 'none'}",
            param=ask.name("voice"),
            code="invalid_voice",
        )
    _check_language(customvoice, ask)
    ignored: dict[str, str] = {}
    if instructions and not customvoice.supports_instructions:
        ignored[INSTRUCTIONS_IGNORED_HEADER] = f"model {customvoice.name} (0.6B) does not support instructions"
        instructions = None
    instructions = clean(instructions or "", customvoice.control_tokens) or None
    kind = ModelKind.CUSTOMVOICE
    return VoicePlan(kind, customvoice, ask.language, "builtin", speaker, instructions=instructions, headers=ignored)
