"""Built-in speakers and the OpenAI voice names mapped onto them."""

from __future__ import annotations

from ..constants import QWEN_SPEAKERS

# OpenAI voice name -> Qwen3-TTS speaker, exactly as the specification's table.
OPENAI_VOICE_ALIASES: dict[str, str] = {
    "alloy": "Vivian",
    "ash": "Serena",
    "ballad": "Uncle_Fu",
    "coral": "Dylan",
    "echo": "Eric",
    "fable": "Ryan",
    "onyx": "Aiden",
    "nova": "Ono_Anna",
    "sage": "Sohee",
    "shimmer": "Vivian",
    "verse": "Ryan",
    "marin": "Serena",
    "cedar": "Aiden",
}

DEFAULT_VOICE = "alloy"

_PUBLISHED = {name.lower() for name in QWEN_SPEAKERS}


def resolve_speaker(voice: str, available: list[str]) -> str | None:
    """Map an OpenAI voice or a speaker name (any case) to an available speaker, else None."""
    key = voice.strip().lower()
    by_lower = {name.lower(): name for name in available}
    if key in by_lower:
        return by_lower[key]
    alias = OPENAI_VOICE_ALIASES.get(key)
    if alias and alias.lower() in by_lower:
        return by_lower[alias.lower()]
    return None


def is_builtin_voice(voice: str) -> bool:
    """A published speaker or an OpenAI voice name (any case), whether or not a model is loaded."""
    key = voice.strip().lower()
    return key in _PUBLISHED or key in OPENAI_VOICE_ALIASES


def available_aliases(available: list[str]) -> dict[str, str]:
    """OpenAI voice name -> speaker, for the aliases whose speaker is available."""
    by_lower = {name.lower(): name for name in available}
    return {
        alias: by_lower[target.lower()] for alias, target in OPENAI_VOICE_ALIASES.items() if target.lower() in by_lower
    }


def voice_names(available: list[str]) -> list[str]:
    """Every value `voice` accepts for these speakers: aliases first, then speaker names."""
    return list(available_aliases(available)) + list(available)
