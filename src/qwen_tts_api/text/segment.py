"""Splits long input into sentence-sized segments that are generated one after another.

Sentences end at Latin or CJK end punctuation; neighbours are merged up to a bound; a
sentence over the bound is split at clause punctuation, then at spaces, and only text
with no spaces at all (CJK) is cut between characters. A word is never cut.
"""

from __future__ import annotations

import re

from .budget import is_wide

# Weighted length: a CJK character carries about three Latin characters of speech.
MAX_SEGMENT_WEIGHT = 300
WIDE_WEIGHT = 3

_CLOSERS = "\"'”’)\\]」』"
# Lazy ".+?" can always match, so finditer never skips text between sentences.
_SENTENCE = re.compile(rf"(?:.+?)(?:[.!?…]+[{_CLOSERS}]*(?=\s|$)|[。！？；]+[{_CLOSERS}]*|$)\s*", re.S)
_CLAUSE = re.compile(r"[^,;:，、；：]*[,;:，、；：]?\s*", re.S)


def weight(text: str) -> int:
    return sum(WIDE_WEIGHT if is_wide(ch) else 1 for ch in text)


def _pieces(pattern: re.Pattern[str], text: str) -> list[str]:
    return [m.group(0) for m in pattern.finditer(text) if m.group(0)]


def _split_words(text: str, bound: int) -> list[str]:
    """Split at spaces; a run with no space (CJK) is cut between characters."""
    out: list[str] = []
    current = ""
    for word in re.findall(r"\S+\s*|\s+", text):
        if weight(current + word) <= bound:
            current += word
            continue
        if current:
            out.append(current)
            current = ""
        while weight(word) > bound:  # no space to break at: cut between characters
            cut = 1
            while cut < len(word) and weight(word[: cut + 1]) <= bound:
                cut += 1
            out.append(word[:cut])
            word = word[cut:]
        current = word
    if current:
        out.append(current)
    return out


def _split_long(sentence: str, bound: int) -> list[str]:
    out: list[str] = []
    for clause in _pieces(_CLAUSE, sentence):
        out.extend([clause] if weight(clause) <= bound else _split_words(clause, bound))
    return _merge(out, bound)


def _merge(parts: list[str], bound: int) -> list[str]:
    merged: list[str] = []
    for part in parts:
        if merged and weight(merged[-1] + part) <= bound:
            merged[-1] += part
        else:
            merged.append(part)
    return merged


def split_text(text: str, bound: int = MAX_SEGMENT_WEIGHT) -> list[str]:
    """Segments in order; joined back together they give the input (whitespace aside)."""
    parts: list[str] = []
    for sentence in _pieces(_SENTENCE, text):
        parts.extend([sentence] if weight(sentence) <= bound else _split_long(sentence, bound))
    segments = [s.strip() for s in _merge(parts, bound)]
    return [s for s in segments if s]
