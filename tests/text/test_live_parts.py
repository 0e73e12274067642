"""Text arriving in fragments: where parts start and end (text/live.py), and which tokens are
final (engine/generation/live_tokens.py)."""

from __future__ import annotations

import random

import pytest

from qwen_tts_api.engine.generation.live_tokens import PartTokens
from qwen_tts_api.engine.generation.prompt import text_ids
from qwen_tts_api.text.live import MAX_SEGMENT_WEIGHT, SOFT_PART_WEIGHT, Part, PartSplitter
from qwen_tts_api.text.segment import weight


@pytest.mark.parametrize(
    "text, ready",
    [
        ("Hello", False),
        ("Hello there", False),
        ("Hello there,", True),  # clause punctuation: speak now
        ("Sure.", True),
        ("one two three four five six seven", False),
        ("one two three four five six seven eight", False),  # the eighth word may still grow
        ("one two three four five six seven eight ", True),
        ("你好世界今天天气", True),  # eight CJK characters
        ("你好世界", False),
        ("你好，", True),
        ("3.5", False),
    ],
)
def test_a_part_starts_at_its_first_clause(text, ready):
    assert Part(text).ready is ready


def feed_in_pieces(text: str, seed: int) -> PartSplitter:
    rng = random.Random(seed)
    splitter, at = PartSplitter(), 0
    while at < len(text):
        step = rng.randint(1, 7)
        splitter.feed(text[at : at + step])
        at += step
    splitter.finish()
    return splitter


@pytest.mark.parametrize("seed", range(5))
def test_long_text_closes_at_sentence_ends_within_the_bound(seed):
    text = " ".join(f"Sentence {i} has a handful of words in it." for i in range(30))
    parts = feed_in_pieces(text, seed).parts
    assert len(parts) > 2 and all(p.closed for p in parts)
    assert " ".join(p.text for p in parts) == text
    for part in parts[:-1]:
        assert part.text.endswith(".") and SOFT_PART_WEIGHT <= weight(part.text) <= MAX_SEGMENT_WEIGHT


def test_a_sentence_that_never_ends_is_cut_between_words():
    text = " ".join(["word"] * 300)
    parts = feed_in_pieces(text, 0).parts
    assert all(weight(p.text) <= MAX_SEGMENT_WEIGHT and not p.text.endswith(" ") for p in parts)
    assert " ".join(p.text for p in parts) == text


def test_cjk_without_spaces_is_cut_between_characters():
    parts = feed_in_pieces("天气很好" * 60, 1).parts
    assert all(weight(p.text) <= MAX_SEGMENT_WEIGHT for p in parts)
    assert "".join(p.text for p in parts) == "天气很好" * 60


def test_close_current_and_finish():
    splitter = PartSplitter()
    splitter.feed("The model stopped early")
    splitter.close_current()
    splitter.feed(" so this is a new part")
    splitter.finish()
    assert [(p.text, p.closed) for p in splitter.parts] == [
        ("The model stopped early", True),
        ("so this is a new part", True),
    ]
    empty = PartSplitter()
    empty.feed("   ")
    empty.finish()
    assert empty.parts == []


@pytest.fixture(scope="module")
def tts(demo_models):
    import torch
    from qwen_tts import Qwen3TTSModel

    return Qwen3TTSModel.from_pretrained(str(demo_models["customvoice"]), device_map="cpu", dtype=torch.float32)


TEXTS = [
    "Hello there, how are you today? I'm fine: thanks!",
    "Numbers like 3.14 and 1,000,000 stay whole; so do don't and it's.",
    "你好，世界！今天天气很好。Mixed with English, too.",
    'Quotes "inside" (and brackets) -- dashes... and new\nlines.',
]


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("seed", range(3))
def test_final_tokens_are_those_of_the_whole_text(tts, text, seed):
    """However the text is cut, the ids handed over one by one are the whole text's ids, and
    no id is handed over before it is final."""
    rng = random.Random(seed)
    tokens, at, so_far = PartTokens(tts, control_tokens=[]), 0, ""
    whole = text_ids(tts, text)
    while at < len(text):
        step = rng.randint(1, 4)
        so_far += text[at : at + step]
        at += step
        tokens.update(so_far, closed=False)
        assert tokens.ids == whole[: len(tokens.ids)]
    tokens.update(so_far, closed=True)
    assert tokens.ids == whole


def test_a_control_token_still_arriving_is_held_back(tts):
    tokens = PartTokens(tts, control_tokens=["<|im_end|>"])
    tokens.update("Stop here <|im_", closed=False)
    held = list(tokens.ids)
    tokens.update("Stop here <|im_end|> and go on", closed=True)
    assert tokens.ids[: len(held)] == held
    assert tokens.ids == text_ids(tts, "Stop here  and go on")
