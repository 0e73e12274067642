"""Long text is split into bounded sentence-sized segments, in order, without cutting words."""

import re

import numpy as np
import pytest

from qwen_tts_api.engine.generation.crossfade import FADE_SAMPLES, CrossFade
from qwen_tts_api.text.budget import frame_budget
from qwen_tts_api.text.segment import MAX_SEGMENT_WEIGHT, split_text, weight

SAMPLES = [
    "Hello there. How are you? I am fine, thanks! " * 40,
    'Dr. Smith said: "Hi." Then he left... And? The value is 3.14, roughly.',
    "短句。" * 300,
    "没有标点的中文文本" * 120,
    "これは日本語の文です。とても長い文章になります！" * 30,
    "word " * 900,
    "x" * 1000,
    "One, two, three; four: five, six " * 60,
]


def squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize("text", SAMPLES)
def test_segments_cover_input_in_order(text):
    assert squash("".join(split_text(text))) == squash(text)


@pytest.mark.parametrize("text", SAMPLES)
def test_segments_are_bounded(text):
    assert all(0 < weight(s) <= MAX_SEGMENT_WEIGHT for s in split_text(text))


def test_words_are_never_cut():
    text = "extraordinarily " * 200
    for segment in split_text(text):
        assert all(word == "extraordinarily" for word in segment.split())


def test_sentences_kept_whole_when_they_fit():
    segments = split_text("First sentence here. " * 30)
    assert all(s.endswith(".") for s in segments)


def test_short_text_is_one_segment():
    assert split_text("  Just this.  ") == ["Just this."]
    assert split_text("   ") == []


def test_budget_grows_with_text_and_respects_model_limit():
    assert frame_budget("Hi.", 8192) < frame_budget("Hi. " * 20, 8192)
    assert frame_budget("你好" * 10, 8192) > frame_budget("ab" * 10, 8192)
    assert frame_budget("x" * 4096, 100) == 100


def test_joiner_passes_single_segment_through():
    audio = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    joiner = CrossFade(1)
    assert np.array_equal(np.concatenate([joiner.feed(0, audio[:3000]), joiner.end_segment(0, audio[3000:])]), audio)


def test_joiner_removes_click_between_segments():
    joiner = CrossFade(2)
    first = np.full(4800, 0.8, np.float32)
    second = np.full(4800, -0.8, np.float32)
    out = np.concatenate(
        [
            joiner.feed(0, first[:2000]),
            joiner.end_segment(0, first[2000:]),
            joiner.feed(1, second),
            joiner.end_segment(1, None),
        ]
    )
    assert len(out) == len(first) + len(second)
    assert np.max(np.abs(np.diff(out))) <= 0.8 / FADE_SAMPLES * 1.01  # a ramp, not a jump
