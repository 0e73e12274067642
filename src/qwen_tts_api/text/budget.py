"""How many codec frames a text may take before generation is cut off (the runaway guard).

Speech runs at about 14 Latin characters or 4 CJK characters a second, and the codec
makes 12.5 frames a second. The budget allows about twice that, plus two seconds, so a
real model ends on its own end-of-speech well before it; a model that never emits
end-of-speech (the random demo models) stops at a length that grows with the text.
"""

from __future__ import annotations

import unicodedata

BASE_FRAMES = 25  # two seconds for short inputs and trailing silence
LATIN_FRAMES_PER_CHAR = 1.8
WIDE_FRAMES_PER_CHAR = 6.0


def is_wide(ch: str) -> bool:
    # CJK ideographs, kana and hangul carry a syllable each: much slower per character.
    return unicodedata.east_asian_width(ch) in ("W", "F")


def frame_budget(text: str, model_limit: int) -> int:
    wide = sum(1 for ch in text if is_wide(ch))
    narrow = sum(1 for ch in text if not ch.isspace()) - wide
    frames = BASE_FRAMES + LATIN_FRAMES_PER_CHAR * narrow + WIDE_FRAMES_PER_CHAR * wide
    return max(1, min(int(frames), model_limit))
