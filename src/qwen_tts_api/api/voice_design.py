"""Design a voice, then keep it: ``POST /v1/audio/voices`` with a description instead of an
audio sample.

A voice that VoiceDesign makes from a description comes out different on every request, so
it is designed once: VoiceDesign speaks a sample text in the described voice, the Base model
computes an in-context clone prompt from that audio and its text (what it does for an
uploaded sample with a transcript), and the prompt is stored as any saved voice. From then
on the voice speaks through Base, the same for the same seed. The fields are OpenAI's
(``type: "prompt"``, ``prompt``, ``script_hint``) or ours (``description``,
``sample_text``), plus ``language`` and ``seed`` for the design.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request
from starlette.datastructures import FormData

from ..constants import SAMPLE_RATE, SAMPLES_PER_FRAME, ModelKind
from ..engine.errors import SynthesisTimeout
from ..engine.interface import SpeechEngine
from ..engine.runtime.jobs import SamplingChoice, SpeechJob
from ..settings import Settings
from ..text.prepare import clean, prepare
from ..text.segment import MAX_SEGMENT_WEIGHT, weight
from ..voices.prompt import ClonePrompt
from ..voices.scripts import sample_script, script_language
from .errors import APIError, invalid_request, timeout_error
from .forms import is_sent, text_field
from .protocol import MAX_INPUT_CHARS, SEED_MAX, canonical_language
from .routing import require_model
from .streaming import until_ready

# Names a field may have: OpenAI's first, then ours.
DESCRIPTION_FIELDS = ("prompt", "description")
SAMPLE_TEXT_FIELDS = ("script_hint", "sample_text")
MIN_SAMPLE_SECONDS = 1.0  # less is too little of a voice to clone


@dataclass(frozen=True)
class DesignAsk:
    """What a design request asks for; ``*_param`` is the field name the client used."""

    description: str
    description_param: str
    sample_text: str | None
    sample_param: str
    language: str
    seed: int | None


def asks_for_design(form: FormData) -> bool:
    return any(is_sent(form, name) for name in DESCRIPTION_FIELDS)


def _one_of(form: FormData, names: tuple[str, ...]) -> tuple[str | None, str]:
    """The text of whichever of ``names`` was sent (a 400 when both were), and its name."""
    sent = [name for name in names if is_sent(form, name)]
    if len(sent) > 1:
        raise invalid_request(f"send {sent[0]!r} or {sent[1]!r}, not both", param=sent[1])
    name = sent[0] if sent else names[0]
    return text_field(form, name), name


def design_ask(form: FormData) -> DesignAsk:
    description, description_param = _one_of(form, DESCRIPTION_FIELDS)
    if description is None:
        raise invalid_request(
            "a designed voice needs 'prompt' (or 'description'): the voice, described in words",
            param="prompt",
            code="missing_required_parameter",
        )
    if len(description) > MAX_INPUT_CHARS:
        raise invalid_request(
            f"{description_param!r} is longer than {MAX_INPUT_CHARS} characters", param=description_param
        )
    sample_text, sample_param = _one_of(form, SAMPLE_TEXT_FIELDS)
    if sample_text is not None and weight(sample_text) > MAX_SEGMENT_WEIGHT:
        raise invalid_request(
            f"{sample_param!r} is too long for one reference recording: at most about {MAX_SEGMENT_WEIGHT} "
            "characters (a CJK character counts as 3)",
            param=sample_param,
        )
    language = text_field(form, "language") or "Auto"
    try:
        language = canonical_language(language)
    except ValueError as exc:
        raise invalid_request(str(exc), param="language") from exc
    seed = text_field(form, "seed")
    if seed is not None and not (seed.isdigit() and int(seed) <= SEED_MAX):
        raise invalid_request(f"'seed' must be a whole number from 0 to {SEED_MAX}", param="seed")
    return DesignAsk(
        description, description_param, sample_text, sample_param, language, None if seed is None else int(seed)
    )


async def design_voice(
    request: Request, ask: DesignAsk, engine: SpeechEngine, settings: Settings
) -> tuple[ClonePrompt, str]:
    """Speak the sample in the described voice and clone it: the Base clone prompt, and the
    description as the model read it. Raises ClientGone when the client leaves meanwhile."""
    design = require_model(
        engine, ModelKind.VOICEDESIGN, ask.description_param, needs="designing a voice needs the VoiceDesign model"
    )
    base = require_model(
        engine,
        ModelKind.BASE,
        ask.description_param,
        needs="keeping a designed voice needs the Base model (it clones the designed sample)",
    )
    language = script_language(ask.language, ask.description)
    for model in (design, base):
        if language.lower() not in model.languages:
            raise invalid_request(f"language {language!r} is not supported by model {model.name}", param="language")
    description = clean(ask.description, design.control_tokens)
    text = prepare(ask.sample_text or sample_script(language), design.control_tokens, design.max_new_tokens)
    if not description or text is None:
        param = ask.sample_param if description else ask.description_param
        raise invalid_request(f"nothing is left of {param!r} once the model's control tokens are removed", param=param)
    job = SpeechJob(
        text=text,
        language=language,
        instructions=description,
        # The sample becomes reference audio: no longer than a reference may be.
        max_frames=int(settings.audio_sample_max_seconds * SAMPLE_RATE / SAMPLES_PER_FRAME),
        sampling=SamplingChoice(seed=ask.seed),
        streaming=False,  # collected whole, then cloned
    )
    stream = engine.start(ModelKind.VOICEDESIGN, job)  # EngineBusy: 429 (errors.py)
    try:
        waveform = await until_ready(request, asyncio.ensure_future(stream.collect()), stream)
    except SynthesisTimeout as exc:
        raise timeout_error(settings) from exc
    if waveform.size < MIN_SAMPLE_SECONDS * SAMPLE_RATE:
        raise APIError(
            500,
            f"the designed sample came out shorter than {MIN_SAMPLE_SECONDS:g} s, too little to keep; "
            "try again, with another seed or a longer sample text",
            type="server_error",
            code="design_failed",
        )
    return await engine.clone_prompt(waveform, text.text), description
