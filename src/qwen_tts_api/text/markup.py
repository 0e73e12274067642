"""What the input asks for besides words: pauses, and in SSML spans with their own language
or rate. Input that starts with ``<speak`` is SSML (``ssml.py``); any other input may hold
pause tags, ``[pause:500ms]`` or ``[break:1.5s]``.

(An XML declaration or document type first is XML as well: a document type is refused.)
Either way the input becomes a list of pieces: ``Speech`` (text with its language and rate)
and ``Pause`` (silence, and always a segment boundary, so prosody restarts after it).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .echo import quoted

MAX_PAUSE_SECONDS = 10.0  # one pause
MAX_TOTAL_PAUSE_SECONDS = 60.0  # all of a request's pauses together
MIN_RATE, MAX_RATE = 0.25, 4.0  # as `speed`


class MarkupError(ValueError):
    """The input's markup cannot be read: the message says where and why."""


@dataclass(frozen=True)
class Speech:
    text: str
    language: str | None = None  # None: the request's
    rate: float = 1.0  # a time stretch of this span alone (SSML prosody rate)


@dataclass(frozen=True)
class Pause:
    seconds: float  # 0: only a boundary (SSML's <p> and <s>)


Piece = Speech | Pause


@dataclass(frozen=True)
class Markup:
    pieces: tuple[Piece, ...]
    ignored: tuple[str, ...] = ()  # SSML elements whose text was kept but whose meaning was not


# A tag: "[pause:" or "[break:" up to the next "]". What is between must be a duration.
_TAG = re.compile(r"\[(?:pause|break):([^\]\[]*)\]", re.I)
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?|\.\d+)\s*(ms|s)\s*", re.I)


def duration_seconds(value: str) -> float | None:
    """``500ms`` or ``1.5s`` in seconds; None when it is not such a duration."""
    match = _DURATION.fullmatch(value)
    if match is None:
        return None
    amount = float(match.group(1))
    return amount / 1000.0 if match.group(2).lower() == "ms" else amount


def checked_pause(seconds: float, where: str) -> Pause:
    if seconds > MAX_PAUSE_SECONDS:
        raise MarkupError(f"{where}: a pause is at most {MAX_PAUSE_SECONDS:g} s")
    return Pause(seconds)


def check_total(pieces: tuple[Piece, ...]) -> None:
    total = sum(piece.seconds for piece in pieces if isinstance(piece, Pause))
    if total > MAX_TOTAL_PAUSE_SECONDS:
        raise MarkupError(f"the pauses add up to {total:g} s; at most {MAX_TOTAL_PAUSE_SECONDS:g} s per request")


def pause_tags(text: str) -> Markup:
    """Plain input with its pause tags. ``[pause`` that is not followed by ``:`` is text."""
    pieces: list[Piece] = []
    start = 0
    for match in _TAG.finditer(text):
        seconds = duration_seconds(match.group(1))
        if seconds is None:
            raise MarkupError(
                f"{quoted(match.group(0))} at character {match.start()} is not a pause: "
                "write it as [pause:500ms] or [pause:1.5s]"
            )
        if text[start : match.start()].strip():
            pieces.append(Speech(text[start : match.start()]))
        pieces.append(checked_pause(seconds, f"{quoted(match.group(0))} at character {match.start()}"))
        start = match.end()
    if text[start:].strip():
        pieces.append(Speech(text[start:]))
    markup = Markup(tuple(pieces))
    check_total(markup.pieces)
    return markup


def is_ssml(text: str) -> bool:
    """``<speak`` first; an XML declaration or a document type first is read as XML too, so
    that it is refused rather than spoken."""
    return text.lstrip().startswith(("<speak", "<?xml", "<!DOCTYPE"))
