"""POST /v1/audio/speech on a live server, through the real openai client."""

import random
import threading
import time

import httpx
import numpy as np
import pytest
from helpers import (
    OPENAI_CONTENT_TYPES,
    SR,
    LiveServer,
    cpu_settings,
    decode_audio,
    opus_head,
    server_fixture,
    slowed_steps,
)

from qwen_tts_api.api.protocol import LANGUAGES  # the specification's ten and Auto
from qwen_tts_api.constants import QWEN_SPEAKERS
from qwen_tts_api.devtools.demo_models import ModelShape, build_model
from qwen_tts_api.voices.speakers import OPENAI_VOICE_ALIASES

TEXT = "Hello there."
AAC_PADDING = 2 * 1024 / SR


def speak(client, **kwargs):
    kwargs.setdefault("model", "qwen3-tts")
    kwargs.setdefault("voice", "alloy")
    kwargs.setdefault("input", TEXT)
    return client.audio.speech.with_raw_response.create(**kwargs)


WHOLE = {"stream": False}  # our extension: one complete body instead of a chunked stream


@pytest.fixture(scope="module")
def reference_wav(client) -> np.ndarray:
    return decode_audio(speak(client, response_format="wav", extra_body=WHOLE).content).samples


def test_models_list(client, demo_models):
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == "qwen3-tts"
    assert set(ids) == {
        "qwen3-tts",
        "qwen3-tts-voicedesign",
        demo_models["customvoice"].name,
        demo_models["base"].name,
        demo_models["voicedesign"].name,
    }
    assert client.models.retrieve("qwen3-tts").object == "model"


def test_health(http):
    assert http.get("/health").json() == {"status": "ok"}


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_every_format(client, reference_wav, fmt):
    raw = speak(client, response_format=fmt, extra_body=WHOLE)
    assert raw.headers["content-length"] == str(len(raw.content))
    assert raw.headers["content-type"] == OPENAI_CONTENT_TYPES[fmt]
    decoded = decode_audio(raw.content, fmt)
    assert decoded.samples.ndim == 1, "mono"
    if fmt == "opus":
        assert opus_head(raw.content) == (1, SR)
    else:
        assert decoded.rate == SR
    expected = len(reference_wav) / SR
    assert expected > 1.0
    assert abs(decoded.duration - expected) <= 0.05 + (AAC_PADDING if fmt == "aac" else 0)
    assert np.sqrt(np.mean(decoded.samples**2)) > 0.01, "audible"


def test_default_format_is_mp3(http):
    r = http.post("/v1/audio/speech", json={"model": "tts-1", "input": TEXT})
    assert r.status_code == 200 and r.headers["content-type"] == "audio/mpeg"
    assert decode_audio(r.content).container == "mp3"


def test_duration_grows_with_input(client):
    short = decode_audio(speak(client, input="Hi.", response_format="wav").content)
    long = decode_audio(speak(client, input="Hi. " * 12, response_format="wav").content)
    assert long.duration > short.duration + 1.0


@pytest.mark.parametrize("speed", [0.5, 2.0])
def test_speed_stretches_duration(client, reference_wav, speed):
    out = decode_audio(speak(client, response_format="wav", speed=speed).content)
    expected = len(reference_wav) / SR / speed
    assert abs(out.duration - expected) / expected <= 0.03


def _pcm(client, voice: str) -> bytes:
    return speak(client, voice=voice, input="Hi.", response_format="pcm").content


@pytest.fixture(scope="module")
def speaker_audio(client) -> dict[str, bytes]:
    return {name: _pcm(client, name) for name in QWEN_SPEAKERS}


def test_speakers_sound_different(speaker_audio):
    assert len(set(speaker_audio.values())) == len(QWEN_SPEAKERS)


@pytest.mark.parametrize("alias", sorted(OPENAI_VOICE_ALIASES))
def test_openai_voice_maps_to_its_speaker(client, speaker_audio, alias):
    """Demo output is deterministic, so an alias must give exactly its speaker's audio."""
    assert _pcm(client, alias) == speaker_audio[OPENAI_VOICE_ALIASES[alias]]


@pytest.mark.parametrize("name", QWEN_SPEAKERS)
def test_speaker_names_any_case(client, speaker_audio, name):
    mixed = "".join(random.Random(name).choice([c.upper(), c.lower()]) for c in name)
    assert _pcm(client, mixed) == speaker_audio[name]


def test_every_language_reaches_the_model(client):
    """Each language is accepted and changes what the model is told: greedy output differs
    for every language (its language id is in the prompt), and the name is case-blind."""
    spoken = {}
    for language in LANGUAGES:
        raw = speak(client, input="Hi.", response_format="pcm", extra_body={"language": language})
        assert decode_audio(raw.content, "pcm").duration > 0.5, language
        spoken[language] = raw.content
    assert len(set(spoken.values())) == len(LANGUAGES), "two languages gave the same audio"
    for variant, language in (("ENGLISH", "English"), ("russian", "Russian")):
        raw = speak(client, input="Hi.", response_format="pcm", extra_body={"language": variant})
        assert raw.content == spoken[language], variant


def test_instructions_dropped_by_0_6b_model_say_so(client):
    plain = speak(client, input="Hi.", response_format="pcm")
    styled = speak(client, input="Hi.", response_format="pcm", instructions="Speak in a cheerful tone.")
    assert "x-instructions-ignored" not in plain.headers
    assert "0.6B" in styled.headers["x-instructions-ignored"]
    assert styled.content == plain.content


@server_fixture(scope="module")
def server_1_7b(tmp_path_factory):
    path = build_model(
        tmp_path_factory.mktemp("cv17") / "Qwen3-TTS-demo-1.7B-CustomVoice",
        "custom_voice",
        seed=3,
        shape=ModelShape(size_tag="1b7"),
    )
    with LiveServer(cpu_settings(customvoice_model_path=path)) as live:
        yield live


def test_instructions_reach_1_7b_model(server_1_7b):
    client = server_1_7b.openai()
    plain = speak(client, input="Hi.", response_format="pcm")
    styled = speak(client, input="Hi.", response_format="pcm", instructions="Speak in a cheerful tone.")
    assert "x-instructions-ignored" not in styled.headers
    assert styled.content != plain.content


def test_health_answers_during_long_synthesis(server, http):
    done = threading.Event()
    result: dict = {}

    def long_request():
        with httpx.Client(base_url=server.url, timeout=300) as c:
            result["response"] = c.post(
                "/v1/audio/speech",
                json={
                    "model": "qwen3-tts",
                    "input": "This sentence is long enough to keep the worker busy. " * 3,
                    "response_format": "pcm",
                },
            )
        done.set()

    # At least 10 ms a step: the request outlasts several checks however fast the machine is.
    with slowed_steps(server.app.state.server.engine, 0.01):
        worker = threading.Thread(target=long_request)
        worker.start()
        time.sleep(0.5)
        latencies = []
        while not done.is_set():
            started = time.perf_counter()
            assert http.get("/health", timeout=5).status_code == 200
            latencies.append(time.perf_counter() - started)
            time.sleep(0.2)
        worker.join()
    assert result["response"].status_code == 200
    assert len(latencies) >= 5, "the synthesis should outlast several health checks"
    assert max(latencies) < 1.0
