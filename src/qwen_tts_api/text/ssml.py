"""SSML input, read with defusedxml: a document type is refused outright, so entity
expansion (billion laughs) and external entities never run.

Supported: ``speak``, ``p`` and ``s`` (segment boundaries), ``break`` (``time``,
``strength``), ``sub alias``, ``say-as`` (``characters``/``spell-out``, ``cardinal``,
``ordinal``, ``digits``, ``telephone``, ``date``, ``time``), ``prosody rate`` (a time
stretch of the span), ``lang xml:lang`` (and ``xml:lang`` on ``speak``, ``p``, ``s``),
``emphasis`` (its text). Any other element keeps its text and is named in ``ignored``, as
is any attribute these do not read (``element@attribute``, e.g. ``prosody@pitch``).
"""

from __future__ import annotations

import datetime
import re
from xml.etree.ElementTree import Element, ParseError

import defusedxml.ElementTree as SafeXML
from defusedxml import DefusedXmlException

from . import normalize as words
from .echo import quoted
from .markup import MAX_RATE, MIN_RATE, Markup, MarkupError, Piece, Speech, check_total, checked_pause
from .markup import duration_seconds as tag_duration

XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"

# BCP 47 primary subtags of our languages.
LANGUAGE_TAGS = {locale: language for language, locale in words.LOCALES.items()}

# break strength in seconds (none .. x-strong), as the common engines space them.
BREAK_STRENGTHS = {"none": 0.0, "x-weak": 0.1, "weak": 0.25, "medium": 0.5, "strong": 0.75, "x-strong": 1.0}
RATE_NAMES = {"x-slow": 0.5, "slow": 0.75, "medium": 1.0, "fast": 1.25, "x-fast": 1.5, "default": 1.0}
BOUNDARIES = {"p", "s", "paragraph", "sentence"}
KEPT = {"speak", "emphasis", "sub", "say-as", "prosody", "lang", "break", *BOUNDARIES}
XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
# The attributes each element is read for (xml:lang on any), and speak's document attributes.
READ_ATTRIBUTES = {
    "speak": {"version", f"{XSI}schemaLocation"},
    "break": {"time", "strength"},
    "sub": {"alias"},
    "say-as": {"interpret-as", "format"},
    "prosody": {"rate"},
}


def _name(element: Element) -> str:
    return element.tag.rsplit("}", 1)[-1]  # without the SSML namespace


def _language(tag: str) -> str:
    language = LANGUAGE_TAGS.get(tag.split("-")[0].split("_")[0].lower())
    if language is None:
        raise MarkupError(f"xml:lang {quoted(tag)} is not a language this server speaks")
    return language


def _rate(value: str) -> float:
    value = value.strip().lower()
    if value in RATE_NAMES:
        return RATE_NAMES[value]
    match = re.fullmatch(r"([+-]?)(\d+(?:\.\d+)?)(%?)", value)
    if match is None:
        raise MarkupError(f"prosody rate {quoted(value)}: use x-slow .. x-fast, a percentage or a number")
    sign, number, percent = match.groups()
    amount = float(number)
    if percent:
        return 1.0 + (amount if sign != "-" else -amount) / 100.0 if sign else amount / 100.0
    return amount if not sign else 1.0 + (amount if sign == "+" else -amount)


def _say_as(element: Element, text: str, language: str) -> str:
    kind = (element.get("interpret-as") or "").lower()
    locale = words.locale_of(language, text) or "en"
    stripped = text.strip()
    try:
        if kind in ("characters", "spell-out", "letters"):
            return words.spelled(stripped)
        if kind in ("cardinal", "number"):
            return words.number_words(stripped, locale)
        if kind == "ordinal":
            return words.ordinal(int(re.sub(r"\D", "", stripped)), locale)
        if kind == "digits":
            return words.digits(stripped, locale)
        if kind == "telephone":
            return words.phone_words(stripped, locale)
        if kind == "date":
            return words.date_words(_date(stripped, element.get("format") or "ymd"), locale)
        if kind == "time":
            hour, minute = (int(part) for part in re.split(r"[:h.]", stripped)[:2])
            return words.time_words(hour, minute, locale)
    except (ValueError, IndexError) as exc:
        raise MarkupError(f"say-as {quoted(kind)} cannot read {quoted(stripped)}") from exc
    raise MarkupError(f"say-as interpret-as {quoted(kind)} is not supported")


def _date(text: str, order: str) -> datetime.date:
    parts = [int(part) for part in re.split(r"\D+", text) if part]
    fields = dict(zip(order.lower(), parts))
    return datetime.date(fields["y"], fields.get("m", 1), fields.get("d", 1))


class _Reader:
    def __init__(self, language: str) -> None:
        self.language = language  # the request's: what say-as reads in outside any <lang>
        self.pieces: list[Piece] = []
        self.ignored: list[str] = []

    def speak(self, text: str | None, language: str | None, rate: float) -> None:
        if text:  # whitespace too: it keeps the words of neighbouring elements apart
            self.pieces.append(Speech(re.sub(r"\s+", " ", text), language, rate))  # the document's layout aside

    def pause(self, seconds: float, where: str) -> None:
        self.pieces.append(checked_pause(seconds, where))

    def note_ignored(self, what: str) -> None:
        if what not in self.ignored:
            self.ignored.append(what)

    def walk(self, element: Element, language: str | None, rate: float) -> None:
        name = _name(element)
        if name in KEPT:
            for attribute in element.attrib:
                if attribute != XML_LANG and attribute not in READ_ATTRIBUTES.get(name, ()):
                    self.note_ignored(f"{name}@{attribute.rsplit('}', 1)[-1]}")
        if element.get(XML_LANG):
            language = _language(element.get(XML_LANG, ""))
        if name == "break":
            self.pause(self._break(element), "<break>")
        elif name == "sub":
            self.speak(element.get("alias", element.text or ""), language, rate)
        elif name == "say-as":
            self.speak(_say_as(element, "".join(element.itertext()), language or self.language), language, rate)
        else:
            if name == "prosody" and element.get("rate"):
                rate *= _rate(element.get("rate", ""))
                if not MIN_RATE <= rate <= MAX_RATE:
                    raise MarkupError(f"prosody rate makes {rate:g}x; it must stay within {MIN_RATE}..{MAX_RATE}")
            if name not in KEPT:
                self.note_ignored(name)
            if name in BOUNDARIES:
                self.pause(0.0, f"<{name}>")
            self.speak(element.text, language, rate)
            for child in element:
                self.walk(child, language, rate)
                self.speak(child.tail, language, rate)
            if name in BOUNDARIES:
                self.pause(0.0, f"<{name}>")

    @staticmethod
    def _break(element: Element) -> float:
        if element.get("time"):
            seconds = tag_duration(element.get("time", ""))
            if seconds is None:
                raise MarkupError(f"<break time={quoted(element.get('time'))}>: write it as 500ms or 1.5s")
            return seconds
        strength = element.get("strength", "medium")
        if strength not in BREAK_STRENGTHS:
            raise MarkupError(f"<break strength={quoted(strength)}>: use one of {', '.join(BREAK_STRENGTHS)}")
        return BREAK_STRENGTHS[strength]


def read_ssml(text: str, language: str = "Auto") -> Markup:
    """``language``: the request's (say-as expands in it outside any ``<lang>``)."""
    try:
        root = SafeXML.fromstring(text.strip(), forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except ParseError as exc:
        raise MarkupError(f"invalid SSML: {exc}") from exc  # the parser's message names line and column
    except DefusedXmlException as exc:
        raise MarkupError("SSML may not declare a document type or entities") from exc
    if _name(root) != "speak":
        raise MarkupError("SSML must have <speak> as its root element")
    reader = _Reader(language)
    reader.walk(root, None, 1.0)
    markup = Markup(tuple(reader.pieces), tuple(reader.ignored))
    check_total(markup.pieces)
    return markup
