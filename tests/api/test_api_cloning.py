"""Voice cloning with audio_sample (base64, data URI, URL, path) on a live server."""

import base64
import io

import numpy as np
import pytest
import soundfile as sf
from helpers import SR, LiveServer, cpu_settings, decode_audio, encode_with_pyav, error_of, server_fixture, tone
from reference_http import ReferenceHTTPServer


def wav_bytes(samples, sr=SR) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, sr, format="WAV")
    return buf.getvalue()


@pytest.fixture(scope="module")
def ref_wav(sample_dir) -> bytes:
    return (sample_dir / "ref.wav").read_bytes()


@pytest.fixture(scope="module")
def ref_http(ref_wav):
    with ReferenceHTTPServer(ref_wav) as srv:
        yield srv


def clone(client, audio_sample: str, **extra):
    return client.audio.speech.with_raw_response.create(
        model="qwen3-tts",
        voice="alloy",
        input="Clone me.",
        response_format="pcm",
        extra_body={"audio_sample": audio_sample, **extra},
    )


@pytest.fixture(scope="module")
def cloned_from_base64(client, ref_wav) -> bytes:
    return clone(client, base64.b64encode(ref_wav).decode()).content


def test_base64_clone(cloned_from_base64):
    decoded = decode_audio(cloned_from_base64, "pcm")
    assert decoded.duration > 0.5 and np.sqrt(np.mean(decoded.samples**2)) > 0.01


def test_data_uri_clone_matches_base64(client, ref_wav, cloned_from_base64):
    uri = "data:audio/wav;base64," + base64.b64encode(ref_wav).decode()
    assert clone(client, uri).content == cloned_from_base64


def test_url_clone_matches_base64(client, ref_http, cloned_from_base64):
    assert clone(client, f"{ref_http.url}/ref.wav").content == cloned_from_base64


def test_path_clone_matches_base64(client, sample_dir, cloned_from_base64):
    assert clone(client, str(sample_dir / "ref.wav")).content == cloned_from_base64


def test_clone_differs_from_builtin_voice(client, cloned_from_base64):
    builtin = client.audio.speech.create(model="qwen3-tts", voice="alloy", input="Clone me.", response_format="pcm")
    assert builtin.content != cloned_from_base64


def test_reference_voice_conditions_output(client, cloned_from_base64):
    other = base64.b64encode(wav_bytes(tone(2.0, 660.0) * np.linspace(0, 1, 2 * SR, dtype=np.float32))).decode()
    assert clone(client, other).content != cloned_from_base64


def test_transcript_switches_to_in_context_cloning(client, ref_wav, cloned_from_base64):
    icl = clone(client, base64.b64encode(ref_wav).decode(), audio_sample_text="A short reference.")
    assert icl.status_code == 200 and icl.content != cloned_from_base64


def test_stereo_mp3_reference(client):
    mp3 = encode_with_pyav(tone(2.0, 220.0, sr=44100, channels=2), 44100, "mp3", "libmp3lame", "stereo")
    out = clone(client, base64.b64encode(mp3).decode(), language="English")
    assert decode_audio(out.content, "pcm").duration > 0.5


def test_voice_and_instructions_ignored_when_cloning(client, ref_wav, cloned_from_base64):
    raw = client.audio.speech.with_raw_response.create(
        model="qwen3-tts",
        voice="onyx",
        input="Clone me.",
        response_format="pcm",
        instructions="Whisper.",
        extra_body={"audio_sample": base64.b64encode(ref_wav).decode()},
    )
    assert raw.content == cloned_from_base64
    assert "instructions" in raw.headers["x-instructions-ignored"]


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_clone_formats(client, ref_wav, fmt):
    raw = client.audio.speech.with_raw_response.create(
        model="qwen3-tts",
        voice="alloy",
        input="Clone me.",
        response_format=fmt,
        extra_body={"audio_sample": base64.b64encode(ref_wav).decode()},
    )
    assert decode_audio(raw.content).rate == SR


@server_fixture(scope="module")
def default_safety_server(demo_models):
    """Only the Base model, and the default (safe) reference-audio settings."""
    with LiveServer(cpu_settings(base_model_path=demo_models["base"])) as live:
        yield live


def test_default_refuses_local_paths(default_safety_server, sample_dir):
    import httpx

    r = httpx.post(
        f"{default_safety_server.url}/v1/audio/speech",
        timeout=60,
        json={"model": "qwen3-tts", "input": "Hi.", "audio_sample": str(sample_dir / "ref.wav")},
    )
    assert r.status_code == 400
    err = error_of(r)
    assert err["param"] == "audio_sample" and "QWEN_TTS_AUDIO_SAMPLE_DIRS" in err["message"]


def test_default_refuses_private_urls(default_safety_server, ref_http):
    import httpx

    r = httpx.post(
        f"{default_safety_server.url}/v1/audio/speech",
        timeout=60,
        json={"model": "qwen3-tts", "input": "Hi.", "audio_sample": f"{ref_http.url}/ref.wav"},
    )
    assert r.status_code == 400
    assert "QWEN_TTS_ALLOW_PRIVATE_URLS" in error_of(r)["message"]


def test_base_only_server_has_no_builtin_voices(default_safety_server, demo_models):
    client = default_safety_server.openai()
    assert [m.id for m in client.models.list().data] == ["qwen3-tts", demo_models["base"].name]
    import openai

    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="qwen3-tts", voice="alloy", input="Hi.")
    err = caught.value.body
    assert err["param"] == "voice" and "CUSTOMVOICE_MODEL_PATH" in err["message"]
