"""Saved custom voices (/v1/audio/voices) and the clone-prompt cache, on live demo servers."""

from __future__ import annotations

import base64
import io
import logging
import os
import secrets

import httpx
import numpy as np
import pytest
import soundfile as sf
from helpers import SR, LiveServer, cpu_settings, decode_audio, error_of

from qwen_tts_api.engine.generation.clone import PromptCache, compute_clone_prompt
from qwen_tts_api.voices.store import EVERYONE, CallerVoices, VoiceNameError, VoiceStore

TEXT = "Saved voices speak like this."


def wav_bytes(freq: float, seconds: float = 1.5) -> bytes:
    """A distinct reference per test (so the prompt cache of one test never serves another)."""
    t = np.arange(int(seconds * SR)) / SR
    samples = (0.3 * np.sin(2 * np.pi * freq * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)
    buf = io.BytesIO()
    sf.write(buf, samples, SR, format="WAV")
    return buf.getvalue()


def upload(http: httpx.Client, name: str, audio: bytes, **fields) -> httpx.Response:
    return http.post(
        "/v1/audio/voices", data={"name": name, **fields}, files={"audio_sample": ("ref.wav", audio, "audio/wav")}
    )


def speak(http: httpx.Client, **body) -> bytes:
    r = http.post(
        "/v1/audio/speech",
        json={"model": "qwen3-tts", "input": TEXT, "response_format": "pcm", "stream": False, **body},
    )
    assert r.status_code == 200, r.text
    return r.content


def unique_name() -> str:
    return f"Narrator {secrets.token_hex(3)}"


class EncoderCalls:
    """Counts the Base model's reference encoders (speaker encoder, codec encoder)."""

    def __init__(self, monkeypatch, tts):
        self.speaker = self.codec = 0
        model = tts.model
        speaker_fn, codec_fn = model.extract_speaker_embedding, model.speech_tokenizer.encode

        def speaker(*args, **kwargs):
            self.speaker += 1
            return speaker_fn(*args, **kwargs)

        def codec(*args, **kwargs):
            self.codec += 1
            return codec_fn(*args, **kwargs)

        monkeypatch.setattr(model, "extract_speaker_embedding", speaker)
        monkeypatch.setattr(model.speech_tokenizer, "encode", codec)


@pytest.fixture
def encoders(server, monkeypatch) -> EncoderCalls:
    return EncoderCalls(monkeypatch, server.app.state.server.engine.models["base"].tts)


# ---------- create and speak ----------


def test_create_with_sdk_then_speak_by_id_object_id_string_and_name(server, client, http):
    audio = wav_bytes(231)
    name = unique_name()
    voice = client.audio.voices.create(audio_sample=("ref.wav", audio, "audio/wav"), consent="cons_test", name=name)
    assert voice.object == "audio.voice" and voice.id.startswith("voice_") and voice.name == name
    assert voice.type == "audio_sample" and abs(voice.created_at - __import__("time").time()) < 120

    # The SDK's own voice={"id": ...} form, streamed.
    streamed = client.audio.speech.create(
        model="qwen3-tts", voice={"id": voice.id}, input=TEXT, response_format="pcm"
    ).content
    by_id = speak(http, voice=voice.id)
    by_name = speak(http, voice=name.upper())
    inline = speak(http, audio_sample=base64.b64encode(audio).decode())
    assert len(inline) > SR  # audible length, not an empty body
    # The stored prompt is the one the inline request computes: the same audio, byte for byte.
    assert streamed == by_id == by_name == inline
    # ...and not just any Base output: another reference sounds different.
    assert speak(http, audio_sample=base64.b64encode(wav_bytes(587)).decode()) != inline


def test_saved_voice_never_reencodes_the_reference(server, http, encoders):
    r = upload(http, unique_name(), wav_bytes(243))
    assert r.status_code == 200, r.text
    assert encoders.speaker == 1  # computed once, at upload
    counted = (encoders.speaker, encoders.codec)
    first = speak(http, voice={"id": r.json()["id"]})
    second = speak(http, voice=r.json()["name"])
    assert first == second and decode_audio(first, "pcm").duration > 0.5
    assert (encoders.speaker, encoders.codec) == counted


def test_inline_reference_prompt_is_cached(server, http, encoders):
    sample = base64.b64encode(wav_bytes(257)).decode()
    first = speak(http, audio_sample=sample)
    assert encoders.speaker == 1
    assert speak(http, audio_sample=sample) == first
    assert encoders.speaker == 1  # same audio and transcript: the cached prompt
    # A transcript makes a different (in-context) prompt, so it is computed, then cached too.
    speak(http, audio_sample=sample, audio_sample_text="This is the reference.")
    assert encoders.speaker == 2
    speak(http, audio_sample=sample, audio_sample_text="This is the reference.")
    assert encoders.speaker == 2


def test_in_context_voice_from_transcript(server, http):
    audio, transcript = wav_bytes(269), "This is the reference."
    r = upload(http, unique_name(), audio, audio_sample_text=transcript)
    assert r.status_code == 200, r.text
    stored = server.app.state.server.voices.get(r.json()["id"], EVERYONE).prompt
    assert stored.in_context and stored.reference_text == transcript and stored.reference_codes.shape[1] == 16
    inline = speak(http, audio_sample=base64.b64encode(audio).decode(), audio_sample_text=transcript)
    assert speak(http, voice={"id": r.json()["id"]}) == inline
    # In-context cloning differs from the x-vector voice of the same audio.
    assert inline != speak(http, audio_sample=base64.b64encode(audio).decode())


def test_instructions_with_a_saved_voice_are_ignored_and_said_so(server, http):
    voice = upload(http, unique_name(), wav_bytes(281)).json()
    r = http.post(
        "/v1/audio/speech",
        json={
            "model": "qwen3-tts",
            "input": TEXT,
            "voice": voice["id"],
            "instructions": "Whisper.",
            "response_format": "pcm",
            "stream": False,
        },
    )
    assert r.status_code == 200 and "x-instructions-ignored" in r.headers


# ---------- list, get, delete ----------


def test_list_get_delete(server, http, client):
    voice = upload(http, unique_name(), wav_bytes(293)).json()
    listed = http.get("/v1/audio/voices").json()
    assert listed["object"] == "list"
    by_id = {entry["id"]: entry for entry in listed["data"]}
    assert by_id[voice["id"]] == voice
    builtin = [e["id"] for e in listed["data"] if e["type"] == "builtin"]
    assert sorted(builtin) == sorted(
        ["Vivian", "Serena", "Uncle_Fu", "Dylan", "Eric", "Ryan", "Aiden", "Ono_Anna", "Sohee"]
    )
    assert by_id["alloy"] == {
        "object": "audio.voice",
        "id": "alloy",
        "name": "alloy",
        "type": "alias",
        "speaker": "Vivian",
    }
    # Every listed id is a voice a speech request accepts.
    for entry in listed["data"]:
        assert speak(http, voice=entry["id"], input="Hi.")

    assert http.get(f"/v1/audio/voices/{voice['id']}").json() == voice
    deleted = client.audio.voices.delete(voice["id"])
    assert deleted.deleted and deleted.id == voice["id"] and deleted.object == "audio.voice.deleted"
    assert voice["id"] not in {e["id"] for e in http.get("/v1/audio/voices").json()["data"]}

    for r in (http.get(f"/v1/audio/voices/{voice['id']}"), http.delete(f"/v1/audio/voices/{voice['id']}")):
        assert r.status_code == 404 and error_of(r)["code"] == "voice_not_found"
    r = http.post("/v1/audio/speech", json={"model": "qwen3-tts", "input": TEXT, "voice": {"id": voice["id"]}})
    assert r.status_code == 400 and error_of(r)["param"] == "voice"
    # Its name is free again.
    assert upload(http, voice["name"], wav_bytes(293)).status_code == 200


# ---------- errors ----------


@pytest.mark.parametrize("name", ["", "   ", "a/b", "../x", "-dash", "x" * 65, "voice_abc", "Vivian", "ALLOY", "nova"])
def test_bad_names(http, name):
    r = upload(http, name, wav_bytes(300))
    assert r.status_code == 400
    assert error_of(r)["param"] == "name"


def test_duplicate_name_any_case(http):
    name = unique_name()
    assert upload(http, name, wav_bytes(307)).status_code == 200
    r = upload(http, name.lower(), wav_bytes(311))
    assert r.status_code == 400 and error_of(r)["code"] == "voice_name_taken"


def test_bad_uploads(http):
    name = unique_name()
    missing = http.post("/v1/audio/voices", data={"name": name}, files={"other": ("x", b"x")})
    assert missing.status_code == 400 and error_of(missing)["param"] == "audio_sample"
    no_name = http.post("/v1/audio/voices", files={"audio_sample": ("ref.wav", wav_bytes(300))})
    assert no_name.status_code == 400 and error_of(no_name)["param"] == "name"
    urlencoded = http.post("/v1/audio/voices", data={"name": name})
    assert urlencoded.status_code == 400 and error_of(urlencoded)["code"] == "invalid_content_type"
    as_text = http.post(
        "/v1/audio/voices", data={"name": name, "audio_sample": "UklGRg=="}, files={"other": ("x", b"x")}
    )
    assert as_text.status_code == 400 and error_of(as_text)["param"] == "audio_sample"
    garbage = upload(http, name, b"this is not audio" * 100)
    assert garbage.status_code == 400 and error_of(garbage)["code"] == "invalid_audio_sample"
    too_short = upload(http, name, wav_bytes(300, seconds=0.1))
    assert too_short.status_code == 400 and error_of(too_short)["param"] == "audio_sample"
    json_body = http.post("/v1/audio/voices", json={"name": name, "audio_sample": "abc"})
    assert json_body.status_code == 400 and error_of(json_body)["code"] == "invalid_content_type"
    prompt = http.post(
        "/v1/audio/voices",
        data={"name": name, "type": "prompt", "prompt": "A deep voice."},
        files={"audio_sample": ("ref.wav", wav_bytes(300))},
    )
    assert prompt.status_code == 400 and error_of(prompt)["param"] == "audio_sample"  # one or the other
    broken = http.post(
        "/v1/audio/voices",
        content=b"--xx\r\nnot multipart",
        headers={"content-type": "multipart/form-data; boundary=xx"},
    )
    assert broken.status_code == 400
    assert name not in {e["name"] for e in http.get("/v1/audio/voices").json()["data"]}
    assert upload(http, name, wav_bytes(300)).status_code == 200  # and the server still works


def test_upload_over_10_mib_is_refused(http):
    big = b"\0" * (10 * 1024 * 1024 + 1)
    r = upload(http, unique_name(), big)
    assert r.status_code == 413 and error_of(r)["param"] == "audio_sample"


def test_unknown_voice_lists_saved_names(http):
    name = unique_name()
    upload(http, name, wav_bytes(317))
    r = http.post("/v1/audio/speech", json={"model": "qwen3-tts", "input": TEXT, "voice": "nobody"})
    assert r.status_code == 400 and error_of(r)["param"] == "voice"
    assert name in error_of(r)["message"] and "alloy" in error_of(r)["message"]


@pytest.mark.slow  # starts a server
def test_voices_need_the_base_model(demo_models):
    with (
        LiveServer(cpu_settings(customvoice_model_path=demo_models["customvoice"])) as live,
        httpx.Client(base_url=live.url, timeout=60) as http,
    ):
        r = upload(http, unique_name(), wav_bytes(300))
        assert r.status_code == 400 and "BASE_MODEL_PATH" in error_of(r)["message"]
        assert [e["type"] for e in http.get("/v1/audio/voices").json()["data"]].count("builtin") == 9


# ---------- persistence ----------


@pytest.mark.slow  # starts a server
def test_voices_survive_restart_and_corrupt_files_are_skipped(demo_models, tmp_path, caplog):
    settings = cpu_settings(base_model_path=demo_models["base"], data_dir=tmp_path)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        created = upload(http, "Keeper", wav_bytes(331), audio_sample_text="This is the reference.").json()
        before = speak(http, voice="Keeper")
    voices_dir = tmp_path / "voices"
    (voices_dir / f"voice_{'0' * 24}.safetensors").write_bytes(b"\x10\x00\x00\x00garbage")  # corrupt
    (voices_dir / f"voice_{'1' * 24}.safetensors").write_bytes(b"")  # empty (crash of another writer)
    (voices_dir / ".upload-abc.part").write_bytes(b"half a voice")  # an interrupted upload

    caplog.set_level(logging.WARNING, logger="qwen_tts_api.voices.store")
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        saved = [e for e in http.get("/v1/audio/voices").json()["data"] if e["type"] == "audio_sample"]
        assert saved == [created]
        assert speak(http, voice={"id": created["id"]}) == before
    skipped = [r.getMessage() for r in caplog.records if "skipping unreadable saved voice" in r.getMessage()]
    assert any("0" * 24 in m for m in skipped) and any("1" * 24 in m for m in skipped)


def keyless_store(directory) -> CallerVoices:
    """A voices folder as a server without keys sees it."""
    return VoiceStore(directory).seen_by(EVERYONE)


def test_crash_while_writing_leaves_no_voice(server, tmp_path, monkeypatch):
    prompt = compute_clone_prompt(
        server.app.state.server.engine.models["base"].tts, np.sin(np.arange(SR) / 10).astype(np.float32) * 0.3, None
    )
    store = keyless_store(tmp_path)

    def crash(*_):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk gone"):
        store.add("Halfway", prompt)
    monkeypatch.undo()
    assert os.listdir(tmp_path) == [] and store.list() == [] and keyless_store(tmp_path).list() == []
    saved = store.add("Halfway", prompt)
    reread = keyless_store(tmp_path).get(saved.id)
    assert reread.name == "Halfway" and reread.prompt.reference_codes is None
    assert np.array_equal(reread.prompt.speaker_embedding.numpy(), prompt.speaker_embedding.float().numpy())


def test_replicas_sharing_a_directory_see_each_others_changes(server, tmp_path):
    prompt = compute_clone_prompt(
        server.app.state.server.engine.models["base"].tts, np.sin(np.arange(SR) / 7).astype(np.float32) * 0.3, None
    )
    first, second = keyless_store(tmp_path), keyless_store(tmp_path)
    voice = first.add("Shared", prompt)
    assert second.find("shared").id == voice.id
    with pytest.raises(VoiceNameError):
        second.add("SHARED", prompt)  # names stay unique across the two
    assert second.delete(voice.id)
    assert first.get(voice.id) is None and first.list() == []


def test_prompt_cache_is_a_bounded_lru(server):
    tts = server.app.state.server.engine.models["base"].tts
    cache = PromptCache(capacity=2)
    refs = [np.sin(np.arange(SR) / d).astype(np.float32) * 0.3 for d in (3, 5, 9)]
    for ref in refs[:2]:
        cache.get_or_compute(tts, ref, None)
    cache.get_or_compute(tts, refs[0], None)  # refs[0] is now the most recent
    cache.get_or_compute(tts, refs[2], None)  # evicts refs[1]
    assert (cache.hits, cache.misses) == (1, 3)
    cache.get_or_compute(tts, refs[0], None)
    assert (cache.hits, cache.misses) == (2, 3)
    cache.get_or_compute(tts, refs[1], None)
    assert (cache.hits, cache.misses) == (2, 4)


def test_discovery_as_open_webui_reads_it(server, http):
    """Open WebUI's own requests (backend/open_webui/routers/audio.py): GET {base}/audio/voices
    and GET {base}/audio/models with no headers, read as {"voices": [{"id", "name"}]} and
    {"models": [{"id"}]}; on any failure it falls back to six OpenAI voices."""
    saved = upload(http, "discovered", wav_bytes(415.0))
    assert saved.status_code == 200, saved.text
    base = f"{server.url}/v1"
    voices = httpx.get(f"{base}/audio/voices").json()
    available = {voice["id"]: voice["name"] for voice in voices.get("voices", [])}
    assert available[saved.json()["id"]] == "discovered"
    assert available["Vivian"] == "Vivian" and available["alloy"] == "alloy (Vivian)"
    assert [v["id"] for v in voices["voices"]] == [card["id"] for card in voices["data"]]  # the same voices
    models = httpx.get(f"{base}/audio/models").json()
    assert "qwen3-tts" in [model["id"] for model in models.get("models", [])]
    assert models["object"] == "list" and [m["id"] for m in models["data"]] == [m["id"] for m in models["models"]]
    # Every listed id speaks.
    for voice_id in (saved.json()["id"], "Vivian", "alloy"):
        assert speak(http, voice=voice_id)
