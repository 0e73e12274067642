"""vLLM-Omni's field names on ``POST /v1/audio/speech``, as its clients send them
(``vllm_omni/entrypoints/openai/protocol/audio.py``): each gives the audio of our own name
for the same request, and a field the server does not know is named, never dropped."""

from __future__ import annotations

import base64
import json

import numpy as np
from helpers import error_of, tone_wav

from qwen_tts_api.audio.reference import decode_reference
from qwen_tts_api.constants import ModelKind
from qwen_tts_api.engine.generation.clone import compute_clone_prompt

BASE = {"model": "qwen3-tts", "input": "Hello from a vLLM-Omni client.", "language": "English", "stream": False}
PCM = {**BASE, "response_format": "pcm", "seed": 7}
SAMPLES_PER_FRAME = 1920


def data_url() -> str:
    return "data:audio/wav;base64," + base64.b64encode(tone_wav(1.5, 210.0)).decode()


def test_ref_audio_is_audio_sample_and_voice_is_then_ignored(http):
    ours = http.post("/v1/audio/speech", json={**PCM, "audio_sample": data_url()})
    theirs = http.post("/v1/audio/speech", json={**PCM, "ref_audio": data_url(), "voice": "vivian"})
    assert ours.status_code == 200 and theirs.status_code == 200
    assert theirs.content == ours.content
    assert "ref_audio" in theirs.headers["x-voice-ignored"]
    assert "x-voice-ignored" not in ours.headers  # no voice was sent


def test_ref_text_is_audio_sample_text_unless_x_vector_only(http):
    transcript = "A gliding tone."
    in_context = http.post(
        "/v1/audio/speech", json={**PCM, "audio_sample": data_url(), "audio_sample_text": transcript}
    )
    theirs = http.post("/v1/audio/speech", json={**PCM, "ref_audio": data_url(), "ref_text": transcript})
    assert theirs.status_code == 200 and theirs.content == in_context.content
    x_vector = http.post("/v1/audio/speech", json={**PCM, "audio_sample": data_url()})
    only = http.post(
        "/v1/audio/speech", json={**PCM, "ref_audio": data_url(), "ref_text": transcript, "x_vector_only_mode": True}
    )
    assert only.status_code == 200 and only.content == x_vector.content != in_context.content


def test_max_new_tokens_caps_the_frames(http):
    r = http.post("/v1/audio/speech", json={**PCM, "voice": "vivian", "max_new_tokens": 10})
    assert r.status_code == 200
    assert len(r.content) // 2 == 10 * SAMPLES_PER_FRAME  # the demo models never end on their own
    assert "x-unused-fields" not in r.headers


def test_speaker_is_voice(http):
    ours = http.post("/v1/audio/speech", json={**PCM, "voice": "ryan"})
    theirs = http.post("/v1/audio/speech", json={**PCM, "speaker": "Ryan"})
    assert theirs.status_code == 200 and theirs.content == ours.content
    both = http.post("/v1/audio/speech", json={**PCM, "voice": "ryan", "speaker": "vivian"})
    assert both.status_code == 400 and error_of(both)["param"] == "speaker"


def first_delta(http, **extra) -> tuple[bytes, bytes, dict]:
    """The first SSE audio event (one engine chunk) and all the audio, and the headers."""
    body = {**PCM, "voice": "vivian", "stream": True, "stream_format": "sse", **extra}
    with http.stream("POST", "/v1/audio/speech", json=body) as r:
        events = [json.loads(line[len("data: ") :]) for line in r.iter_lines() if line]
        headers = dict(r.headers)
    deltas = [base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"]
    return deltas[0], b"".join(deltas), headers


def test_initial_codec_chunk_frames_sets_the_first_chunk(http):
    first_four, all_four, headers = first_delta(http, initial_codec_chunk_frames=4)
    first_default, all_default, _ = first_delta(http)
    assert "x-unused-fields" not in headers
    four, default = (np.frombuffer(audio, "<i2").astype(int) for audio in (all_four, all_default))
    assert len(four) == len(default) and np.abs(four - default).max() <= 4  # the same audio, decoded in other cuts
    assert len(first_default) == 1920 * 2  # QWEN_TTS_STREAM_FIRST_FRAMES: one frame, 80 ms at 24 kHz
    assert len(first_four) == 4 * 1920 * 2


def test_an_unknown_field_is_named_not_dropped(http):
    r = http.post("/v1/audio/speech", json={**PCM, "voice": "vivian", "emotion": "cheerful", "pitch": 2})
    assert r.status_code == 200 and r.headers["x-unused-fields"] == "emotion, pitch"


def test_speaker_embedding_is_the_x_vector_of_the_same_reference(server, http):
    base = server.app.state.server.engine.models[ModelKind.BASE]
    waveform = decode_reference(tone_wav(1.5, 210.0), 60.0)
    x_vector = compute_clone_prompt(base.tts, waveform, None).speaker_embedding.tolist()
    assert len(x_vector) == base.speaker_embedding_width
    ours = http.post("/v1/audio/speech", json={**PCM, "audio_sample": data_url()})
    theirs = http.post("/v1/audio/speech", json={**PCM, "speaker_embedding": x_vector, "voice": "vivian"})
    assert theirs.status_code == 200 and theirs.content == ours.content
    assert "speaker_embedding" in theirs.headers["x-voice-ignored"]


def test_bad_speaker_embeddings_are_400s_naming_it(server, http):
    width = server.app.state.server.engine.models[ModelKind.BASE].speaker_embedding_width
    for extra in (
        {"speaker_embedding": [0.1] * (width - 1)},  # not the model's width
        {"speaker_embedding": [0.1] * width, "ref_audio": data_url()},  # two voices
        {"speaker_embedding": [0.1] * width, "task_type": "CustomVoice"},
        {"speaker_embedding": [1e39] * width},  # inf once it is a float32
    ):
        r = http.post("/v1/audio/speech", json={**PCM, **extra})
        assert r.status_code == 400 and error_of(r)["param"] == "speaker_embedding", (extra, r.text)


def test_bad_values_name_vllm_fields(http):
    for field, value in (("max_new_tokens", 0), ("initial_codec_chunk_frames", 1000), ("ref_audio", "not audio")):
        r = http.post("/v1/audio/speech", json={**PCM, field: value})
        assert r.status_code == 400 and error_of(r)["param"] == field, (field, r.text)
