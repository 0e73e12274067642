"""What one client may hold of a live server: bodies, WebSocket messages and sessions, text
waiting on a socket, and a stream nobody reads. Each limit is refused early, in OpenAI's
error shape, and the server goes on serving the others."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from helpers import (
    LiveServer,
    batch_sizes,
    cpu_settings,
    decode_audio,
    error_of,
    recorded_streams,
    server_fixture,
    slowed_steps,
    tone_wav,
)
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from qwen_tts_api.constants import ModelKind

KiB = 1024
SPEECH = {"model": "qwen3-tts", "voice": "alloy", "input": "Limits.", "response_format": "pcm", "stream": False}
ROUTE = "/v1/audio/speech/stream"


@server_fixture(scope="module")
def limited(demo_models) -> Iterator[tuple[LiveServer, httpx.Client]]:
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"],
        base_model_path=demo_models["base"],
        max_body_bytes=16 * KiB,
        audio_sample_max_bytes=200 * KiB,
        ws_max_message_bytes=16 * KiB,
        ws_max_sessions=3,
    )
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        yield live, http


def open_socket(live: LiveServer) -> ClientConnection:
    return connect(live.url.replace("http://", "ws://") + ROUTE, open_timeout=30, max_size=None)


def event(ws: ClientConnection, timeout: float = 60) -> dict:
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str), "expected a JSON event"
    return json.loads(message)


# ---------- bodies ----------


def test_a_body_declared_too_large_is_refused_before_it_is_sent(limited):
    live, http = limited
    with socket.create_connection(("127.0.0.1", live.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 60000000\r\n\r\n"
        )  # and not one byte of the body
        answer = b""
        while b"}}" not in answer and (chunk := sock.recv(65536)):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    error = json.loads(body)["error"]
    assert error["code"] == "request_too_large" and "QWEN_TTS_MAX_BODY_BYTES" in error["message"]
    assert http.get("/health").status_code == 200


def test_a_large_body_is_413_whether_declared_or_chunked(limited):
    _, http = limited
    big = json.dumps({**SPEECH, "padding": "x" * (2 * 1024 * KiB)}).encode()
    r = http.post("/v1/audio/speech", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"

    def chunks():  # no Content-Length: counted as it arrives
        for start in range(0, len(big), 8 * KiB):
            yield big[start : start + 8 * KiB]

    r = http.post("/v1/audio/speech", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and error_of(r)["code"] == "request_too_large"
    # Just under the limit is served, chunked or not.
    fits = json.dumps({**SPEECH, "padding": "x" * (12 * KiB)}).encode()
    for content in (fits, iter([fits[:5000], fits[5000:]])):
        r = http.post("/v1/audio/speech", content=content, headers={"content-type": "application/json"})
        assert r.status_code == 200 and decode_audio(r.content, "pcm").duration > 0
        assert r.headers["x-unused-fields"] == "padding"


def test_uploads_keep_their_own_larger_limit(limited):
    _, http = limited
    sample = tone_wav(2.0, 240.0)  # 96 KB: past the JSON limit, within the upload's
    assert 16 * KiB < len(sample) < 200 * KiB
    r = http.post("/v1/audio/voices", data={"name": "Within limits"}, files={"audio_sample": ("a.wav", sample)})
    assert r.status_code == 200, r.text
    big = tone_wav(5.0, 240.0)  # 240 KB
    r = http.post("/v1/audio/voices", data={"name": "Past limits"}, files={"audio_sample": ("a.wav", big)})
    assert r.status_code == 413 and error_of(r)["param"] == "audio_sample"
    # The same file inline, base64 in JSON, meets the JSON limit, and the message says what to do.
    inline = {**SPEECH, "audio_sample": "data:audio/wav;base64," + "A" * (20 * KiB)}
    r = http.post("/v1/audio/speech", json=inline)
    assert r.status_code == 413 and "saved voice" in error_of(r)["message"]


# ---------- WebSocket messages and sessions ----------


def test_a_websocket_message_past_the_limit_is_refused_with_a_reason(limited):
    live, http = limited
    with open_socket(live) as ws:
        ws.send(json.dumps({"type": "input.text", "text": "x" * (20 * KiB)}))
        error = event(ws)
        assert error["code"] == "message_too_large" and "QWEN_TTS_WS_MAX_MESSAGE_BYTES" in error["message"]
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    with open_socket(live) as ws:  # past twice the limit: the WebSocket layer refuses it unread
        ws.send("x" * (40 * KiB))
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert http.get("/health").status_code == 200


def test_sessions_past_the_cap_get_429_until_one_closes(limited):
    live, _ = limited
    with contextlib.ExitStack() as held:
        sockets = [held.enter_context(open_socket(live)) for _ in range(3)]
        with pytest.raises(InvalidStatus) as refused:
            open_socket(live)
        response = refused.value.response
        assert response.status_code == 429 and int(response.headers["Retry-After"]) >= 1
        error = json.loads(response.body)["error"]
        assert error["code"] == "too_many_sessions" and "QWEN_TTS_WS_MAX_SESSIONS" in error["message"]
        sockets[0].close()
        time.sleep(0.5)
        again = held.enter_context(open_socket(live))  # a place is free again
        again.send(json.dumps({"type": "input.done"}))
        assert event(again)["code"] == "session_not_configured"


def test_text_waiting_behind_a_turn_is_bounded(limited):
    live, _ = limited
    engine = live.app.state.server.engine
    with slowed_steps(engine, 0.05), open_socket(live) as ws:
        config = {"type": "session.config", "voice": "vivian", "response_format": "pcm", "stream_audio": True}
        ws.send(json.dumps({**config, "max_new_tokens": 400}))
        ws.send(json.dumps({"type": "input.text", "text": "A turn that keeps speaking for a while."}))
        ws.send(json.dumps({"type": "input.done"}))
        assert event(ws)["type"] == "audio.start"
        for _ in range(16):  # 64 Ki characters wait: the most a turn holds
            ws.send(json.dumps({"type": "input.text", "text": "w" * 4096}))
        ws.send(json.dumps({"type": "input.text", "text": "one too many"}))
        ws.send(json.dumps({"type": "input.done"}))
        for _ in range(8):
            ws.send(json.dumps({"type": "input.done"}))
        errors = []
        while len(errors) < 2:
            message = ws.recv(timeout=60)
            if isinstance(message, str) and json.loads(message)["type"] == "error":
                errors.append(json.loads(message))
        assert [e["code"] for e in errors] == ["input_too_long", "too_many_turns"]


# ---------- a hundred idle sockets and twenty stalled readers ----------


@server_fixture(scope="module")
def crowded(demo_models) -> Iterator[LiveServer]:
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"],
        send_timeout_seconds=1.0,
        ws_max_sessions=100,
        ws_idle_timeout_seconds=300,
        ws_config_timeout_seconds=300,
        max_batch=8,
        max_queue=16,
    )
    with LiveServer(settings) as live:
        yield live


def stalled_reader(port: int, text: str) -> socket.socket:
    """A streaming request from a client that never reads its answer (a tiny receive window)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    body = json.dumps({**SPEECH, "input": text, "stream": True, "sample_rate": 48000}).encode()
    sock.sendall(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    return sock


def first_audio_after(client: httpx.Client) -> float:
    started = time.monotonic()
    body = {**SPEECH, "input": "A new request, served as usual.", "stream": True}
    with client.stream("POST", "/v1/audio/speech", json=body) as r:
        assert r.status_code == 200
        for _ in r.iter_bytes():
            return time.monotonic() - started
    raise AssertionError("no audio")


def test_idle_sockets_and_stalled_readers_do_not_crowd_out_a_new_request(crowded):
    engine = crowded.app.state.server.engine
    http = httpx.Client(base_url=crowded.url, timeout=120)
    usual = min(first_audio_after(http) for _ in range(3))
    stalled: list[socket.socket] = []
    with contextlib.ExitStack() as held:
        idle = [held.enter_context(open_socket(crowded)) for _ in range(100)]
        held.callback(lambda: [sock.close() for sock in stalled])
        held.callback(http.close)
        for ws in idle:
            ws.send(json.dumps({"type": "session.config", "voice": "vivian"}))
        with pytest.raises(InvalidStatus):  # the 101st session waits for a place
            open_socket(crowded)
        long_text = "This reply is long and nobody is listening to it. " * 70
        with recorded_streams(engine) as streams:
            stalled = [stalled_reader(crowded.port, long_text) for _ in range(20)]
            # Each fills its socket's buffers, waits past the send timeout and is dropped; the
            # queued ones take the freed places in turn, until every one has let its place go.
            deadline = time.monotonic() + 120
            while not (len(streams) == 20 and all(s.cancelled for s in streams)) and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(streams) == 20 and all(s.cancelled for s in streams)
        with batch_sizes(engine) as steps:
            took = first_audio_after(http)
        # It ran alone: none of the twenty still held a row, and it waited in no queue.
        assert steps and set(steps) == {1}
        print(f"first audio: {usual:.3f} s on an idle server, {took:.3f} s beside 100 idle and 20 stalled clients")
        assert took < 10 * usual + 5  # a loose guard against waiting behind them (minutes)
        # The idle sessions are still there and speak when asked.
        idle[0].send(json.dumps({"type": "input.text", "text": "Still here."}))
        idle[0].send(json.dumps({"type": "input.done"}))
        assert event(idle[0])["type"] == "audio.start"


def test_a_websocket_that_stops_reading_frees_its_row(crowded):
    engine = crowded.app.state.server.engine
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", crowded.port))
    url = crowded.url.replace("http://", "ws://") + ROUTE
    # max_queue=1: the client stops taking frames off the socket once one is waiting unread.
    with connect(url, sock=sock, max_queue=1, open_timeout=30) as ws:
        config = {"type": "session.config", "voice": "vivian", "response_format": "pcm", "stream_audio": True}
        ws.send(json.dumps({**config, "sample_rate": 48000}))
        ws.send(json.dumps({"type": "input.text", "text": "Nobody reads this long answer. " * 60}))
        ws.send(json.dumps({"type": "input.done"}))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not engine.runner.generating(ModelKind.CUSTOMVOICE):
            time.sleep(0.05)  # until it speaks
        assert engine.runner.generating(ModelKind.CUSTOMVOICE)
        while time.monotonic() < deadline and engine.runner.generating(ModelKind.CUSTOMVOICE):
            time.sleep(0.1)
        assert not engine.runner.generating(ModelKind.CUSTOMVOICE)  # its row left, the socket still open
    with httpx.Client(base_url=crowded.url, timeout=30) as http:
        assert 'route="/v1/audio/speech/stream",status="499"' in http.get("/metrics").text
