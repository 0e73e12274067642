"""Captions of a whole response from its timed words: SRT and WebVTT.

Words are grouped into cues of at most ``MAX_CUE_CHARS`` characters (two short lines'
worth), a cue also ending after a sentence's last word or before a silence of
``CUE_GAP`` seconds. Writing either format is a time stamp per cue and the cue's text; the
caption libraries (``srt``, ``webvtt-py``) mostly parse, which we never do, so this is
written here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

MAX_CUE_CHARS = 84
CUE_GAP = 0.8  # seconds of silence that start a new cue
_SENTENCE_END = (".", "!", "?", "…", "。", "！", "？")


class Timed(NamedTuple):
    word: str
    start: float
    end: float


def cues(words: Sequence[Timed]) -> list[Timed]:
    """Words joined into cues: (text, start, end)."""
    out: list[Timed] = []
    current: list[Timed] = []

    def close() -> None:
        if current:
            out.append(Timed(" ".join(word.word for word in current), current[0].start, current[-1].end))
            current.clear()

    for word in words:
        if current and (
            len(" ".join(w.word for w in current)) + 1 + len(word.word) > MAX_CUE_CHARS
            or word.start - current[-1].end >= CUE_GAP
        ):
            close()
        current.append(word)
        if word.word.rstrip("\"'”’)»」』").endswith(_SENTENCE_END):
            close()
    close()
    return out


def _stamp(seconds: float, separator: str) -> str:
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


def _text(line: str) -> str:
    # A blank line ends a cue in both formats, and "-->" starts a timing line in WebVTT.
    return " ".join(line.split()).replace("-->", "->")


def srt(words: Sequence[Timed]) -> str:
    blocks = [
        f"{number}\n{_stamp(cue.start, ',')} --> {_stamp(cue.end, ',')}\n{_text(cue.word)}\n"
        for number, cue in enumerate(cues(words), start=1)
    ]
    return "\n".join(blocks)


def webvtt(words: Sequence[Timed], note: str | None = None) -> str:
    """``note``: a NOTE block after the header (what kind of timings these are)."""
    head = "WEBVTT\n\n" + (f"NOTE {_text(note)}\n\n" if note else "")
    blocks = [f"{_stamp(cue.start, '.')} --> {_stamp(cue.end, '.')}\n{_text(cue.word)}\n" for cue in cues(words)]
    return head + "\n".join(blocks)
