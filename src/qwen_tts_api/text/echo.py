"""Text a client chose, made safe to repeat: in an error message (quoted and clipped) and in
a log line (one line, control characters escaped). Any string fits, lone surrogates and
64 KiB names included."""

from __future__ import annotations

QUOTE_LIMIT = 80  # characters of a client's value repeated in a message
LOG_LIMIT = 2000  # characters of a client's text in a log line


def _clipped(text: str, limit: int) -> tuple[str, int]:
    """The first ``limit`` characters and how many were left out."""
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def quoted(value: object, limit: int = QUOTE_LIMIT) -> str:
    """``value`` as a message quotes it: Python's repr (control characters, lone surrogates
    and other unprintable characters escaped), clipped to ``limit`` characters of the value
    with a count of the rest. Anything else (a JSON number, list or object) as its repr, clipped."""
    if not isinstance(value, str):
        shown, left_out = _clipped(repr(value), limit)
        return f"{shown}... ({left_out} more characters)" if left_out else shown
    shown, left_out = _clipped(value, limit)
    text = repr(shown)
    return f"{text[:-1]}...{text[-1]} ({left_out} more characters)" if left_out else text


def loggable(value: object, limit: int = LOG_LIMIT) -> str:
    """``value`` fit for one log line: backslashes, control and other unprintable characters
    (newlines, NUL, DEL, lone surrogates) escaped as Python writes them; printable text of
    any script kept; clipped to ``limit`` characters."""
    text = value if isinstance(value, str) else repr(value)
    shown, left_out = _clipped(text, limit)
    escaped = "".join(
        char if char.isprintable() and char != "\\" else char.encode("unicode_escape").decode("ascii") for char in shown
    )
    return f"{escaped}... ({left_out} more characters)" if left_out else escaped
