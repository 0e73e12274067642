"""Request and response bodies of the OpenAI-compatible endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..audio.encode import RESPONSE_FORMATS
from ..voices.speakers import DEFAULT_VOICE

MAX_INPUT_CHARS = 4096

# Languages of the specification; "Auto" lets the model decide.
LANGUAGES = [
    "Auto", "English", "Chinese", "Japanese", "Korean", "French",
    "German", "Spanish", "Italian", "Portuguese", "Russian",
]
_LANGUAGE_BY_LOWER = {name.lower(): name for name in LANGUAGES}

ResponseFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
assert set(RESPONSE_FORMATS) == set(ResponseFormat.__args__)  # one list of formats


class VoiceRef(BaseModel):
    """OpenAI's saved custom voice reference: ``{"id": "voice_..."}``."""

    id: str = Field(min_length=1)


class SpeechRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI clients send extras over time.
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    voice: str | VoiceRef = DEFAULT_VOICE
    response_format: ResponseFormat = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    language: str = "Auto"
    instructions: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    audio_sample: str | None = None
    audio_sample_text: str | None = Field(default=None, max_length=MAX_INPUT_CHARS)
    stream_format: Literal["audio", "sse"] = "audio"
    # Ours: false waits for the whole utterance and answers with one complete body.
    stream: bool = True

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must contain text to speak, not only whitespace")
        return value

    @field_validator("language")
    @classmethod
    def _known_language(cls, value: str) -> str:
        canonical = _LANGUAGE_BY_LOWER.get(value.strip().lower())
        if canonical is None:
            raise ValueError(f"unsupported language {value!r}; use one of {', '.join(LANGUAGES)}")
        return canonical


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "qwen"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
