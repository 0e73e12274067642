"""Pauses and SSML in ``input``, heard as a client hears them: the silence is in the decoded
audio where and as long as asked, the spoken pieces are those texts said alone, and bad
markup is a 400 naming ``input`` while the server goes on."""

from __future__ import annotations

import time

import numpy as np
import pytest
from helpers import GREEDY_PCM, SR, decode_audio, error_of

from qwen_tts_api.text.markup import MarkupError, Pause, Speech
from qwen_tts_api.text.prepare import read_markup

SAMPLES_PER_FRAME = 1920
BODY = GREEDY_PCM


def pcm_of(http, text: str, **extra) -> np.ndarray:
    r = http.post("/v1/audio/speech", json={**BODY, "input": text, **extra})
    assert r.status_code == 200, r.text
    return np.frombuffer(r.content, "<i2")


def close(a: np.ndarray, b: np.ndarray) -> bool:
    """The same audio, to a few of int16's steps."""
    return a.shape == b.shape and int(np.abs(a.astype(np.int32) - b).max()) <= 4


def silent_runs(samples: np.ndarray, shortest: int = 2400) -> list[tuple[int, int]]:
    """(start, length) of each run of exact zeros at least ``shortest`` samples long."""
    zero = np.concatenate([[False], samples == 0, [False]])
    edges = np.flatnonzero(np.diff(zero.astype(np.int8)))
    runs = [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]
    return [run for run in runs if run[1] >= shortest]


# --- reading the markup (no server) ---


def test_pause_tags_become_pauses_and_other_brackets_stay_text():
    markup = read_markup("One. [pause:500ms] Two [break:1.5s]three [pause] [PAUSE:.25s]")
    assert markup.pieces == (
        Speech("One. "),
        Pause(0.5),
        Speech(" Two "),
        Pause(1.5),
        Speech("three [pause] "),
        Pause(0.25),
    )


@pytest.mark.parametrize(
    "text", ["a [pause:10.5s] b", "a [pause:fast] b", "a [pause:500] b", "[pause:9s]" * 7, "a [break:-1s]"]
)
def test_bad_pauses_are_markup_errors(text):
    with pytest.raises(MarkupError):
        read_markup(text)


def test_ssml_elements():
    markup = read_markup(
        '<speak version="1.1" xmlns="http://www.w3.org/2001/10/synthesis">'
        'Hi<break time="300ms"/> <sub alias="World Wide Web">WWW</sub> '
        '<say-as interpret-as="characters">AB</say-as> <emphasis>now</emphasis>'
        '<break strength="strong"/><prosody rate="+50%">quick</prosody>'
        '<lang xml:lang="fr-FR">Bonjour</lang><p>Para</p><audio src="x.wav">beep</audio></speak>'
    )
    speech = [p for p in markup.pieces if isinstance(p, Speech)]
    assert " ".join(p.text for p in speech if p.rate == 1.0 and p.language is None).split() == [
        "Hi",
        "World",
        "Wide",
        "Web",
        "A",
        "B",
        "now",
        "Para",
        "beep",
    ]
    assert Speech("quick", None, 1.5) in markup.pieces and Speech("Bonjour", "French") in markup.pieces
    assert Pause(0.3) in markup.pieces and Pause(0.75) in markup.pieces and Pause(0.0) in markup.pieces
    assert markup.ignored == ("audio",)


@pytest.mark.parametrize(
    ("rate", "factor"), [("x-slow", 0.5), ("fast", 1.25), ("150%", 1.5), ("-20%", 0.8), ("+0.5", 1.5), ("2", 2.0)]
)
def test_prosody_rates(rate, factor):
    (piece,) = read_markup(f'<speak><prosody rate="{rate}">x</prosody></speak>').pieces
    assert isinstance(piece, Speech) and piece.rate == pytest.approx(factor)


# --- on a live server ---


def test_two_pauses_are_exact_silences_between_the_pieces_said_alone(http):
    first, second, third = "First piece.", "Second piece.", "Third piece."
    whole = pcm_of(http, f"{first} [pause:500ms] {second} [pause:1.2s] {third}")
    alone = [pcm_of(http, text) for text in (first, second, third)]
    a, b, c = alone
    assert len(whole) == len(a) + len(b) + len(c) + 12000 + 28800
    # The silences (a fade's last samples round to zero too: a couple of milliseconds at most).
    runs = silent_runs(whole)
    assert [length for _, length in runs] == [pytest.approx(12000, abs=48), pytest.approx(28800, abs=48)]
    assert not whole[len(a) : len(a) + 12000].any()
    assert not whole[len(a) + 12000 + len(b) : len(a) + 12000 + len(b) + 28800].any()
    # Every piece is its text said alone (faded at the joins), in order, between the silences.
    # (A later segment is decoded in other chunk sizes than a request's first: within 1e-4.)
    fade, start = 240, len(a) + 12000
    assert close(whole[: len(a) - fade], a[: len(a) - fade])
    assert close(whole[start + fade : start + len(b) - fade], b[fade:-fade])
    assert close(whole[-len(c) + fade :], c[fade:])


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
def test_a_pause_is_in_every_format_and_streamed(http, fmt):
    text = "Before. [pause:1s] After."
    whole = http.post("/v1/audio/speech", json={**BODY, "input": text, "response_format": fmt})
    streamed = http.post("/v1/audio/speech", json={**BODY, "input": text, "response_format": fmt, "stream": True})
    for r in (whole, streamed):
        assert r.status_code == 200, r.text
    # Two pieces of 6 frames (max_new_tokens) and the second of silence between them.
    expected = 2 * 6 * SAMPLES_PER_FRAME / SR + 1.0
    for r in (whole, streamed):
        decoded = decode_audio(r.content, fmt)
        assert decoded.duration == pytest.approx(expected, abs=SAMPLES_PER_FRAME / SR)
        middle = decoded.samples.reshape(-1)[int(0.6 * decoded.rate) : int(1.3 * decoded.rate)]
        assert np.abs(middle).max() < 5e-3  # silence (lossy codecs: nearly)


def test_a_leading_pause_and_speed(http):
    samples = pcm_of(http, "[pause:400ms] Late start.")
    assert samples[:9600].tolist() == [0] * 9600 and samples[9600:9700].any()
    fast = pcm_of(http, "Late start. [pause:1s] Then more.", speed=2.0)
    # The silence lasts what was asked, whatever the speed (atempo's edges aside).
    # atempo's window reaches about 35 ms into the silence at its edges.
    assert max(length for _, length in silent_runs(fast)) == pytest.approx(SR, abs=1200)


def test_ssml_breaks_sub_and_say_as_on_the_server(http):
    ssml = '<speak>One<break time="700ms"/><sub alias="Two">2</sub><break strength="x-strong"/>Three</speak>'
    samples = pcm_of(http, ssml)
    assert [length for _, length in silent_runs(samples)] == [
        pytest.approx(16800, abs=48),
        pytest.approx(24000, abs=48),
    ]
    assert close(pcm_of(http, '<speak><sub alias="Two">II</sub></speak>'), pcm_of(http, "Two"))
    spelled = pcm_of(http, '<speak><say-as interpret-as="characters">ABC</say-as></speak>')
    assert close(spelled, pcm_of(http, "A B C"))


def test_ssml_lang_is_that_span_in_that_language(http):
    ssml = '<speak>Hello there.<break time="1s"/><lang xml:lang="de-DE">Guten Tag.</lang></speak>'
    samples = pcm_of(http, ssml)
    german = pcm_of(http, "Guten Tag.", language="German")
    assert not samples[-len(german) - SR : -len(german)].any()  # the break
    assert close(samples[-len(german) + 240 :], german[240:])
    other = pcm_of(http, "Guten Tag.", language="English")
    assert not np.array_equal(german, other)  # the language does change what is said


def test_ssml_prosody_rate_stretches_its_span_as_speed_would(http):
    plain = pcm_of(http, "<speak>Slowly now.</speak>", max_new_tokens=12)
    slow = pcm_of(http, '<speak><prosody rate="50%">Slowly now.</prosody></speak>', max_new_tokens=12)
    as_speed = pcm_of(http, "Slowly now.", max_new_tokens=12, speed=0.5)
    assert len(slow) == pytest.approx(2 * len(plain), rel=0.02)  # atempo's own edges: about 25 ms
    assert len(slow) == pytest.approx(len(as_speed), abs=480)


def test_unknown_ssml_elements_are_named_and_their_text_spoken(http):
    r = http.post(
        "/v1/audio/speech",
        json={**BODY, "input": '<speak><voice name="x">Kept <mark name="m"/>words</voice></speak>'},
    )
    assert r.status_code == 200 and r.headers["x-ssml-ignored"] == "voice, mark"
    assert r.content == http.post("/v1/audio/speech", json={**BODY, "input": "Kept words"}).content


@pytest.mark.parametrize(
    "text",
    [
        "<speak>Unclosed <emphasis>tag</speak>",
        '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
        + "".join(f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10 if i else "&lol;" * 10}">' for i in range(9))
        + "]><speak>&lol8;</speak>",
        '<speak><break time="20s"/></speak>',
        '<speak><lang xml:lang="tlh">Qapla</lang></speak>',
        "Say [pause:loud] this",
        '<speak><prosody rate="900%">too fast</prosody></speak>',
    ],
)
def test_bad_markup_is_a_quick_400_naming_input(http, text):
    began = time.monotonic()
    r = http.post("/v1/audio/speech", json={**BODY, "input": text})
    assert r.status_code == 400 and error_of(r)["param"] == "input", r.text
    assert time.monotonic() - began < 1.0
    assert http.get("/health").status_code == 200


def test_invalid_xml_names_the_parsers_position(http):
    r = http.post("/v1/audio/speech", json={**BODY, "input": "<speak>\n  a <b>c</speak>"})
    assert r.status_code == 400 and "line 2, column" in error_of(r)["message"]
