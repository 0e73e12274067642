"""``WS /v1/audio/speech/stream``: text streamed in, speech streamed out, against live demo
servers with a real WebSocket client (``websockets``)."""

from __future__ import annotations

import base64
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from helpers import SR, LiveServer, batch_sizes, cpu_settings, decode_audio, server_fixture, tone_wav
from live_socket import (
    FRAMES,
    PCM,
    ROUTE,
    SAMPLES_PER_FRAME,
    TEXT,
    check_turn,
    event,
    halves,
    open_socket,
    pcm,
    send,
    speak,
    until_done,
    words,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus

from qwen_tts_api.constants import ModelKind


def test_token_fragments_a_second_turn_and_keep_alive(server):
    clause, rest = halves("Hello there, "), halves(TEXT[len("Hello there, ") :])
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", **PCM)
        for fragment in clause:
            send(ws, type="input.text", text=fragment)
        # Speech starts with the first clause, before the rest of the text exists.
        start = event(ws)
        assert start["type"] == "audio.start" and start["sentence_text"].strip() == "Hello there,"
        events, audio = speak(ws, rest, part=0)
        events.insert(0, start)
        check_turn(events, audio, utterance=0)
        assert " ".join(e["sentence_text"] for e in events if e["type"] == "audio.done") == TEXT

        send(ws, type="input.done")  # nothing pending: a keep-alive, answered at once
        assert event(ws, timeout=5) == {"type": "session.done", "utterance_index": 1, "total_sentences": 0}

        events, audio = speak(ws, words("A second turn on the same socket."))
        check_turn(events, audio, utterance=2)


def test_turns_sent_while_one_is_speaking_follow_it_in_order(server):
    """LiveKit's plugin may send the next turn (and a keep-alive) before session.done: each
    is spoken after the one before it, never interleaved."""
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="ryan", **PCM)
        for text in ("The first turn, spoken first.", "The second turn follows."):
            for fragment in words(text):
                send(ws, type="input.text", text=fragment)
            send(ws, type="input.done")
        send(ws, type="input.done")  # a keep-alive behind them
        first, first_audio = until_done(ws)
        second, second_audio = until_done(ws)
        keep_alive = event(ws)
    check_turn(first, first_audio, utterance=0)
    check_turn(second, second_audio, utterance=1)
    assert second[-2]["sentence_text"] == "The second turn follows."
    assert keep_alive == {"type": "session.done", "utterance_index": 2, "total_sentences": 0}


def test_text_that_waits_speaks_as_if_it_had_all_been_there(server):
    """Greedy demo model: text sent word by word with pauses (the generation waits for it)
    gives the audio of the same text sent at once."""
    text = "Waiting for words, the voice pauses and then goes on."
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="ryan", **{**PCM, "max_new_tokens": 60})
        _, at_once = speak(ws, [text])
        _, waited = speak(ws, words(text), pause=0.15)
    assert len(pcm(at_once)) == len(pcm(waited))
    # Chunked decoding may differ in the last float bit: compare as audio, not as bytes.
    assert np.abs(pcm(at_once).astype(int) - pcm(waited).astype(int)).max() <= 2


def test_long_text_is_several_parts(server):
    sentence = "This sentence is here to make the turn long enough for several parts. "
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="aiden", **{**PCM, "max_new_tokens": 4})
        events, audio = speak(ws, words(sentence * 8))
    check_turn(events, audio)
    texts = [e["sentence_text"] for e in events if e["type"] == "audio.done"]
    assert len(texts) >= 3
    assert all(t.endswith(".") and len(t) <= 300 for t in texts)
    assert " ".join(texts) == (sentence * 8).strip()


def test_whole_parts_in_another_format(server):
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", response_format="wav", max_new_tokens=FRAMES)
        events, audio = speak(ws, words(TEXT))
    dones = [e for e in events if e["type"] == "audio.done"]
    for done in dones:
        decoded = decode_audio(audio[done["sentence_index"]], "wav")
        assert decoded.rate == SR and done["total_bytes"] == len(audio[done["sentence_index"]])
    frames = events[-1]["usage"]["output_tokens"]
    total = sum(decode_audio(a, "wav").samples.shape[0] for a in audio.values())
    assert total == frames * SAMPLES_PER_FRAME


def wav_data_uri(freq: float) -> str:
    return "data:audio/wav;base64," + base64.b64encode(tone_wav(2.0, freq)).decode()


def test_saved_voice_and_cloned_reference(server, http):
    files = {"audio_sample": ("ref.wav", tone_wav(1.5, 330.0), "audio/wav")}
    saved = http.post("/v1/audio/voices", data={"name": "live-agent"}, files=files)
    assert saved.status_code == 200, saved.text
    configs = [
        {"task_type": "Base", "voice": "live-agent"},  # what LiveKit's Baseten plugin sends: a saved voice's name
        {"voice": {"id": saved.json()["id"]}},
        {"ref_audio": wav_data_uri(250.0)},  # x-vector clone
        {"ref_audio": wav_data_uri(260.0), "ref_text": "A short reference."},  # in-context clone
    ]
    with open_socket(server) as ws:
        for turn, config in enumerate(configs):
            send(ws, type="session.config", **PCM, **config)
            events, audio = speak(ws, words(TEXT))
            check_turn(events, audio, utterance=turn)


# ---------- errors: each an event naming its field, the socket still usable ----------

CONFIG_ERRORS = [
    ({"voices": "vivian"}, "voices", "unknown_parameter"),
    ({"language": "Klingon"}, "language", "invalid_value"),
    ({"response_format": "wav", "stream_audio": True}, "stream_audio", "invalid_value"),
    ({"response_format": "pcm", "stream_audio": True, "speed": 1.5}, "speed", "invalid_value"),
    ({"speed": 9}, "speed", "invalid_value"),
    ({"task_type": "VoiceDesign"}, "instructions", "missing_required_parameter"),
    (
        {"task_type": "VoiceDesign", "instructions": "A calm voice.", "ref_audio": "data:,"},
        "ref_audio",
        "invalid_value",
    ),
    ({"voice": "nobody"}, "voice", "invalid_voice"),
    ({"task_type": "Base", "voice": "vivian"}, "voice", "invalid_voice"),
    ({"task_type": "CustomVoice", "ref_audio": "data:audio/wav;base64,AAAA"}, "task_type", "invalid_value"),
    ({"ref_audio": "data:audio/wav;base64,bm90IGF1ZGlv"}, "ref_audio", "invalid_audio_sample"),
    ({"initial_codec_chunk_frames": -1}, "initial_codec_chunk_frames", "invalid_value"),
    ({"max_new_tokens": 0}, "max_new_tokens", "invalid_value"),
]


def test_every_config_error_names_its_field_and_the_socket_goes_on(server):
    with open_socket(server) as ws:
        send(ws, type="input.text", text="Too early.")
        error = event(ws)
        assert error["type"] == "error" and error["code"] == "session_not_configured"
        for config, param, code in CONFIG_ERRORS:
            send(ws, type="session.config", **config)
            error = event(ws)
            assert (error["type"], error["param"], error["code"]) == ("error", param, code), (config, error)
            assert error["message"]
        ws.send("not json")
        assert event(ws)["code"] == "invalid_json"
        ws.send(b"\x00\x01")
        assert event(ws)["code"] == "invalid_message"
        send(ws, type="input.speak")
        assert event(ws)["param"] == "type"
        send(ws, type="session.config", voice="vivian", **PCM)
        send(ws, type="input.text", text=42)
        assert event(ws)["param"] == "text"
        send(ws, type="input.text", text="Mid turn, ")
        send(ws, type="session.config", voice="ryan")
        events, audio = speak(ws, ["then the end."])
        errors = [e for e in events if e["type"] == "error"]
        assert [e["code"] for e in errors] == ["turn_in_progress"]
        check_turn([e for e in events if e["type"] != "error"], audio)


# ---------- auth, timeouts ----------


@server_fixture(scope="module")
def strict(demo_models):
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"],
        api_keys=["sk-live"],
        ws_config_timeout_seconds=1.0,
        ws_idle_timeout_seconds=1.5,
    )
    with LiveServer(settings) as live:
        yield live


@pytest.mark.parametrize("header", [None, "Bearer sk-wrong", "Api-Key sk-wrong", "Basic sk-live"])
def test_no_key_no_socket(strict, header):
    with pytest.raises(InvalidStatus) as refused:
        open_socket(strict, {"Authorization": header} if header else None)
    assert refused.value.response.status_code == 401
    error = json.loads(refused.value.response.body)["error"]
    assert error["code"] == ("missing_api_key" if header in (None, "Basic sk-live") else "invalid_api_key")


@pytest.mark.parametrize("scheme", ["Bearer", "Api-Key"])
def test_keys_in_either_scheme(strict, scheme):
    with open_socket(strict, {"Authorization": f"{scheme} sk-live"}) as ws:
        send(ws, type="session.config", voice="vivian", **{**PCM, "max_new_tokens": 4})
        check_turn(*speak(ws, ["Authorized."]))


def test_no_config_or_idle_closes_the_socket_with_a_reason(strict):
    auth = {"Authorization": "Bearer sk-live"}
    with open_socket(strict, auth) as ws:
        error = event(ws, timeout=10)
        assert error["code"] == "timeout" and "session.config" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert "session.config" in closed.value.rcvd.reason
    with open_socket(strict, auth) as ws:
        send(ws, type="session.config", voice="vivian")
        error = event(ws, timeout=10)
        assert error["code"] == "timeout" and "idle" in error["message"]
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=10)


# ---------- barge-in, load, busy ----------


def test_closing_the_socket_stops_generation_and_frees_the_place(server, http):
    engine = server.app.state.server.engine
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", **{**PCM, "max_new_tokens": 2000})
        for fragment in words(TEXT * 4):
            send(ws, type="input.text", text=fragment)
        send(ws, type="input.done")
        assert event(ws)["type"] == "audio.start"
        assert isinstance(ws.recv(timeout=60), bytes)  # speaking
    deadline = time.monotonic() + 10
    while engine.runner.generating(ModelKind.CUSTOMVOICE) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not engine.runner.generating(ModelKind.CUSTOMVOICE)
    with batch_sizes(engine) as steps:
        r = http.post("/v1/audio/speech", json={"model": "x", "input": "Next.", "response_format": "wav"})
    assert r.status_code == 200 and steps and set(steps) == {1}  # it ran alone: the closed turn left
    metrics = http.get("/metrics").text
    assert 'route="/v1/audio/speech/stream",status="499"' in metrics


def test_eight_sockets_at_once(server):
    def one(i: int):
        with open_socket(server) as ws:
            send(ws, type="session.config", voice=["vivian", "ryan"][i % 2], **PCM)
            return speak(ws, halves(f"Socket number {i} says hello, and then a bit more."), pause=0.01)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, range(8)))
    for events, audio in results:
        check_turn(events, audio)


@pytest.mark.slow  # starts a server
def test_busy_server_answers_server_busy(demo_models):
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], max_batch=1, max_queue=0)
    with LiveServer(settings) as live, open_socket(live) as first, open_socket(live) as second:
        send(first, type="session.config", voice="vivian", **{**PCM, "max_new_tokens": 400})
        send(first, type="input.text", text="I hold the only place, ")  # a turn, not yet flushed
        assert event(first)["type"] == "audio.start"
        send(second, type="session.config", voice="vivian", **PCM)
        send(second, type="input.text", text="Me too?")
        busy = event(second)
        assert busy["code"] == "server_busy" and busy["retry_after"] >= 1
        send(second, type="input.text", text=" Dropped.")
        send(second, type="input.done")
        assert event(second) == {"type": "session.done", "utterance_index": 0, "total_sentences": 0}
        with httpx.Client(base_url=live.url) as http:
            assert 'route="/v1/audio/speech/stream",status="429"' in http.get("/metrics").text


def test_health_answers_while_a_turn_waits_for_text(server, http):
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", **PCM)
        send(ws, type="input.text", text="Waiting, ")
        assert event(ws)["type"] == "audio.start"
        started = time.monotonic()
        assert http.get("/health").status_code == 200
        assert time.monotonic() - started < 5
        send(ws, type="input.text", text="then done.")
        send(ws, type="input.done")
        events, _ = until_done(ws, part=0)
        assert events[-1]["type"] == "session.done"


def test_one_log_line_and_metrics_per_turn(server, http, caplog):
    caplog.set_level("INFO", logger="qwen_tts_api.requests")
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", **{**PCM, "max_new_tokens": 4})
        for text in ("First turn.", "Second turn."):
            check_turn(*speak(ws, [text]), utterance=0 if text.startswith("First") else 1)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "qwen_tts_api.requests"]
    turns = [line for line in lines if line["path"] == ROUTE]
    assert len(turns) == 2
    assert all(t["method"] == "WEBSOCKET" and t["status"] == 200 and t["voice_kind"] == "builtin" for t in turns)
    assert [t["input_chars"] for t in turns] == [len("First turn."), len("Second turn.")]
    assert all(t["audio_s"] > 0 and t["ttfa_s"] is not None for t in turns)
    assert 'route="/v1/audio/speech/stream",status="200"' in http.get("/metrics").text


def test_openapi_describes_the_socket_messages(http):
    schemas = http.get("/openapi.json").json()["components"]["schemas"]
    assert {"voice", "task_type", "stream_audio", "ref_audio", "x_vector_only_mode"} <= set(
        schemas["LiveSessionConfig"]["properties"]
    )
    assert {"sentence_index", "sample_rate", "format"} <= set(schemas["LiveAudioStart"]["properties"])
    assert {"total_bytes", "error"} <= set(schemas["LiveAudioDone"]["properties"])
    assert {"total_sentences", "usage"} <= set(schemas["LiveSessionDone"]["properties"])
    assert {"message", "code", "param", "retry_after"} <= set(schemas["LiveError"]["properties"])
