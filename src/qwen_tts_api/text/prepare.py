"""Text on its way to the model, prepared in one place before it reaches the engine: the
markup read (pauses, SSML spans), the chat template's control tokens removed, numbers written
out in the span's language, then sentence-sized segments, each with the frame budget that
stops a runaway generation and the silence that follows it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from .budget import frame_budget
from .control_tokens import strip_control_tokens
from .markup import Markup, Pause, Speech, is_ssml, pause_tags
from .normalize import normalize
from .segment import split_text
from .ssml import read_ssml


@dataclass(frozen=True)
class Segment:
    text: str
    max_frames: int
    language: str | None = None  # None: the request's (SSML <lang> sets a span's)
    rate: float = 1.0  # a time stretch of this segment alone (SSML prosody rate)
    pause_before: float = 0.0  # seconds of silence before it (a pause at the very start)
    pause_after: float = 0.0  # seconds of silence after it


@dataclass(frozen=True)
class PreparedText:
    text: str  # all of it, as it will be spoken (cleaned, normalised, without markup)
    segments: tuple[Segment, ...]  # generated one after another


def read_markup(text: str, language: str = "Auto") -> Markup:
    """The input's pieces: SSML when it starts with ``<speak``, else text with pause tags
    (``MarkupError`` says what cannot be read). ``language``: the request's."""
    return read_ssml(text, language) if is_ssml(text) else pause_tags(text)


def clean(text: str, control_tokens: Sequence[str]) -> str:
    """User text (input, instructions, a transcript) without control tokens or outer blanks."""
    return strip_control_tokens(text, control_tokens).strip()


def spoken_text(text: str, language: str, control_tokens: Sequence[str], normalized: bool) -> str:
    """One span's text as it will be spoken: cleaned, and its numbers written out if asked."""
    cleaned = clean(text, control_tokens)
    return normalize(cleaned, language) if normalized and cleaned else cleaned


def _spans(pieces: Iterable[Speech | Pause]) -> list[Speech | Pause]:
    """Neighbouring speech of the same language and rate joined: only a pause or a change
    of voice starts a new segment."""
    out: list[Speech | Pause] = []
    for piece in pieces:
        last = out[-1] if out else None
        if (
            isinstance(piece, Speech)
            and isinstance(last, Speech)
            and (last.language, last.rate)
            == (
                piece.language,
                piece.rate,
            )
        ):
            out[-1] = Speech(last.text + piece.text, piece.language, piece.rate)
        else:
            out.append(piece)
    return out


def prepare(
    text: str | Markup,
    control_tokens: Sequence[str],
    frame_limit: int,
    language: str = "Auto",
    normalized: bool = False,
    pause_scale: float = 1.0,
) -> PreparedText | None:
    """The segments to speak, or None when nothing is left to speak. ``pause_scale``
    lengthens the silences that a later time stretch (``speed``) will shorten again."""
    markup = text if isinstance(text, Markup) else Markup((Speech(text),))  # plain text: no markup read
    segments: list[Segment] = []
    lead = 0.0
    for piece in _spans(markup.pieces):
        if isinstance(piece, Pause):
            if segments:
                segments[-1] = replace(segments[-1], pause_after=segments[-1].pause_after + piece.seconds * pause_scale)
            else:
                lead += piece.seconds * pause_scale
            continue
        span = spoken_text(piece.text, piece.language or language, control_tokens, normalized)
        for part in split_text(span) or ([span] if span else []):
            segments.append(Segment(part, frame_budget(part, frame_limit), piece.language, piece.rate, lead))
            lead = 0.0
    if not segments:
        return None
    return PreparedText(" ".join(segment.text for segment in segments), tuple(segments))
