"""Text on its way to the model, prepared in one place before it reaches the engine: the
chat template's control tokens removed, then sentence-sized segments, each with the frame
budget that stops a runaway generation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .budget import frame_budget
from .control_tokens import strip_control_tokens
from .segment import split_text


@dataclass(frozen=True)
class Segment:
    text: str
    max_frames: int


@dataclass(frozen=True)
class PreparedText:
    text: str  # all of it, cleaned
    segments: tuple[Segment, ...]  # generated one after another


def clean(text: str, control_tokens: Sequence[str]) -> str:
    """User text (input, instructions, a transcript) without control tokens or outer blanks."""
    return strip_control_tokens(text, control_tokens).strip()


def prepare(text: str, control_tokens: Sequence[str], frame_limit: int) -> PreparedText | None:
    """The segments to speak, or None when nothing is left to speak."""
    cleaned = clean(text, control_tokens)
    if not cleaned:
        return None
    pieces = split_text(cleaned) or [cleaned]
    return PreparedText(cleaned, tuple(Segment(piece, frame_budget(piece, frame_limit)) for piece in pieces))
