"""Whatever a client names (fields, form fields, SSML elements and attributes, voices,
models) and however it names them, it gets a 200 or a 4xx with OpenAI's error body, never a
5xx or a dropped connection; names repeated in headers come back percent-encoded, capped."""

from __future__ import annotations

import json
import logging
import socket
from urllib.parse import unquote_to_bytes

import httpx
import pytest
from helpers import LiveServer, capped_copy, cpu_settings, decode_audio, error_of, server_fixture, tone_wav
from websockets.sync.client import connect

from qwen_tts_api.api.headers import HEADER_LIMIT, header_list, header_text
from qwen_tts_api.text.echo import loggable, quoted

# Names as a hostile (or merely unusual) client sends them, written as JSON string bodies
# so that lone surrogates and supplementary-plane pairs go over the wire as clients send them.
HOSTILE = {
    "newline": r"a\nb",
    "crlf": r"a\r\nb",
    "nul": r"a\u0000b",
    "del": r"a\u007fb",
    "latin1": "caf\u00e9",
    "cyrillic": "\u0436\u0436",
    "cjk": "\u6f22\u5b57",
    "supplementary pair": r"\ud93c\udf8dA",
    "emoji": "\U0001f3a4",
    "lone surrogate": r"\ud800",
    "quote and comma": r"a\", b",
    "64 KiB": "x" * 65536,
}
SPEECH = '{"model": "qwen3-tts", "voice": "alloy", "input": "Hi.", "response_format": "pcm", "stream": false'


def name_of(escaped: str) -> str:
    """The Python string a JSON string body decodes to."""
    return json.loads(f'"{escaped}"')


def decoded_list(value: str) -> tuple[list[str], int]:
    """A header list as the server writes it: items percent-decoded, and the count left out."""
    left_out = 0
    if value.endswith(" more)"):
        value, _, count = value.rpartition("(and ")
        left_out = int(count.split()[0])
    items = [item for item in value.strip().split(", ") if item]
    return [unquote_to_bytes(item).decode("utf-8", "surrogatepass") for item in items], left_out


def answered(r: httpx.Response) -> None:
    """A 200, or a 4xx in OpenAI's envelope; every header value visible ASCII."""
    assert r.status_code == 200 or (400 <= r.status_code < 500 and error_of(r)["message"]), (r.status_code, r.text)
    for name, value in r.headers.raw:
        assert all(32 <= byte < 127 for byte in value), (name, value)
        assert len(value) <= HEADER_LIMIT or name.lower() not in (b"x-unused-fields", b"x-ssml-ignored")


@server_fixture(scope="module")
def hostile(demo_models, tmp_path_factory):
    models = tmp_path_factory.mktemp("hostile-models")
    settings = cpu_settings(
        customvoice_model_path=capped_copy(demo_models["customvoice"], models, frames=4),
        base_model_path=capped_copy(demo_models["base"], models, frames=4),
    )
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        yield live, http


def post_json(http: httpx.Client, body: str) -> httpx.Response:
    return http.post("/v1/audio/speech", content=body.encode(), headers={"content-type": "application/json"})


@pytest.mark.parametrize("label", list(HOSTILE))
def test_hostile_names_get_an_answer_and_come_back_encoded(hostile, label):
    _, http = hostile
    escaped, name = HOSTILE[label], name_of(HOSTILE[label])

    # An unknown JSON field: served, and named in X-Unused-Fields (or refused as not text).
    r = post_json(http, SPEECH + f', "{escaped}": 1}}')
    answered(r)
    if r.status_code == 200:
        assert decode_audio(r.content, "pcm").duration > 0
        names, left_out = decoded_list(r.headers["x-unused-fields"])
        assert names == [name] if len(name) < HEADER_LIMIT // 9 else (names, left_out) == ([], 1)
    else:
        assert label == "lone surrogate"  # JSON can carry it; no text field can hold it

    # As voice and model: an unknown voice is a 400 naming it (clipped), any model is served.
    r = post_json(http, SPEECH.replace('"alloy"', f'"{escaped}"') + "}")
    answered(r)
    assert r.status_code == 400 and error_of(r)["param"] == "voice" and len(r.text) < 2000
    answered(post_json(http, SPEECH.replace('"qwen3-tts"', f'"{escaped}"') + "}"))

    # SSML: as an element and as an attribute (where XML allows the name at all).
    for ssml in (f"<speak><{escaped}>x</{escaped}></speak>", f'<speak><s {escaped}=\\"1\\">x</s></speak>'):
        r = post_json(http, SPEECH.replace('"Hi."', f'"{ssml}"') + "}")
        answered(r)
        if r.status_code == 200:
            ignored, _ = decoded_list(r.headers["x-ssml-ignored"])
            assert ignored in ([name], [f"s@{name}"])

    # A multipart form field of that name, raw bytes in its header (a browser would escape them).
    answered(upload_with_field(http, name.encode("utf-8", "surrogatepass")))
    assert http.get("/health").status_code == 200


def upload_with_field(http: httpx.Client, field: bytes) -> httpx.Response:
    boundary = b"hostileboundary"
    parts = [
        (b'name="name"', b"Hostile voice " + str(len(field)).encode() + b" " + field.hex()[:20].encode()),
        (b'name="' + field + b'"', b"1"),
        (b'name="audio_sample"; filename="ref.wav"', tone_wav(1.0, 250.0)),
    ]
    body = b"".join(
        b"--" + boundary + b"\r\nContent-Disposition: form-data; " + header + b"\r\n\r\n" + value + b"\r\n"
        for header, value in parts
    )
    body += b"--" + boundary + b"--\r\n"
    return http.post(
        "/v1/audio/voices",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=" + boundary.decode()},
    )


def test_a_form_field_we_do_not_read_is_named(hostile):
    _, http = hostile
    r = upload_with_field(http, b"emotion")
    assert r.status_code == 200 and r.json()["object"] == "audio.voice"
    assert decoded_list(r.headers["x-unused-fields"]) == (["emotion"], 0)


def test_ten_thousand_unknown_fields(hostile):
    _, http = hostile
    extra = {f"field_{i:05d}": i for i in range(10_000)}
    r = http.post("/v1/audio/speech", json=json.loads(SPEECH + "}") | extra)
    answered(r)
    names, left_out = decoded_list(r.headers["x-unused-fields"])
    assert len(r.headers["x-unused-fields"]) <= HEADER_LIMIT
    assert names == sorted(extra)[: len(names)] and len(names) + left_out == 10_000 and names
    # As form fields: more than a voice has is refused before anything is read into a voice.
    boundary = "manyfields"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\n1\r\n' for i in range(10_000))
    r = http.post(
        "/v1/audio/voices",
        content=(body + f"--{boundary}--\r\n").encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    assert r.status_code == 400 and error_of(r)["code"] == "invalid_multipart"
    assert http.get("/health").status_code == 200


def test_the_websocket_names_what_it_refuses_and_stays_open(hostile):
    live, _ = hostile
    with connect(live.url.replace("http://", "ws://") + "/v1/audio/speech/stream", open_timeout=30) as ws:
        for escaped in HOSTILE.values():
            ws.send('{"type": "session.config", "voice": "alloy", "' + escaped + '": 1}')
            error = json.loads(ws.recv(timeout=30))
            assert error["type"] == "error" and len(error["message"]) < 300
            assert error["code"] in ("unknown_parameter", "invalid_value")
            ws.send('{"type": "session.config", "voice": "' + escaped + '"}')
            error = json.loads(ws.recv(timeout=30))
            assert error["type"] == "error" and error["param"] == "voice"
            ws.send('{"type": "' + escaped + '"}')
            assert json.loads(ws.recv(timeout=30))["code"] == "unknown_type"
        ws.send(json.dumps({"type": "input.done"}))
        assert json.loads(ws.recv(timeout=30))["code"] == "session_not_configured"


def test_a_raw_request_with_a_newline_in_a_field_name_is_answered(hostile):
    """The issue's first case, on a plain socket: the answer arrives, with its headers."""
    live, _ = hostile
    body = (SPEECH + ', "a\\nb": 1}').encode()
    with socket.create_connection(("127.0.0.1", live.port), timeout=60) as sock:
        sock.sendall(
            b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200") and b"\r\nx-unused-fields: a%0Ab\r\n" in answer


def test_log_lines_escape_what_the_client_wrote(hostile, caplog):
    _, http = hostile
    with caplog.at_level(logging.DEBUG, logger="qwen_tts_api.api.speech"):
        r = http.post("/v1/audio/speech", json=json.loads(SPEECH + "}") | {"input": "One line.\nForged: line\u0000."})
    assert r.status_code == 200
    spoken = [record.getMessage() for record in caplog.records if record.getMessage().startswith("speaking:")]
    assert spoken and all("\n" not in line and "\x00" not in line for line in spoken)
    assert "\\n" in spoken[-1]


# ---------- the encoders themselves ----------


def test_header_list_round_trips_and_stays_within_its_limit():
    names = [name_of(escaped) for escaped in HOSTILE.values()]
    value = header_list(names)
    assert value.isascii() and all(32 <= ord(c) < 127 for c in value) and len(value) <= HEADER_LIMIT
    shown, left_out = decoded_list(value)
    assert shown == names[: len(shown)] and len(shown) + left_out == len(names)
    assert header_list(["emotion", "pitch"]) == "emotion, pitch"  # plain names read as sent
    assert decoded_list(header_list(["a, b", "c"])) == (["a, b", "c"], 0)
    assert header_list(["x" * 5000]) == "(and 1 more)"
    assert header_list([]) == ""


def test_header_text_keeps_ascii_and_encodes_the_rest():
    assert header_text("model x (0.6B) does not support instructions") == "model x (0.6B) does not support instructions"
    value = header_text("модель 100%\r\n")
    assert value == "%D0%BC%D0%BE%D0%B4%D0%B5%D0%BB%D1%8C 100%25%0D%0A"
    long = header_text("ж" * 5000)
    assert len(long) <= HEADER_LIMIT and long.endswith("...") and "%" not in long[-5:-3]


def test_quoted_and_loggable():
    assert quoted("a\nb") == "'a\\nb'" and quoted("\ud800") == "'\\ud800'"
    assert quoted("x" * 100, limit=5) == "'xxxxx...' (95 more characters)"
    assert quoted(7) == "7"
    assert loggable("a\nb\r\x00\x7f\\ ж") == "a\\nb\\r\\x00\\x7f\\\\ ж"
    assert loggable("\ud800") == "\\ud800"
    assert loggable("y" * 10, limit=3) == "yyy... (7 more characters)"
