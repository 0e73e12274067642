"""OpenAI's custom voices API: ``/v1/audio/voices`` (create, list, get, delete).

A voice is created from a multipart upload (``name``, ``audio_sample`` file, optional
``consent``, and our optional ``audio_sample_text`` transcript for in-context cloning).
The reference is decoded by the same code as ``audio_sample`` in speech requests, and its
clone prompt is computed once, here, and stored (``voices/store.py``). Or it is designed
from a description (``voice_design.py``) and stored the same way.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from fastapi import APIRouter, Request, Response
from starlette.datastructures import FormData, UploadFile

from ..audio.reference import AudioSampleError, decode_reference
from ..constants import ModelKind
from ..engine.interface import SpeechEngine
from ..engine.models.loading import LoadedModel
from ..settings import Settings
from ..telemetry.record import record_of
from ..text.echo import quoted
from ..text.prepare import clean
from ..voices.prompt import ClonePrompt
from ..voices.speakers import available_aliases
from ..voices.store import CallerVoices, SavedVoice, VoiceNameError
from .errors import APIError, invalid_request
from .forms import text_field
from .headers import UNUSED_FIELDS_HEADER, header_list
from .limits import upload_too_large
from .protocol import VoiceCard, VoiceDeleted, VoiceEntry, VoiceList, error_responses, voice_creation_body
from .routing import require_model
from .state import EngineDep, SettingsDep, VoicesDep
from .streaming import ClientGone
from .voice_design import DESCRIPTION_FIELDS, SAMPLE_TEXT_FIELDS, asks_for_design, design_ask, design_voice

router = APIRouter()

# Every field a voice creation reads (an upload's, a design's, either name of each).
VOICE_FIELDS = frozenset(
    {"name", "type", "consent", "audio_sample", "audio_sample_text", "language", "seed"}
    | set(DESCRIPTION_FIELDS)
    | set(SAMPLE_TEXT_FIELDS)
)
MAX_FORM_FIELDS = 16


async def _read_form(request: Request) -> FormData:
    """Parse the multipart body (api/limits.py refuses one past its size limit as it streams
    in, before it is spooled to disk). A designed voice may come as JSON instead (OpenAI's
    ``type: "prompt"`` request), read into the same shape."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("application/json"):
        return await _read_json(request)
    # A plain form (curl -d) can only carry a designed voice: it has no file.
    if not content_type.startswith(("multipart/form-data", "application/x-www-form-urlencoded")):
        raise invalid_request(
            "send the voice as multipart/form-data (name, audio_sample, consent), "
            "or a designed voice (name, prompt) as JSON or a form",
            code="invalid_content_type",
        )
    try:
        form = await request.form(max_files=1, max_fields=MAX_FORM_FIELDS)
    except APIError:
        raise
    except Exception as exc:  # malformed multipart: starlette raises its own HTTP errors
        raise invalid_request(
            f"could not read the multipart body: {getattr(exc, 'detail', exc)}", code="invalid_multipart"
        ) from exc
    if len(form) > MAX_FORM_FIELDS:  # a plain form: Starlette counts only multipart fields
        await form.close()
        raise invalid_request(
            f"a voice has at most {MAX_FORM_FIELDS} fields; {len(form)} were sent", code="invalid_multipart"
        )
    return form


async def _read_json(request: Request) -> FormData:
    try:
        body = json.loads(await request.body())
    except ValueError as exc:
        raise invalid_request(f"the body is not valid JSON: {exc}", code="invalid_json") from exc
    if not isinstance(body, dict):
        raise invalid_request("the body must be a JSON object", code="invalid_json")
    fields: list[tuple[str, str | UploadFile]] = []
    if len(body) > MAX_FORM_FIELDS:
        raise invalid_request(f"a voice has at most {MAX_FORM_FIELDS} fields; {len(body)} were sent")
    for key, value in body.items():
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise invalid_request(f"{quoted(key)} must be a string or a number", param=key)
        fields.append((key, str(value)))
    return FormData(fields)


def _voice_type(form: FormData) -> str:
    """``audio_sample`` (clone an upload) or ``prompt`` (design from a description); OpenAI's
    default is ``audio_sample``, ours follows the fields sent."""
    designing = asks_for_design(form)
    kind = text_field(form, "type") or ("prompt" if designing else "audio_sample")
    if kind not in ("audio_sample", "prompt"):
        raise invalid_request(
            "'type' is 'audio_sample' (clone an uploaded sample) or 'prompt' (design a voice from a description)",
            param="type",
            code="unsupported_voice_type",
        )
    if designing and form.get("audio_sample") is not None:
        raise invalid_request(
            "send an audio_sample to clone, or a description (prompt) to design a voice, not both",
            param="audio_sample",
        )
    return kind


@router.post(
    "/v1/audio/voices",
    response_model=VoiceCard,
    response_model_exclude_none=True,
    responses=error_responses(400, 413, 429, 500, 503, 504),
    openapi_extra=voice_creation_body(),
)
async def create_voice(
    request: Request, response: Response, engine: EngineDep, settings: SettingsDep, store: VoicesDep
) -> VoiceCard | Response:
    """A saved voice from an uploaded sample (multipart: ``name``, ``audio_sample``,
    ``consent``, our ``audio_sample_text``), or designed from a description (``name``,
    ``prompt``/``description``, optional ``script_hint``/``sample_text``, ``language``,
    ``seed``: api/voice_design.py)."""
    form = await _read_form(request)
    try:
        unused = sorted(set(form.keys()) - VOICE_FIELDS)
        kind = _voice_type(form)
        name = text_field(form, "name", required=True)
        consent = text_field(form, "consent")
        design = design_ask(form) if kind == "prompt" else None
        model = None if design else _upload_model(request, engine)
        # Checked now as well as when saving, so a bad or taken name costs no decoding.
        await asyncio.to_thread(_check_new_name, store, name)
        upload = None if model is None else await _read_upload(form, model, settings.audio_sample_max_bytes)
    finally:
        await form.close()
    description = None
    if design is not None:
        try:
            prompt, description = await design_voice(request, design, engine, settings)
        except ClientGone:
            return Response(status_code=499)
    else:
        assert upload is not None
        prompt = await _clone(upload, engine, settings)
    try:
        voice = await asyncio.to_thread(store.add, name, prompt, consent, description)
    except VoiceNameError as exc:
        raise _name_error(exc) from exc
    if (record := record_of(request)) is not None:  # the log line says which model made it
        record.voice_kind = "designed" if design else "clone"
        record.model = engine.models[ModelKind.VOICEDESIGN if design else ModelKind.BASE].name
    if unused:  # never dropped in silence, as on /v1/audio/speech
        response.headers[UNUSED_FIELDS_HEADER] = header_list(unused)
    return _card(voice)


@dataclass(frozen=True)
class _Upload:
    data: bytes  # the sample file as sent
    transcript: str | None


def _upload_model(request: Request, engine: SpeechEngine) -> LoadedModel:
    """The Base model, for a voice cloned from an upload (which only multipart can carry)."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise invalid_request(
            "an audio_sample is uploaded as multipart/form-data (name, audio_sample, consent)",
            param="audio_sample",
            code="invalid_content_type",
        )
    return require_model(engine, ModelKind.BASE, "audio_sample")


async def _read_upload(form: FormData, model: LoadedModel, limit: int) -> _Upload:
    sample = form.get("audio_sample")
    if not isinstance(sample, UploadFile):
        raise invalid_request(
            "missing required file 'audio_sample'", param="audio_sample", code="missing_required_parameter"
        )
    data = await sample.read(limit + 1)
    if len(data) > limit:
        raise upload_too_large(limit)
    return _Upload(data, clean(text_field(form, "audio_sample_text") or "", model.control_tokens) or None)


async def _clone(upload: _Upload, engine: SpeechEngine, settings: Settings) -> ClonePrompt:
    try:
        waveform = await asyncio.to_thread(decode_reference, upload.data, settings.audio_sample_max_seconds)
    except AudioSampleError as exc:
        raise invalid_request(str(exc), param="audio_sample", code="invalid_audio_sample") from exc
    return await engine.clone_prompt(waveform, upload.transcript)


def _card(voice: SavedVoice) -> VoiceCard:
    return VoiceCard(
        id=voice.id,
        name=voice.name,
        created_at=voice.created_at,
        type="prompt" if voice.description else "audio_sample",
        prompt=voice.description,
    )


def _name_error(exc: VoiceNameError) -> APIError:
    # 400 rather than 409 for a taken name: the openai SDKs retry 409s, which would send
    # the whole sample again only to be refused again.
    return invalid_request(str(exc), param="name", code="voice_name_taken" if exc.taken else "invalid_voice_name")


def _check_new_name(store: CallerVoices, name: str) -> None:
    try:
        store.check_new_name(name)
    except VoiceNameError as exc:
        raise _name_error(exc) from exc


@router.get("/v1/audio/voices", response_model=VoiceList, response_model_exclude_none=True, responses=error_responses())
async def list_voices(engine: EngineDep, store: VoicesDep) -> VoiceList:
    """Saved voices first, then the built-in speakers and the OpenAI names mapped onto them:
    every entry's ``id`` works as the ``voice`` of a speech request."""
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
    return APIError(404, f"no saved voice with id {quoted(voice_id)}", param="voice_id", code="voice_not_found")


@router.get(
    "/v1/audio/voices/{voice_id}",
    response_model=VoiceCard,
    response_model_exclude_none=True,
    responses=error_responses(404),
)
async def get_voice(voice_id: str, store: VoicesDep) -> VoiceCard:
    voice = await asyncio.to_thread(store.get, voice_id)
    if voice is None:
        raise _not_found(voice_id)
    return _card(voice)


@router.delete("/v1/audio/voices/{voice_id}", response_model=VoiceDeleted, responses=error_responses(404))
async def delete_voice(voice_id: str, store: VoicesDep) -> VoiceDeleted:
    if not await asyncio.to_thread(store.delete, voice_id):
        raise _not_found(voice_id)
    return VoiceDeleted(id=voice_id)
