"""Numbers, dates, times, money, percentages, units and phone numbers written out as words
in the language they will be spoken in, before tokenising, so the model never guesses the
language of a digit (QwenLM/Qwen3-TTS issue 265: English digits read in Chinese).

The words come from maintained libraries: num2words (cardinals, ordinals, years, money) for
nine of our ten languages, cn2an for Chinese, and Babel's CLDR data for what is said around
the numbers (month names and date order, unit and currency names with their plural forms).
Only the patterns that find numbers in text are ours.

``language`` is the request's, as the model names it. With "Auto" the language is taken
from the script when the script names exactly one of ours (kana: Japanese, Hangul: Korean,
Han: Chinese, Cyrillic: Russian); Latin-script text under "Auto" is left as it is, since
reading "15" as English in a French sentence is the very mistake this module exists to avoid.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation

import cn2an
from babel.dates import format_date
from babel.numbers import get_currency_name
from babel.units import format_unit
from num2words import num2words

# Our languages as num2words / Babel name them.
LOCALES = {
    "English": "en",
    "Chinese": "zh",
    "Japanese": "ja",
    "Korean": "ko",
    "French": "fr",
    "German": "de",
    "Spanish": "es",
    "Italian": "it",
    "Portuguese": "pt",
    "Russian": "ru",
}
_COMMA_DECIMAL = {"fr", "de", "es", "it", "pt", "ru"}  # 3,5 is three and a half; 1.000 / 1 000 a thousand
_CJK = {"zh", "ja", "ko"}  # no space between a number and its unit or counter

_KANA = re.compile(r"[\u3040-\u30ff]")
_HANGUL = re.compile(r"[\uac00-\ud7af\u1100-\u11ff]")
_HAN = re.compile(r"[\u4e00-\u9fff]")
_CYRILLIC = re.compile(r"[\u0400-\u04ff]")


def locale_of(language: str, text: str) -> str | None:
    """The locale to read ``text``'s numbers in, or None to leave them alone."""
    if language in LOCALES:
        return LOCALES[language]
    for pattern, locale in ((_KANA, "ja"), (_HANGUL, "ko"), (_HAN, "zh"), (_CYRILLIC, "ru")):
        if pattern.search(text):
            return locale
    return None


# ---------- numbers as words ----------


def cardinal(value: Decimal | int, locale: str) -> str:
    if locale == "zh":
        return cn2an.an2cn(str(value), "low")
    return num2words(value, lang=locale)


def ordinal(value: int, locale: str) -> str:
    if locale == "zh":
        return "第" + cn2an.an2cn(str(value), "low")
    return num2words(value, lang=locale, to="ordinal")


def year(value: int, locale: str) -> str:
    if locale == "zh":  # years are read digit by digit: 二零二四
        return cn2an.an2cn(str(value), "direct")
    if locale == "en":
        return num2words(value, lang="en", to="year")
    return cardinal(value, locale)


def digits(text: str, locale: str) -> str:
    """Each digit on its own (phone numbers, say-as digits)."""
    return " ".join(cardinal(int(ch), locale) for ch in text if ch.isdigit())


def spelled(text: str) -> str:
    """Characters one by one (say-as characters / spell-out)."""
    return " ".join(ch for ch in text if not ch.isspace())


def parse_number(text: str, locale: str) -> Decimal | None:
    """A number as written in ``locale`` (thousands separators, decimal point or comma)."""
    text = text.replace("\u00a0", " ").replace("\u202f", " ")
    if locale in _COMMA_DECIMAL:
        if re.fullmatch(r"\d{1,3}(?:[. ]\d{3})+(?:,\d+)?", text):
            text = text.replace(".", "").replace(" ", "")
        text = text.replace(",", ".")
    else:
        text = text.replace(",", "") if re.fullmatch(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?", text) else text
    try:
        return Decimal(text)
    except InvalidOperation:
        return None


def number_words(text: str, locale: str) -> str:
    value = parse_number(text, locale)
    if value is None:
        return text
    if value == value.to_integral_value() and "." not in str(value):
        return cardinal(int(value), locale)
    return cardinal(value, locale)


# ---------- what surrounds numbers ----------

_NUMBER = r"\d{1,3}(?:[,.  \u202f]\d{3})+(?:[.,]\d+)?|\d+(?:[.,]\d+)?"
_SIGNED = rf"(?<![0-9A-Za-z.,])(?P<neg>[-−])?(?P<num>{_NUMBER})"

_CURRENCIES = {"$": "USD", "€": "EUR", "£": "GBP", "₩": "KRW", "₽": "RUB", "₹": "INR"}
_CODES = "USD|EUR|GBP|JPY|CNY|RMB|KRW|RUB|CHF|INR"


def _yen(locale: str) -> str:
    return "CNY" if locale == "zh" else "JPY"


def money(amount: Decimal, code: str, locale: str) -> str:
    code = "CNY" if code == "RMB" else code
    if locale not in ("zh", "ja"):
        try:
            return num2words(amount, lang=locale, to="currency", currency=code)
        except (NotImplementedError, ValueError, KeyError):
            pass
    count = int(amount) if amount == amount.to_integral_value() else 2  # a fraction takes the plural
    name = get_currency_name(code, count=count, locale=locale)
    words = cardinal(amount if amount != amount.to_integral_value() else int(amount), locale)
    return f"{words}{'' if locale in _CJK else ' '}{name}"


# CLDR unit ids for the symbols people write after numbers.
_UNITS = {
    "km/h": "speed-kilometer-per-hour",
    "mph": "speed-mile-per-hour",
    "km": "length-kilometer",
    "cm": "length-centimeter",
    "mm": "length-millimeter",
    "m": "length-meter",
    "mi": "length-mile",
    "kg": "mass-kilogram",
    "mg": "mass-milligram",
    "g": "mass-gram",
    "lb": "mass-pound",
    "ml": "volume-milliliter",
    "l": "volume-liter",
    "L": "volume-liter",
    "°C": "temperature-celsius",
    "°F": "temperature-fahrenheit",
    "GB": "digital-gigabyte",
    "MB": "digital-megabyte",
    "kWh": "energy-kilowatt-hour",
    "h": "duration-hour",
    "min": "duration-minute",
    "s": "duration-second",
    "ms": "duration-millisecond",
}
_UNIT_PATTERN = "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))


def with_unit(amount: Decimal, unit_id: str, locale: str) -> str:
    """``amount`` of a CLDR unit in words: Babel's long pattern (plural form included) with
    the number in it written out."""
    if unit_id == "concentr-percent" and locale == "zh":
        return "百分之" + cardinal(_plain(amount), locale)
    if unit_id == "concentr-percent" and locale == "ko":
        return cardinal(_plain(amount), locale) + " 퍼센트"
    phrase = format_unit(abs(amount.normalize()), unit_id, length="long", locale=locale)
    phrase = phrase.replace("\u00a0", " ").replace("\u202f", " ")
    words = _space(cardinal(_plain(amount), locale), locale)
    return re.sub(r"[\d.,\u00a0\u202f ]*\d\s*", lambda m: words, phrase, count=1)


def _plain(amount: Decimal) -> Decimal | int:
    """An int when it has no fraction (12.0 is read as twelve)."""
    return int(amount) if amount == amount.to_integral_value() else amount


# ---------- dates and times ----------

_HOUR_WORDS = {
    "fr": "heures",
    "de": "Uhr",
    "es": "y",
    "it": "e",
    "pt": "e",
    "ru": "",
    "zh": "点",
    "ja": "時",
    "ko": "시",
}
_MINUTE_WORDS = {"zh": "分", "ja": "分", "ko": "분"}


def time_words(hour: int, minute: int, locale: str) -> str:
    h = cardinal(hour, locale)
    if locale == "en":
        if minute == 0:
            return f"{h} o'clock"
        return f"{h} oh {cardinal(minute, locale)}" if minute < 10 else f"{h} {cardinal(minute, locale)}"
    if locale in _CJK:
        m = f"{cardinal(minute, locale)}{_MINUTE_WORDS[locale]}" if minute else ""
        return f"{h}{_HOUR_WORDS[locale]}{m}"
    if locale == "fr" and hour == 1:
        h, word = "une", "heure"
    else:
        word = _HOUR_WORDS[locale]
    parts = [h, word, cardinal(minute, locale) if minute else ""]
    return " ".join(p for p in parts if p)


def date_words(day: datetime.date, locale: str) -> str:
    """The date in the language's own long form (CLDR), its numbers written out."""
    text = format_date(day, "long", locale=locale)
    if locale == "ru":
        text = re.sub(r"\s*г\.$", " года", text)
    if locale == "en":  # March fifteenth, twenty twenty-four
        return f"{format_date(day, 'MMMM', locale='en')} {ordinal(day.day, 'en')}, {year(day.year, 'en')}"
    if locale == "de":  # 15. März: the day is an ordinal
        text = re.sub(r"^(\d+)\.", lambda m: ordinal(int(m.group(1)), "de").removesuffix("e") + "en", text)
    text = text.replace(str(day.year), year(day.year, locale), 1)
    return re.sub(r"\d+", lambda m: cardinal(int(m.group(0)), locale), text)


# ---------- the patterns, in the order they are tried ----------

_PHONE = re.compile(r"(?<![\w+])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w])")
_ISO_DATE = re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})(?!\d)")
_TIME = re.compile(r"(?<![\d:])([01]?\d|2[0-3]):([0-5]\d)(?![\d:])")
_MONEY_BEFORE = re.compile(rf"(?P<sym>[$€£¥₩₽₹])\s?(?P<num>{_NUMBER})")
_MONEY_AFTER = re.compile(rf"(?P<num>{_NUMBER})\s?(?P<sym>[$€£¥₩₽₹]|\b(?:{_CODES})\b)")
_PERCENT = re.compile(rf"{_SIGNED}\s?%")
_UNIT = re.compile(rf"{_SIGNED}\s?(?P<unit>{_UNIT_PATTERN})(?![A-Za-z0-9/])")
_ORDINALS = {
    "en": re.compile(r"\b(\d+)(?:st|nd|rd|th)\b"),
    "fr": re.compile(r"\b(\d+)(?:er|re|e|ème|eme)\b"),
    "es": re.compile(r"\b(\d+)[ºª°]"),
    "it": re.compile(r"\b(\d+)[ºª°]"),
    "pt": re.compile(r"\b(\d+)[ºª°]"),
}
_PLAIN = re.compile(_SIGNED)


def phone_words(text: str, locale: str) -> str:
    """A phone number digit by digit, its groups apart ("plus" for the country code)."""
    groups = re.findall(r"\d+", text)
    spoken = ", ".join(digits(group, locale) for group in groups)
    return ("plus " if text.lstrip().startswith("+") and locale == "en" else "") + spoken


def _signed(match: re.Match[str], locale: str) -> Decimal | None:
    amount = parse_number(match.group("num"), locale)
    return -amount if amount is not None and match.group("neg") else amount


def _is_phone(match: re.Match[str]) -> bool:
    text = match.group(0)
    count = sum(ch.isdigit() for ch in text)
    return count >= 7 and (text.startswith("+") or "(" in text or text.count("-") >= 2 or text.count(" ") >= 2)


def _space(words: str, locale: str) -> str:
    return words if locale in _CJK else f" {words} "


def _sub(pattern: re.Pattern[str], text: str, replace: Callable[[re.Match[str]], str | None]) -> str:
    def one(match: re.Match[str]) -> str:
        out = replace(match)
        return match.group(0) if out is None else out

    return pattern.sub(one, text)


def normalize(text: str, language: str) -> str:
    """``text`` with its numbers (and what they count) written out in ``language``; text
    whose language cannot be told safely is returned as it is."""
    locale = locale_of(language, text)
    if locale is None or not re.search(r"\d", text):
        return text

    def phone(m: re.Match[str]) -> str | None:
        return _space(phone_words(m.group(0), locale), locale) if _is_phone(m) else None

    def iso_date(m: re.Match[str]) -> str | None:
        try:
            day = datetime.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
        except ValueError:
            return None
        return date_words(day, locale)

    def money_match(m: re.Match[str]) -> str | None:
        amount = parse_number(m.group("num"), locale)
        sym = m.group("sym")
        code = _yen(locale) if sym == "¥" else _CURRENCIES.get(sym, sym)
        return None if amount is None else _space(money(amount, code, locale), locale)

    def percent(m: re.Match[str]) -> str | None:
        amount = _signed(m, locale)
        return None if amount is None else _space(with_unit(amount, "concentr-percent", locale), locale)

    def unit(m: re.Match[str]) -> str | None:
        amount = _signed(m, locale)
        return None if amount is None else _space(with_unit(amount, _UNITS[m.group("unit")], locale), locale)

    def plain(m: re.Match[str]) -> str:
        value = parse_number(m.group("num"), locale)
        if value is None:
            return m.group(0)
        if len(m.group("num")) > 15 and m.group("num").isdigit():  # an id, not a quantity
            return _space(digits(m.group("num"), locale), locale)
        return _space(number_words(("-" if m.group("neg") else "") + m.group("num"), locale), locale)

    text = _sub(_ISO_DATE, text, iso_date)
    text = _sub(_TIME, text, lambda m: _space(time_words(int(m.group(1)), int(m.group(2)), locale), locale))
    text = _sub(_PHONE, text, phone)
    text = _sub(_MONEY_BEFORE, text, money_match)
    text = _sub(_MONEY_AFTER, text, money_match)
    text = _sub(_PERCENT, text, percent)
    text = _sub(_UNIT, text, unit)
    if locale in _ORDINALS:
        text = _sub(_ORDINALS[locale], text, lambda m: ordinal(int(m.group(1)), locale))
    if locale == "zh":
        text = cn2an.transform(text, "an2cn")
    text = _sub(_PLAIN, text, plain)
    return _tidy(text)


def _tidy(text: str) -> str:
    """Spaces the replacements left: never doubled, never before punctuation."""
    text = re.sub(r"[ \t]{2,}", " ", text)
    text = re.sub(r" +([,.!?;:)\]、。，！？；：])", r"\1", text)
    return re.sub(r"([(\[]) +", r"\1", text).strip()
