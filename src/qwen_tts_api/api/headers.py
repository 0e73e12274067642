"""Response headers that repeat what a client sent (``X-Unused-Fields``, ``X-SSML-Ignored``)
or what the server says about it (``X-Voice-Ignored``, ``X-Instructions-Ignored``), encoded
so that any string fits: a header value may only hold visible ASCII and spaces.

Lists are percent-encoded item by item (RFC 3986: every byte of the UTF-8 form but letters,
digits and ``-._~``), so a plain field name reads as it was sent and a name holding a comma,
a newline or a CJK character cannot be mistaken for another; they are joined with ``, `` and
capped at ``HEADER_LIMIT`` bytes, with ``(and N more)`` counting the items left out. Prose
keeps its visible ASCII and percent-encodes the rest (``%`` included), capped the same way.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote_from_bytes

HEADER_LIMIT = 1024  # bytes of one header value

UNUSED_FIELDS_HEADER = "X-Unused-Fields"  # request fields this server does not know, so did not use
SSML_IGNORED_HEADER = "X-SSML-Ignored"  # SSML elements kept as text only


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate (valid in JSON, not in UTF-8) still encodes.
    return text.encode("utf-8", "surrogatepass")


def header_list(items: Iterable[str], limit: int = HEADER_LIMIT) -> str:
    """``items`` as one header value: each percent-encoded, ``, ``-separated, at most
    ``limit`` bytes with the count of those that did not fit."""
    encoded = [quote_from_bytes(_utf8(item), safe="") for item in items]
    shown: list[str] = []
    length = 0
    for index, item in enumerate(encoded):
        left = len(encoded) - index - 1
        tail = f" (and {left} more)" if left else ""
        # This item and, if more follow, room for the count of those left out.
        if length + len(", ") * bool(shown) + len(item) + len(tail) > limit:
            break
        shown.append(item)
        length += len(", ") * (len(shown) > 1) + len(item)
    left_out = len(encoded) - len(shown)
    value = ", ".join(shown)
    if left_out:
        value += f"{' ' if value else ''}(and {left_out} more)"
    return value


def header_text(text: str, limit: int = HEADER_LIMIT) -> str:
    """A sentence as a header value: visible ASCII and spaces kept, everything else (``%``,
    control characters, non-ASCII) percent-encoded; clipped to ``limit`` bytes with ``...``."""
    value = quote_from_bytes(_utf8(text), safe=" !\"#$&'()*+,-./:;<=>?@[\\]^_`{|}~")
    if len(value) <= limit:
        return value
    cut = value[: limit - 3]
    # Never cut inside a %XX escape.
    if "%" in cut[-2:]:
        cut = cut[: cut.rindex("%")]
    return cut + "..."


def safe_headers(notes: Mapping[str, str]) -> dict[str, str]:
    """Headers whose values are sentences, made safe (``header_text``)."""
    return {name: header_text(value) for name, value in notes.items()}
