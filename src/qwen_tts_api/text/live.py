"""Text that arrives in fragments (a voice agent's language model, token by token), cut
into the parts that are generated one after another.

A part is one generation: the model reads its text one token per frame, so a part can
start speaking before its text is complete and keep reading what arrives. A part starts
once it holds a first clause (clause or sentence punctuation, or ``CLAUSE_WORDS`` words),
so the first words are not spoken without the phrase they belong to. It closes at the
first sentence end past ``SOFT_PART_WEIGHT``, or, for a sentence that will not end, at a
word boundary before ``MAX_SEGMENT_WEIGHT`` (the bound of a segment of ``/v1/audio/speech``);
the rest begins the next part. Short turns are one part.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .budget import is_wide
from .segment import MAX_SEGMENT_WEIGHT, weight

SOFT_PART_WEIGHT = 200
CLAUSE_WORDS = 8

_CLOSERS = "\"'”’)\\]」』"
# A sentence end is known once something follows it (a decimal point is not one).
_SENTENCE_END = re.compile(rf"(?:[.!?…]+[{_CLOSERS}]*(?=\s)|[。！？；]+[{_CLOSERS}]*)")
# A clause may start speaking as soon as its punctuation arrives (nothing is cut there).
_CLAUSE_END = re.compile(rf"(?:[,;:.!?…]+[{_CLOSERS}]*(?=\s|$)|[，、；：。！？]+)")


@dataclass
class Part:
    text: str = ""
    closed: bool = False

    @property
    def ready(self) -> bool:
        """Enough text to start speaking: the part is complete, or it holds a first clause."""
        if self.closed:
            return True
        if _CLAUSE_END.search(self.text):
            return True
        complete_words = len(self.text.split()) - (0 if self.text[-1:].isspace() else 1)
        wide = sum(1 for ch in self.text if is_wide(ch))
        return complete_words >= CLAUSE_WORDS or wide >= CLAUSE_WORDS


class PartSplitter:
    """The parts of one turn. ``feed`` fragments, then ``finish``; ``parts`` grows as text
    arrives, and every part but the last is closed."""

    def __init__(self, soft: int = SOFT_PART_WEIGHT, hard: int = MAX_SEGMENT_WEIGHT):
        self.soft, self.hard = soft, hard
        self.parts: list[Part] = [Part()]
        self.finished = False

    @property
    def text(self) -> str:
        return " ".join(part.text.strip() for part in self.parts if part.text.strip())

    def feed(self, fragment: str) -> None:
        if self.finished or not fragment:
            return
        current = self.parts[-1]
        current.text = (current.text + fragment).lstrip()
        while (cut := self._cut(current.text)) is not None:
            current.text, rest = current.text[:cut].strip(), current.text[cut:].lstrip()
            current.closed = True
            current = Part(rest)
            self.parts.append(current)

    def close_current(self) -> None:
        """The open part ends where its text is now (its generation ended early); text that
        arrives from now on begins a new part."""
        if not self.finished and self.parts[-1].text.strip():
            last = self.parts[-1]
            last.text, last.closed = last.text.strip(), True
            self.parts.append(Part())

    def finish(self) -> None:
        """No more text: the last part is complete (and dropped if it holds nothing)."""
        if self.finished:
            return
        self.finished = True
        last = self.parts[-1]
        last.text, last.closed = last.text.strip(), True
        if not last.text:
            self.parts.pop()

    def _cut(self, text: str) -> int | None:
        """Where the open part must close, if it must: after the first sentence end past the
        soft bound, or at the last word boundary before the hard bound."""
        for end in _SENTENCE_END.finditer(text):
            if weight(text[: end.end()]) >= self.soft:
                return end.end()
        if weight(text) <= self.hard:
            return None
        cut = 0
        for space in re.finditer(r"\s+", text):
            if weight(text[: space.start()]) > self.hard:
                break
            cut = space.start()
        if cut == 0:  # no space within the bound (CJK): cut between characters
            while weight(text[: cut + 1]) <= self.hard:
                cut += 1
        return cut
