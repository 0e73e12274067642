"""Words for word timings: the client's words, the spoken ones, and which became which."""

from __future__ import annotations

import pytest

from qwen_tts_api.text.normalize import normalize
from qwen_tts_api.text.words import key, match, spoken_words, spread, syllables, written_words


def test_written_words_keep_their_punctuation_and_places():
    text = "  Hello, world!  你好 — fine"
    words = written_words(text)
    assert [w.text for w in words] == ["Hello,", "world!", "你", "好", "—", "fine"]
    assert all(text[w.start : w.end] == w.text for w in words)


def test_spoken_words_are_what_the_aligner_reads():
    assert spoken_words("Hello, world! It's 5 o'clock — 你好") == ["Hello", "world", "It's", "5", "o'clock", "你", "好"]
    assert spoken_words("— ... !") == []


def test_equal_words_match_one_to_one():
    spans = match(["Hello,", "world!"], ["Hello", "world"])
    assert [(s.first, s.last) for s in spans] == [(0, 1), (1, 2)]


def test_a_number_spoken_as_words_spans_them():
    written = [w.text for w in written_words("I have 42 apples.")]
    assert spoken_words(normalize("I have 42 apples.", "English")) == ["I", "have", "fortytwo", "apples"]
    spans = match(written, ["I", "have", "forty", "two", "apples"])
    assert [(s.word, s.first, s.last) for s in spans] == [("I", 0, 1), ("have", 1, 2), ("42", 2, 4), ("apples.", 4, 5)]
    shared = match(["New", "York"], ["newyork"])  # two written words, one spoken: shared by length
    assert [(s.first, s.last) for s in shared] == [(0, 3 / 7), (3 / 7, 1)]


def test_punctuation_alone_takes_no_time_and_inserted_words_join_the_one_before():
    spans = match(["wait", "—", "$5"], ["wait", "five", "dollars"])
    assert (spans[1].first, spans[1].last) == (1, 1)  # the dash: nothing spoken
    assert (spans[2].first, spans[2].last) == (1, 3)  # "$5": both spoken words


def test_every_written_word_gets_a_span_in_order():
    written = ["a", "b", "c", "d"]
    spans = match(written, ["x", "b", "y", "z", "w"])
    assert [s.word for s in spans] == written
    assert all(s.first <= s.last for s in spans)
    assert [s.first for s in spans] == sorted(s.first for s in spans)


@pytest.mark.parametrize(
    ("word", "count"), [("a", 1), ("hello", 2), ("beautiful", 3), ("好", 1), ("42", 2), ("xyz", 1)]
)
def test_syllables(word, count):
    assert syllables(word) == count


def test_spread_fills_the_span_by_syllables():
    spans = spread(["hello", "a"], 1.0, 4.0)
    assert spans == [(1.0, 3.0), (3.0, 4.0)]
    assert spread([], 0.0, 1.0) == []


def test_keys_ignore_case_and_punctuation():
    assert key("“Hello,”") == key("hello") == "hello"
