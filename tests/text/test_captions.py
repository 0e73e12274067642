"""SRT and WebVTT captions from timed words."""

from __future__ import annotations

from qwen_tts_api.text.captions import MAX_CUE_CHARS, Timed, cues, srt, webvtt

WORDS = [
    Timed("Hello", 0.0, 0.4),
    Timed("there.", 0.4, 0.9),
    Timed("Second", 2.0, 2.5),
    Timed("line", 2.5, 2.9),
    Timed("-->", 2.9, 3.0),
]


def test_cues_end_at_sentences_and_silences():
    assert [c.word for c in cues(WORDS)] == ["Hello there.", "Second line -->"]
    gap = [Timed("one", 0.0, 0.5), Timed("two", 1.5, 2.0)]
    assert [c.word for c in cues(gap)] == ["one", "two"]


def test_long_text_is_cut_into_short_cues():
    words = [Timed("word", i * 0.3, i * 0.3 + 0.3) for i in range(60)]
    out = cues(words)
    assert len(out) > 1 and all(len(c.word) <= MAX_CUE_CHARS for c in out)
    assert " ".join(c.word for c in out) == " ".join(w.word for w in words)


def test_srt():
    assert srt(WORDS) == (
        "1\n00:00:00,000 --> 00:00:00,900\nHello there.\n\n2\n00:00:02,000 --> 00:00:03,000\nSecond line ->\n"
    )


def test_webvtt_with_a_note():
    text = webvtt(WORDS, note="estimated")
    assert text.startswith("WEBVTT\n\nNOTE estimated\n\n00:00:00.000 --> 00:00:00.900\nHello there.\n")
    assert "00:00:02.000 --> 00:00:03.000\nSecond line ->\n" in text
    assert webvtt([Timed("x", 3661.5, 3662.0)]).endswith("01:01:01.500 --> 01:01:02.000\nx\n")
