"""Running as a service: API keys, request ids, the request log, /metrics, /ready, and
graceful shutdown (the real `qwen-tts-api serve` in a subprocess)."""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import httpx
import openai
import pytest
from helpers import SR, LiveServer, cpu_settings, decode_audio, error_of, server_fixture
from prometheus_client.parser import text_string_to_metric_families

from qwen_tts_api.devtools import free_port

SPEECH = {"model": "qwen3-tts", "voice": "alloy", "input": "Service checks.", "response_format": "wav"}


# ---------- API keys ----------


@server_fixture(scope="module")
def keyed(demo_models):
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"],
        base_model_path=demo_models["base"],
        api_keys=["sk-first", "sk-second"],
    )
    with LiveServer(settings) as live:
        yield live


def sdk(server: LiveServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=60)


def test_every_configured_key_works_with_the_sdk(keyed):
    for key in ("sk-first", "sk-second"):
        audio = sdk(keyed, key).audio.speech.create(
            model="qwen3-tts", voice="alloy", input="Hi.", response_format="wav"
        )
        assert decode_audio(audio.content).rate == SR
        assert [m.id for m in sdk(keyed, key).models.list()][0] == "qwen3-tts"


def test_wrong_or_missing_key_is_401_in_the_envelope(keyed):
    with pytest.raises(openai.AuthenticationError) as caught:
        sdk(keyed, "sk-wrong").audio.speech.create(model="qwen3-tts", voice="alloy", input="Hi.")
    assert caught.value.status_code == 401 and caught.value.body["code"] == "invalid_api_key"
    with httpx.Client(base_url=keyed.url, timeout=30) as http:
        for path in ("/v1/models", "/v1/audio/voices", "/v1/no-such-route"):
            r = http.get(path)
            assert r.status_code == 401 and error_of(r)["code"] == "missing_api_key"
            assert r.headers["www-authenticate"] == "Bearer"
        for header in ("Bearer sk-first-and-more", "Bearer sk-firs", "Basic sk-first", "sk-first", "Bearer"):
            assert http.get("/v1/models", headers={"Authorization": header}).status_code == 401, header
        r = http.post("/v1/audio/speech", json=SPEECH, headers={"Authorization": "Bearer sk-wrong"})
        assert r.status_code == 401
        # Open without a key: liveness, readiness, metrics and the playground page.
        for path in ("/health", "/metrics", "/"):
            assert http.get(path).status_code == 200, path
        assert http.get("/ready").status_code == 200  # the fixture waited for the warm-up


def test_keys_off_by_default(client):
    # The main test server has no keys set: any bearer token (or none) is fine.
    assert client.models.list().data
    with httpx.Client(timeout=30) as http:
        assert http.get(str(client.base_url) + "models").status_code == 200


# ---------- request ids and the request log ----------


def test_request_ids(http):
    generated = http.get("/v1/models").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    assert http.get("/v1/models").headers["x-request-id"] != generated
    assert http.get("/v1/models", headers={"X-Request-Id": "client-42.a"}).headers["x-request-id"] == "client-42.a"
    # An id that is unsafe to log or echo is replaced.
    assert http.get("/v1/models", headers={"X-Request-Id": "a b\tc"}).headers["x-request-id"] != "a b\tc"
    # Errors carry one too.
    for r, status in ((http.get("/nope"), 404), (http.post("/v1/audio/speech", json={**SPEECH, "speed": 9}), 400)):
        assert r.status_code == status and re.fullmatch(r"[0-9a-f]{32}", r.headers["x-request-id"])


def request_log_lines(caplog) -> list[dict]:
    return [json.loads(r.getMessage()) for r in caplog.records if r.name == "qwen_tts_api.requests"]


def wait_for_log(caplog, request_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in request_log_lines(caplog):
            if line["request_id"] == request_id:
                return line
        time.sleep(0.05)
    raise AssertionError(f"no log line for {request_id}")


def test_one_log_line_per_request_without_the_text(server, http, caplog):
    caplog.set_level(logging.INFO, logger="qwen_tts_api.requests")
    secret_text = "My secret sentence for the log test."
    with http.stream(
        "POST",
        "/v1/audio/speech",
        headers={"X-Request-Id": "log-stream-1"},
        json={**SPEECH, "input": secret_text, "response_format": "pcm"},
    ) as r:
        body = r.read()
    line = wait_for_log(caplog, "log-stream-1")
    assert line["status"] == 200 and line["path"] == "/v1/audio/speech" and line["format"] == "pcm"
    assert line["model"] == "customvoice" and line["voice_kind"] == "builtin"
    assert line["input_chars"] == len(secret_text)
    assert abs(line["audio_s"] - len(body) / 2 / SR) < 0.09  # within one frame
    assert 0 < line["ttfa_s"] <= line["duration_s"]
    assert [entry["request_id"] for entry in request_log_lines(caplog)].count("log-stream-1") == 1
    assert all(secret_text not in record.getMessage() for record in caplog.records)

    r = http.post("/v1/audio/speech", json={**SPEECH, "voice": "nobody"}, headers={"X-Request-Id": "log-bad-1"})
    line = wait_for_log(caplog, "log-bad-1")
    assert line["status"] == 400 == r.status_code


def test_log_input_opt_in(demo_models, caplog):
    caplog.set_level(logging.INFO, logger="qwen_tts_api.requests")
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], log_input=True)
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=60) as http:
        http.post("/v1/audio/speech", json={**SPEECH, "input": "Log me."}, headers={"X-Request-Id": "log-in-1"})
        assert wait_for_log(caplog, "log-in-1")["input"] == "Log me."


# ---------- metrics ----------


def scrape(http: httpx.Client) -> dict[str, list]:
    r = http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {family.name: family.samples for family in text_string_to_metric_families(r.text)}


def value(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(found)


def test_metrics(server, http):
    before = scrape(http)
    bodies = [http.post("/v1/audio/speech", json={**SPEECH, "response_format": fmt}) for fmt in ("wav", "mp3")]
    http.post("/v1/audio/speech", json={**SPEECH, "speed": 9})
    import base64

    ref = base64.b64encode(decode_and_reencode_tone()).decode()
    for _ in range(2):  # the second hits the clone-prompt cache
        assert http.post("/v1/audio/speech", json={**SPEECH, "audio_sample": ref}).status_code == 200
    after = scrape(http)

    def delta(family, name, **labels):
        return value(after.get(family, []), name, **labels) - value(before.get(family, []), name, **labels)

    def speech_requests(**labels):
        return delta("qwen_tts_requests", "qwen_tts_requests_total", route="/v1/audio/speech", **labels)

    assert speech_requests(status="200", format="wav", model="customvoice") == 1
    assert speech_requests(status="200", format="mp3", model="customvoice") == 1
    assert speech_requests(status="200", format="wav", model="base") == 2
    assert speech_requests(status="400") == 1
    assert (
        delta("qwen_tts_time_to_first_audio_seconds", "qwen_tts_time_to_first_audio_seconds_count", model="customvoice")
        == 2
    )
    assert delta("qwen_tts_real_time_factor", "qwen_tts_real_time_factor_count", model="customvoice") == 2
    produced = sum(decode_audio(b.content).duration for b in bodies)
    assert abs(delta("qwen_tts_audio_seconds", "qwen_tts_audio_seconds_total", model="customvoice") - produced) < 0.2
    assert delta("qwen_tts_batch_size", "qwen_tts_batch_size_count", model="customvoice") > 0
    assert delta("qwen_tts_prompt_cache_lookups", "qwen_tts_prompt_cache_lookups_total", result="hit") >= 1
    assert value(after["qwen_tts_queue_depth"], "qwen_tts_queue_depth") == 0
    assert value(after["qwen_tts_requests_generating"], "qwen_tts_requests_generating") == 0


def decode_and_reencode_tone() -> bytes:
    import io

    import numpy as np
    import soundfile as sf

    t = np.arange(SR) / SR
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 333 * t)).astype(np.float32), SR, format="WAV")
    return buf.getvalue()


# ---------- readiness ----------


def test_ready_after_warm_up(server, http):
    deadline = time.monotonic() + 60
    while (r := http.get("/ready")).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert r.status_code == 200
    ready = r.json()
    assert ready.pop("aligner").startswith("demo-aligner")  # the test server's aligner directory
    assert ready == {
        "status": "ready",
        "models": ["customvoice", "base", "voicedesign"],
        "warmed_up": True,
        "word_timings": "aligner",
        "step": "eager",
    }
    readiness = server.app.state.server.readiness
    readiness.warmed_up = False  # as it is while the warm-up runs
    try:
        r = http.get("/ready")
        assert r.status_code == 503 and r.json()["status"] == "starting"
        assert http.get("/health").status_code == 200  # alive all the same
    finally:
        readiness.warmed_up = True


# ---------- graceful shutdown (the real CLI in a subprocess) ----------


@pytest.mark.parametrize("grace", [60, 1], ids=["finishes-stream", "timeout-cuts-stream"])
def test_sigterm_finishes_in_flight_streams_then_exits(demo_models, tmp_path, grace):
    port = free_port()
    env = {
        **os.environ,
        "CUSTOMVOICE_MODEL_PATH": str(demo_models["customvoice"]),
        "QWEN_TTS_DEVICE": "cpu",
        "QWEN_TTS_DTYPE": "float32",
        "QWEN_TTS_ATTN": "",
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "QWEN_TTS_DATA_DIR": str(tmp_path),
        "QWEN_TTS_SHUTDOWN_TIMEOUT": str(grace),
    }
    env.pop("QWEN_TTS_API_KEYS", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "qwen_tts_api.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=url, timeout=60) as http:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if http.get("/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and process.poll() is None, "server did not become ready"
                time.sleep(0.2)
            repeat = 3 if grace > 1 else 12  # with a 1 s grace, a stream that surely outlasts it
            body = {
                **SPEECH,
                "input": "A longer sentence, so the stream is still running when the signal comes. " * repeat,
                "response_format": "pcm",
            }
            whole = http.post("/v1/audio/speech", json={**body, "stream": False}).content
            received = b""
            with http.stream("POST", "/v1/audio/speech", json=body) as r:
                chunks = r.iter_bytes()
                received += next(chunks)
                process.send_signal(signal.SIGTERM)
                time.sleep(0.5)
                with pytest.raises(OSError):  # noqa: PT011 - refused or reset: no longer accepting connections
                    socket.create_connection(("127.0.0.1", port), timeout=2).close()
                stopped = time.monotonic()
                try:
                    for chunk in chunks:
                        received += chunk
                except httpx.TransportError:
                    pass  # cut at the grace timeout
        if grace > 1:
            assert received == whole  # the in-flight stream was finished, not cut
        else:
            assert len(received) < len(whole) and time.monotonic() - stopped < 15
        # uvicorn re-raises the signal once it has shut down cleanly, so the exit status says SIGTERM.
        assert process.wait(timeout=60) in (0, -signal.SIGTERM)
    finally:
        if process.poll() is None:
            process.kill()
        output = process.communicate()[0]
    assert "Waiting for" in output or "Shutting down" in output
