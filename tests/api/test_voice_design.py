"""VoiceDesign on live demo servers: speech in a described voice (every format, streaming,
SSE, routing, errors), and a designed voice kept as a saved voice that speaks through Base."""

from __future__ import annotations

import base64
import json
import secrets
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from helpers import (
    OPENAI_CONTENT_TYPES,
    SR,
    LiveServer,
    batch_sizes,
    cpu_settings,
    decode_audio,
    error_of,
    opus_head,
    recorded_streams,
    server_fixture,
)
from safetensors import safe_open

from qwen_tts_api.constants import ModelKind
from qwen_tts_api.voices.scripts import SAMPLE_SCRIPTS
from qwen_tts_api.voices.store import EVERYONE, VoiceStore

FRAME = 1920 / SR
TEXT = "A designed voice reads this sentence aloud."
DESCRIPTION = "A warm, slightly husky alto, speaking slowly."
DESIGN = "qwen3-tts-voicedesign"
WHOLE = {"stream": False}


def design_speech(client: openai.OpenAI, **kwargs):
    kwargs = {"model": DESIGN, "voice": "alloy", "input": TEXT, "instructions": DESCRIPTION, **kwargs}
    return client.audio.speech.with_raw_response.create(**kwargs)


def pcm(client: openai.OpenAI, **kwargs) -> bytes:
    kwargs.setdefault("extra_body", WHOLE)
    return design_speech(client, response_format="pcm", **kwargs).content


def unique_name() -> str:
    return f"Designed {secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def designed_pcm(client) -> bytes:
    return pcm(client)


# ---------- speech in a described voice ----------


@pytest.mark.parametrize("fmt", ["mp3", "opus", "aac", "flac", "wav", "pcm"])
def test_designed_utterance_in_every_format(client, designed_pcm, fmt):
    raw = design_speech(client, response_format=fmt, extra_body=WHOLE)
    assert raw.headers["x-voice-ignored"]  # voice="alloy" was sent, and not used
    expected = len(designed_pcm) / 2 / SR
    assert expected > 1.0
    if fmt == "pcm":
        assert raw.content == designed_pcm
        return
    assert raw.headers["content-type"] == OPENAI_CONTENT_TYPES[fmt]
    audio = decode_audio(raw.content, fmt)
    assert audio.samples.ndim == 1
    assert (opus_head(raw.content) if fmt == "opus" else (1, audio.rate)) == (1, SR)
    # Lossy encoders pad a little; the length is the designed utterance's.
    assert abs(audio.duration - expected) <= 0.1, (audio.duration, expected)


def test_every_route_to_voicedesign_gives_the_same_audio(client, http, designed_pcm, demo_models):
    """The alias, the model's own id, a Hub-style id, and vLLM-Omni's task_type."""
    assert pcm(client, model=demo_models["voicedesign"].name) == designed_pcm
    assert pcm(client, model="Qwen/Qwen3-TTS-12Hz-1.7B-VoiceDesign") == designed_pcm
    assert pcm(client, model="qwen3-tts", extra_body={**WHOLE, "task_type": "VoiceDesign"}) == designed_pcm
    # Without a voice there is nothing to ignore, and no header.
    body = {"model": DESIGN, "input": TEXT, "instructions": DESCRIPTION, "response_format": "pcm", "stream": False}
    response = http.post("/v1/audio/speech", json=body)
    assert response.content == designed_pcm and "x-voice-ignored" not in response.headers


def test_the_description_is_the_voice(client, designed_pcm):
    assert pcm(client, instructions="A bright young tenor, speaking fast.") != designed_pcm
    # The same text through CustomVoice is another model altogether.
    speaker = client.audio.speech.create(
        model="qwen3-tts", voice="alloy", input=TEXT, response_format="pcm", extra_body=WHOLE
    ).content
    assert speaker != designed_pcm


def test_streamed_pcm_and_sse_equal_the_whole_body(client, server, designed_pcm):
    with client.audio.speech.with_streaming_response.create(
        model=DESIGN, voice="alloy", input=TEXT, instructions=DESCRIPTION, response_format="pcm"
    ) as response:
        assert response.headers.get("transfer-encoding") == "chunked"
        chunks = [chunk for chunk in response.iter_bytes() if chunk]
    assert len(chunks) > 2 and b"".join(chunks) == designed_pcm

    events = []
    with client.audio.speech.with_streaming_response.create(
        model=DESIGN, voice="alloy", input=TEXT, instructions=DESCRIPTION, response_format="pcm", stream_format="sse"
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[len("data: ") :]) for line in response.iter_lines() if line]
    deltas, done = events[:-1], events[-1]
    assert len(deltas) > 2 and all(e["type"] == "speech.audio.delta" for e in deltas)
    assert b"".join(base64.b64decode(e["audio"]) for e in deltas) == designed_pcm
    assert done["type"] == "speech.audio.done"
    assert done["usage"]["output_tokens"] == len(designed_pcm) // 2 // 1920


def test_speed_and_long_text(client, designed_pcm):
    fast = decode_audio(design_speech(client, response_format="wav", speed=2.0, extra_body=WHOLE).content)
    assert fast.duration == pytest.approx(len(designed_pcm) / 2 / SR / 2, abs=0.05)
    long = " ".join(f"Sentence {i} of a longer text goes on for a while before it ends." for i in range(8))
    assert len(long) > 300  # more than one segment
    audio = decode_audio(design_speech(client, input=long, response_format="wav", extra_body=WHOLE).content)
    assert audio.duration > 4 * len(designed_pcm) / 2 / SR


def test_designed_requests_batch_together_and_each_is_its_own(server, client, designed_pcm):
    descriptions = [DESCRIPTION, "A bright young tenor.", "An old, gravelly bass.", DESCRIPTION]
    engine = server.app.state.server.engine
    with batch_sizes(engine) as sizes, recorded_streams(engine) as streams, ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda d: pcm(client, instructions=d), descriptions))
    assert max(sizes) > 1  # generated together
    assert results[0] == results[3] == designed_pcm  # a batched row equals it alone
    assert len({results[0], results[1], results[2]}) == 3
    assert len(streams) == 4


def test_cancelled_design_request_leaves_the_batch(server, http):
    engine = server.app.state.server.engine
    body = {"model": DESIGN, "input": "Words keep coming. " * 40, "instructions": DESCRIPTION, "response_format": "pcm"}
    with http.stream("POST", "/v1/audio/speech", json=body) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
    # The stream was closed after its first audio: the request leaves the batch.
    import time

    deadline = time.monotonic() + 30
    while engine.runner.generating(ModelKind.VOICEDESIGN) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not engine.runner.generating(ModelKind.VOICEDESIGN)


def test_metrics_and_models_list(client, http, demo_models):
    cards = {m.id: m for m in client.models.list().data}
    assert cards[DESIGN].task_type == "VoiceDesign"
    assert cards[demo_models["voicedesign"].name].task_type == "VoiceDesign"
    assert cards[demo_models["customvoice"].name].task_type == "CustomVoice"
    assert cards[demo_models["base"].name].task_type == "Base"
    assert client.models.retrieve(DESIGN).task_type == "VoiceDesign"
    pcm(client)
    metrics = http.get("/metrics").text
    name = demo_models["voicedesign"].name
    assert f'model="{name}"' in metrics and 'route="/v1/audio/speech"' in metrics


# ---------- errors ----------


@pytest.mark.parametrize("instructions", [None, "", "   "])
def test_missing_description_is_a_400_on_instructions(client, instructions):
    kwargs = {"model": DESIGN, "voice": "alloy", "input": TEXT}
    if instructions is not None:
        kwargs["instructions"] = instructions
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(**kwargs)
    error = caught.value.body
    assert error["param"] == "instructions" and error["code"] == "missing_required_parameter"


@pytest.mark.parametrize(
    "extra, param",
    [
        ({"audio_sample": "data:audio/wav;base64,AAAA"}, "audio_sample"),
        ({"task_type": "CustomVoice"}, "task_type"),
        ({"language": "Klingon"}, "language"),
    ],
)
def test_design_request_errors_name_their_field(client, extra, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model=DESIGN, voice="alloy", input=TEXT, instructions=DESCRIPTION, extra_body=extra)
    assert caught.value.body["param"] == param


# ---------- design, then keep ----------


def stored(server, voice_id: str) -> tuple[dict, int]:
    """A saved voice's metadata and reference length in frames, from its file."""
    path = server.app.state.server.voices.directory / f"{voice_id}.safetensors"
    with safe_open(str(path), framework="pt") as f:
        return f.metadata(), f.get_tensor("reference_codes").shape[0]


def test_design_with_the_sdk_then_speak_by_id_and_name(server, client, http):
    name = unique_name()
    voice = client.audio.voices.create(name=name, prompt=DESCRIPTION, type="prompt")
    assert voice.type == "prompt" and voice.prompt == DESCRIPTION and voice.name == name
    assert voice.id.startswith("voice_")

    # Kept as an in-context clone of the English sample, spoken in the described voice.
    metadata, frames = stored(server, voice.id)
    assert metadata["description"] == DESCRIPTION
    assert metadata["reference_text"] == SAMPLE_SCRIPTS["English"]
    sample = pcm(client, input=SAMPLE_SCRIPTS["English"], extra_body={**WHOLE, "language": "English"})
    assert frames == len(sample) // 2 // 1920

    # Through Base, the same every time for the same seed: by id, by {"id"} and by name.
    sampled = {"model": "qwen3-tts", "input": TEXT, "response_format": "pcm", "stream": False, "temperature": 0.9}

    def speak(voice_ref, seed):
        r = http.post("/v1/audio/speech", json={**sampled, "voice": voice_ref, "seed": seed})
        assert r.status_code == 200, r.text
        return r.content

    first = speak(voice.id, 7)
    assert len(first) > SR
    assert speak({"id": voice.id}, 7) == first and speak(name.lower(), 7) == first
    assert speak(voice.id, 8) != first  # the seed is what makes it repeatable
    by_sdk = client.audio.speech.create(model="qwen3-tts", voice={"id": voice.id}, input=TEXT, response_format="pcm")
    assert len(by_sdk.content) == len(first)

    listed = {card["id"]: card for card in http.get("/v1/audio/voices").json()["data"]}
    assert listed[voice.id]["type"] == "prompt" and listed[voice.id]["prompt"] == DESCRIPTION
    assert http.get(f"/v1/audio/voices/{voice.id}").json()["prompt"] == DESCRIPTION
    entries = {e["id"]: e for e in http.get("/v1/audio/voices").json()["voices"]}
    assert entries[voice.id]["type"] == "prompt"
    metrics = http.get("/metrics").text
    designs = [line for line in metrics.splitlines() if 'route="/v1/audio/voices",status="200"' in line]
    assert any('model="voicedesign"' in line for line in designs), designs  # the model that designed it


def test_design_as_json_with_our_field_names(server, http):
    """``description`` and ``sample_text`` (ours), ``language`` and ``seed``; JSON as well as multipart."""
    name, text = unique_name(), "Bonjour, voici une voix dessinée pour nous."
    body = {"name": name, "description": "Une voix grave et calme.", "sample_text": text, "language": "french"}
    r = http.post("/v1/audio/voices", json={**body, "seed": 3})
    assert r.status_code == 200, r.text
    metadata, frames = stored(server, r.json()["id"])
    assert metadata["reference_text"] == text and metadata["description"] == "Une voix grave et calme."
    assert frames > 10
    # A form with OpenAI's names says the same.
    fields = {"name": unique_name(), "type": "prompt", "prompt": "A calm narrator.", "script_hint": "Just a few words."}
    r = http.post("/v1/audio/voices", data=fields)  # a plain form
    assert r.status_code == 200, r.text
    assert stored(server, r.json()["id"])[0]["reference_text"] == "Just a few words."


def test_the_sample_language_follows_the_description(server, http):
    r = http.post("/v1/audio/voices", json={"name": unique_name(), "description": "一个温柔的年轻女声，语速稍慢。"})
    assert r.status_code == 200, r.text
    assert stored(server, r.json()["id"])[0]["reference_text"] == SAMPLE_SCRIPTS["Chinese"]


@pytest.mark.parametrize(
    "fields, param",
    [
        ({"type": "prompt"}, "prompt"),
        ({"type": "voice_design", "prompt": "A calm voice."}, "type"),
        ({"prompt": "A calm voice.", "description": "Another."}, "description"),
        ({"prompt": "A calm voice.", "sample_text": "word " * 100}, "sample_text"),
        ({"prompt": "A calm voice.", "language": "Klingon"}, "language"),
        ({"prompt": "A calm voice.", "seed": "-1"}, "seed"),
        ({"prompt": "A calm voice.", "name": "alloy"}, "name"),
    ],
)
def test_design_errors_name_their_field(http, fields, param):
    r = http.post("/v1/audio/voices", data={"name": unique_name(), **fields})
    assert r.status_code == 400 and error_of(r)["param"] == param, r.text


def test_design_and_audio_sample_together_is_a_400(http):
    r = http.post(
        "/v1/audio/voices",
        data={"name": unique_name(), "prompt": "A calm voice."},
        files={"audio_sample": ("ref.wav", b"RIFF", "audio/wav")},
    )
    assert r.status_code == 400 and error_of(r)["param"] == "audio_sample"


# ---------- a family missing ----------


@server_fixture(scope="module")
def without_voicedesign(demo_models):
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], base_model_path=demo_models["base"])
    with LiveServer(settings) as live:
        yield live


@server_fixture(scope="module")
def voicedesign_only(demo_models):
    with LiveServer(cpu_settings(voicedesign_model_path=demo_models["voicedesign"])) as live:
        yield live


def test_without_voicedesign_design_requests_name_its_variable(without_voicedesign):
    client = without_voicedesign.openai()
    for kwargs in ({"model": DESIGN}, {"model": "qwen3-tts", "extra_body": {"task_type": "VoiceDesign"}}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.audio.speech.create(voice="alloy", input=TEXT, instructions=DESCRIPTION, **kwargs)
        assert "VOICEDESIGN_MODEL_PATH" in caught.value.body["message"]
        assert caught.value.body["param"] == ("model" if kwargs["model"] == DESIGN else "task_type")
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.voices.create(name=unique_name(), prompt=DESCRIPTION, type="prompt")
    assert "VOICEDESIGN_MODEL_PATH" in caught.value.body["message"] and caught.value.body["param"] == "prompt"
    assert DESIGN not in [m.id for m in client.models.list().data]


def test_voicedesign_alone_speaks_but_cannot_keep_voices(voicedesign_only):
    client = voicedesign_only.openai()
    audio = client.audio.speech.create(
        model=DESIGN, voice="alloy", input=TEXT, instructions=DESCRIPTION, response_format="wav"
    )
    assert decode_audio(audio.content).duration > 1.0
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.voices.create(name=unique_name(), prompt=DESCRIPTION, type="prompt")
    assert "BASE_MODEL_PATH" in caught.value.body["message"]
    # Nothing was stored.
    assert VoiceStore(voicedesign_only.app.state.server.voices.directory).list(EVERYONE) == []
    # A built-in voice needs CustomVoice, and says so.
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.speech.create(model="qwen3-tts", voice="alloy", input=TEXT)
    assert "CUSTOMVOICE_MODEL_PATH" in caught.value.body["message"]
    with httpx.Client(base_url=voicedesign_only.url) as http:
        assert [m["id"] for m in http.get("/v1/models").json()["data"]][:2] == ["qwen3-tts", DESIGN]


def test_designed_voice_over_the_websocket(server):
    """Text streamed in, spoken in a described voice: vLLM-Omni's task_type, or the model alias."""
    from websockets.sync.client import connect

    url = server.url.replace("http://", "ws://") + "/v1/audio/speech/stream"
    config = {"type": "session.config", "response_format": "pcm", "stream_audio": True, "max_new_tokens": 20}
    for routing in ({"task_type": "VoiceDesign"}, {"model": DESIGN}):
        with connect(url, open_timeout=30) as ws:
            ws.send(json.dumps({**config, **routing, "instructions": DESCRIPTION}))
            for word in TEXT.split():
                ws.send(json.dumps({"type": "input.text", "text": word + " "}))
            ws.send(json.dumps({"type": "input.done"}))
            audio, events = b"", []
            while not events or events[-1]["type"] != "session.done":
                message = ws.recv(timeout=60)
                if isinstance(message, bytes):
                    audio += message
                else:
                    events.append(json.loads(message))
        assert [e["type"] for e in events] == ["audio.start", "audio.done", "session.done"], events
        assert len(audio) == 20 * 1920 * 2  # its 20 frames, as 16-bit PCM
