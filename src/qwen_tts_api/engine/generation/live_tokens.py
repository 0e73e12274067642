"""Text that arrives while it is being spoken: which of its tokens the model may read.

A ``PartSplitter`` (``text/live.py``) cuts them into parts, and ``PartTokens`` decides which
of a part's tokens are final: the model reads each token once and cannot take it back, so a
token is handed over only when no later text can change it. The tokenizer splits text into
pieces (words with their leading space, runs of punctuation, ...) before merging within a
piece, and only the last piece can still grow; so every piece but the last is final, and
the last one too once the part is closed. The ids handed over are then exactly those of the
whole text, which is what lets a paused generation resume as if the text had all been there.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ...text.normalize import normalize
from ...text.prepare import clean
from .prompt import text_ids

log = logging.getLogger(__name__)


class PartTokens:
    """The final token ids of one part's text, as the text grows."""

    def __init__(self, tts, control_tokens: Sequence[str], normalize_in: str | None = None):
        self.tts = tts
        self.control_tokens = control_tokens
        self.normalize_in = normalize_in  # a language: numbers are written out in it
        self.ids: list[int] = []
        self.closed = False
        self._seen: tuple[str, bool] | None = None
        tokenizer = getattr(tts.processor, "tokenizer", tts.processor)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        self._pre_tokenizer = getattr(backend, "pre_tokenizer", None)

    def update(self, text: str, closed: bool) -> list[int]:
        """Ids that became final since the last call (``text``: the part so far)."""
        if self._seen == (text, closed):
            return []
        self._seen = (text, closed)
        cleaned = self.spoken(text, closed)
        final = cleaned if closed else cleaned[: self._final_length(cleaned)]
        ids = text_ids(self.tts, final) if final.strip() else []
        known = len(self.ids)
        if ids[:known] != self.ids:  # should not happen: the model has read what it has read
            log.warning("live text: tokens changed after they were read; continuing with the new ones")
        fresh = ids[known:]
        self.ids.extend(fresh)
        self.closed = closed
        return fresh

    def spoken(self, text: str, closed: bool) -> str:
        """The text as the model reads it. Normalised, only whole words are read: a number
        is written out once the space after it has arrived."""
        cleaned = clean(text, self.control_tokens)
        if self.normalize_in is None or not any(ch.isdigit() for ch in cleaned):
            return cleaned
        complete = cleaned if closed else cleaned[: max(cleaned.rfind(" "), 0)]
        return normalize(complete, self.normalize_in)

    def _final_length(self, text: str) -> int:
        """How much of ``text`` no later text can re-tokenize: all but its last piece."""
        start = text.rfind("<|")
        if start >= 0 and text.find("|>", start) < 0:  # a control token may be arriving
            text = text[:start]
        if self._pre_tokenizer is not None:
            pieces = self._pre_tokenizer.pre_tokenize_str(text)
            return pieces[-1][1][0] if len(pieces) > 1 else 0
        # Without a fast tokenizer: up to the last space before a word.
        cut = text.rstrip().rfind(" ")
        return max(cut, 0)
