"""Words for word timings: the request's words as the client wrote them, the words as they
are spoken (what the aligner times), and which spoken words each written word became.

A written word is a run of text between spaces, or one Chinese character or kana (those
scripts write no spaces); punctuation stays with its word ("Hello," is one word; a dash
alone is one that takes no time). A spoken word keeps only letters, digits and apostrophes,
split the same way: the aligner's own rule for the languages that write spaces, so it
returns exactly the words it was given.

Normalisation and SSML change the words ("42" is spoken "forty two", ``<sub>`` speaks its
alias), so the two lists are matched as sequences (``difflib``): a written word maps to the
spoken words it became, a word that was not spoken gets no length, and words spoken from
nothing written ("dollars" from "$") join the word before them.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass

# Scripts written without spaces: each character is a word (CJK ideographs, kana).
_UNSPACED = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]")
_VOWELS = re.compile(r"[aeiouyàáâãäåæèéêëìíîïòóôõöøœùúûüýÿаеёиоуыэюяіїє]+", re.IGNORECASE)


def _kept(ch: str) -> bool:
    return ch == "'" or unicodedata.category(ch)[0] in "LN"


def key(word: str) -> str:
    """What two spellings of a word share: its letters, digits and apostrophes, case folded."""
    return "".join(ch for ch in word if _kept(ch)).casefold()


def _split_unspaced(token: str) -> list[str]:
    out: list[str] = []
    run = ""
    for ch in token:
        if _UNSPACED.match(ch):
            if run:
                out.append(run)
                run = ""
            out.append(ch)
        else:
            run += ch
    if run:
        out.append(run)
    return out


@dataclass(frozen=True)
class WrittenWord:
    """A word of the client's text, and where it stands in it (``text[start:end]``)."""

    text: str
    start: int
    end: int


def written_words(text: str) -> list[WrittenWord]:
    """``text``'s words as written, with their places in it."""
    words: list[WrittenWord] = []
    for token in re.finditer(r"\S+", text):
        at = token.start()
        for piece in _split_unspaced(token.group()):
            words.append(WrittenWord(piece, at, at + len(piece)))
            at += len(piece)
    return words


def spoken_words(text: str) -> list[str]:
    """``text``'s words as the aligner reads them: letters, digits and apostrophes only."""
    words: list[str] = []
    for token in text.split():
        for piece in _split_unspaced(token):
            cleaned = "".join(ch for ch in piece if _kept(ch))
            if cleaned:
                words.append(cleaned)
    return words


def syllables(word: str) -> int:
    """About how long a word takes to say, in syllables: one per unspaced-script character,
    one per vowel group elsewhere (digits: one each), at least one."""
    if _UNSPACED.match(word):
        return 1
    return max(1, len(_VOWELS.findall(word)) + sum(ch.isdigit() for ch in word))


def spread(words: list[str], start: float, end: float) -> list[tuple[float, float]]:
    """Each word's span when ``words`` fill ``start``..``end`` in proportion to their syllables."""
    weights = [syllables(word) for word in words]
    total = sum(weights) or 1
    spans: list[tuple[float, float]] = []
    at = 0
    for weight in weights:
        spans.append((start + (end - start) * at / total, start + (end - start) * (at + weight) / total))
        at += weight
    return spans


@dataclass(frozen=True)
class WrittenSpan:
    """A written word and the spoken words it became: positions ``first``..``last`` in the
    spoken list, fractional where several written words share one spoken word (equal:
    nothing of it was spoken)."""

    word: str
    first: float
    last: float


def match(written: list[str], spoken: list[str]) -> list[WrittenSpan]:
    """Which spoken words each written word became (``spoken_words`` of the text as spoken)."""
    spans: list[list[float]] = [[0.0, 0.0] for _ in written]
    lead: int | None = None  # spoken words before any written one: the first word starts there
    matcher = difflib.SequenceMatcher(None, [key(w) for w in written], [key(w) for w in spoken], autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            for offset in range(i2 - i1):
                spans[i1 + offset] = [j1 + offset, j1 + offset + 1]
        elif tag == "replace":
            # Shared out by length ("42" -> "forty two", "New York" -> "newyork"); punctuation gets none.
            weights = [len(key(written[i])) for i in range(i1, i2)]
            if not any(weights):
                weights = [1] * len(weights)
            total, at = sum(weights), 0
            for offset, weight in enumerate(weights):
                spans[i1 + offset] = [j1 + (j2 - j1) * at / total, j1 + (j2 - j1) * (at + weight) / total]
                at += weight
        elif tag == "delete":
            for i in range(i1, i2):
                spans[i] = [j1, j1]
        elif i1 > 0:  # insert: spoken words from nothing written join the word before
            spans[i1 - 1][1] = j2
        else:
            lead = j1
    if lead is not None and spans:
        spans[0][0] = lead
    return [WrittenSpan(word, first, last) for word, (first, last) in zip(written, spans)]
