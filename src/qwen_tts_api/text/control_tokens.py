"""Keeps the chat template's control tokens out of user text.

Qwen3-TTS wraps text in a chat template (``<|im_start|>assistant ...<|im_end|>``), and its
tokenizer reads those markers as special tokens wherever they appear. Left in user input,
they would be taken as template structure rather than words, so they are removed from the
input, instructions and transcripts before anything is tokenised.
"""

from __future__ import annotations

from collections.abc import Sequence


def strip_control_tokens(text: str, tokens: Sequence[str]) -> str:
    # Repeat until nothing changes: removing one token must not assemble another
    # ("<|im_<|im_end|>start|>").
    previous = None
    while previous != text:
        previous = text
        for token in tokens:
            text = text.replace(token, "")
    return text


def control_tokens_of(tts) -> list[str]:
    """The special tokens of a loaded model's text tokenizer, longest first."""
    tokenizer = getattr(tts.processor, "tokenizer", tts.processor)
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return sorted(
        {token.content for token in added.values() if getattr(token, "special", False)}, key=len, reverse=True
    )
