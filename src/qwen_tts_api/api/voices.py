"""OpenAI's custom voices API: ``/v1/audio/voices`` (create, list, get, delete).

A voice is created from a multipart upload (``name``, ``audio_sample`` file, optional
``consent``, and our optional ``audio_sample_text`` transcript for in-context cloning).
The reference is decoded by the same code as ``audio_sample`` in speech requests, and its
clone prompt is computed once, here, and stored (``voices/store.py``).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.datastructures import FormData, UploadFile

from ..audio.reference import AudioSampleError, decode_reference
from ..constants import ModelKind
from ..engine.synthesis import Engine
from ..settings import Settings
from ..text.prepare import clean
from ..voices.speakers import available_aliases
from ..voices.store import SavedVoice, VoiceNameError, VoiceStore
from .errors import APIError, invalid_request
from .protocol import VoiceCard, VoiceDeleted, VoiceEntry, VoiceList, error_responses
from .routing import require_model

router = APIRouter()

_FORM_OVERHEAD = 64 * 1024  # room for the text fields and multipart framing beside the file


def _too_large(limit: int) -> APIError:
    return APIError(
        413,
        f"audio_sample is larger than the {limit // (1024 * 1024)} MiB limit (QWEN_TTS_AUDIO_SAMPLE_MAX_BYTES)",
        param="audio_sample",
        code="file_too_large",
    )


async def _read_form(request: Request, file_limit: int) -> FormData:
    """Parse the multipart body, refusing it as soon as it passes the size limit (before
    any of it is spooled to disk)."""
    limit = file_limit + _FORM_OVERHEAD
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(file_limit)
    received = 0

    async def receive():
        nonlocal received
        message = await request.receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(file_limit)
        return message

    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise invalid_request(
            "send the voice as multipart/form-data (name, audio_sample, consent)", code="invalid_content_type"
        )
    try:
        return await Request(request.scope, receive).form(max_files=1, max_fields=16)
    except APIError:
        raise
    except Exception as exc:  # malformed multipart: starlette raises its own HTTP errors
        raise invalid_request(
            f"could not read the multipart body: {getattr(exc, 'detail', exc)}", code="invalid_multipart"
        ) from exc


def _text_field(form: FormData, name: str, required: bool = False) -> str | None:
    value = form.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise invalid_request(f"missing required field {name!r}", param=name, code="missing_required_parameter")
        return None
    if not isinstance(value, str):
        raise invalid_request(f"{name!r} must be a text field, not a file", param=name)
    return value.strip()


@router.post(
    "/v1/audio/voices",
    response_model=VoiceCard,
    response_model_exclude_none=True,
    responses=error_responses(400, 413, 429, 500, 503),
)
async def create_voice(request: Request) -> VoiceCard:
    engine: Engine = request.app.state.engine
    settings: Settings = request.app.state.settings
    store: VoiceStore = request.app.state.voices
    model = require_model(engine, ModelKind.BASE, "audio_sample")
    form = await _read_form(request, settings.audio_sample_max_bytes)
    try:
        kind = _text_field(form, "type") or "audio_sample"
        if kind != "audio_sample":
            raise invalid_request(
                "only voices from an audio sample (type 'audio_sample') are supported; "
                "Qwen3-TTS Base clones voices, it does not design them from prompts",
                param="type",
                code="unsupported_voice_type",
            )
        name = _text_field(form, "name", required=True)
        # Checked now as well as when saving, so a bad or taken name costs no decoding.
        await asyncio.to_thread(_check_new_name, store, name)
        sample = form.get("audio_sample")
        if not isinstance(sample, UploadFile):
            raise invalid_request(
                "missing required file 'audio_sample'", param="audio_sample", code="missing_required_parameter"
            )
        data = await sample.read(settings.audio_sample_max_bytes + 1)
        if len(data) > settings.audio_sample_max_bytes:
            raise _too_large(settings.audio_sample_max_bytes)
        transcript = clean(_text_field(form, "audio_sample_text") or "", model.control_tokens) or None
        consent = _text_field(form, "consent")
    finally:
        await form.close()
    try:
        waveform = await asyncio.to_thread(decode_reference, data, settings.audio_sample_max_seconds)
    except AudioSampleError as exc:
        raise invalid_request(str(exc), param="audio_sample", code="invalid_audio_sample") from exc
    prompt = await engine.clone_prompt(waveform, transcript)
    try:
        voice = await asyncio.to_thread(store.add, name, prompt, consent)
    except VoiceNameError as exc:
        raise _name_error(exc) from exc
    return _card(voice)


def _card(voice: SavedVoice) -> VoiceCard:
    return VoiceCard(id=voice.id, name=voice.name, created_at=voice.created_at, type="audio_sample")


def _name_error(exc: VoiceNameError) -> APIError:
    # 400 rather than 409 for a taken name: the openai SDKs retry 409s, which would send
    # the whole sample again only to be refused again.
    return invalid_request(str(exc), param="name", code="voice_name_taken" if exc.taken else "invalid_voice_name")


def _check_new_name(store: VoiceStore, name: str) -> None:
    try:
        store.check_new_name(name)
    except VoiceNameError as exc:
        raise _name_error(exc) from exc


@router.get("/v1/audio/voices", response_model=VoiceList, response_model_exclude_none=True, responses=error_responses())
async def list_voices(request: Request) -> VoiceList:
    """Saved voices first, then the built-in speakers and the OpenAI names mapped onto them:
    every entry's ``id`` works as the ``voice`` of a speech request."""
    engine: Engine = request.app.state.engine
    store: VoiceStore = request.app.state.voices
    data = [_card(voice) for voice in await asyncio.to_thread(store.list)]
    customvoice = engine.model(ModelKind.CUSTOMVOICE)
    if customvoice is not None:
        data += [VoiceCard(id=name, name=name, type="builtin") for name in customvoice.speakers]
        data += [
            VoiceCard(id=alias, name=alias, type="alias", speaker=speaker)
            for alias, speaker in available_aliases(customvoice.speakers).items()
        ]
    entries = [
        VoiceEntry(id=card.id, name=f"{card.name} ({card.speaker})" if card.speaker else card.name, type=card.type)
        for card in data
    ]
    return VoiceList(data=data, voices=entries)


def _not_found(voice_id: str) -> APIError:
    return APIError(404, f"no saved voice with id {voice_id!r}", param="voice_id", code="voice_not_found")


@router.get(
    "/v1/audio/voices/{voice_id}",
    response_model=VoiceCard,
    response_model_exclude_none=True,
    responses=error_responses(404),
)
async def get_voice(voice_id: str, request: Request) -> VoiceCard:
    voice = await asyncio.to_thread(request.app.state.voices.get, voice_id)
    if voice is None:
        raise _not_found(voice_id)
    return _card(voice)


@router.delete("/v1/audio/voices/{voice_id}", response_model=VoiceDeleted, responses=error_responses(404))
async def delete_voice(voice_id: str, request: Request) -> VoiceDeleted:
    if not await asyncio.to_thread(request.app.state.voices.delete, voice_id):
        raise _not_found(voice_id)
    return VoiceDeleted(id=voice_id)
