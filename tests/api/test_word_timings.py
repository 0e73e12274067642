"""Word timings on live servers, in every shape a client reads them: vLLM-Omni's header and
WebSocket chunks, our SSE events and JSON (with captions), ElevenLabs' with-timestamps
routes, LiveKit's Baseten fields. The main server has the demo aligner (random weights: its
times are arbitrary but pass through every step); another has none (estimates)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest
from helpers import LiveServer, cpu_settings, decode_audio, error_of, server_fixture
from live_socket import PCM, event, open_socket, send

from qwen_tts_api.text.words import written_words

TEXT = "Hello there, brave new world. I have 42 apples, and a dog!"
FRAME = 0.08  # seconds: one codec frame, the tolerance of a time that moved
BODY = {"model": "tts-1", "voice": "vivian", "response_format": "wav", "language": "English", "max_new_tokens": 20}


def header_words(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return json.loads(response.headers["x-word-timestamps"])


def check_words(words: list[dict], text: str, duration: float, start="start", end="end") -> None:
    """Every word of ``text`` in order, each inside the audio and after the one before."""
    assert [w["word"] for w in words] == [w.text for w in written_words(text)]
    check_times(words, duration, start, end)


def check_times(words: list[dict], duration: float, start="start", end="end") -> None:
    previous = 0.0
    for word in words:
        assert previous - 1e-3 <= word[start] <= word[end] <= duration + 1e-3, (word, duration)
        previous = word[start]


def sse_events(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    return [json.loads(line[6:]) for line in response.text.splitlines() if line.startswith("data: ")]


@server_fixture(scope="module")
def estimating(demo_models) -> Iterator[LiveServer]:
    """No aligner: timings are estimated."""
    with LiveServer(cpu_settings(customvoice_model_path=demo_models["customvoice"])) as live:
        yield live


# ---------- vLLM-Omni's field on /v1/audio/speech ----------


def test_the_openai_client_reads_vllm_omnis_header(server):
    client = server.openai()
    response = client.audio.speech.with_raw_response.create(
        model="tts-1",
        voice="vivian",
        input=TEXT,
        response_format="wav",
        extra_body={"word_timestamps": True, "language": "English", "max_new_tokens": 20},
    )
    audio = decode_audio(response.content, "wav")
    words = json.loads(response.headers["x-word-timestamps"])
    check_words(words, TEXT, audio.duration * 1000, "start_ms", "end_ms")
    assert response.headers["x-word-timestamps-source"] == "aligner"
    assert "x-unused-fields" not in response.headers  # the field is understood, not dropped


def test_a_streamed_audio_body_cannot_carry_the_header(http):
    response = http.post("/v1/audio/speech", json={**BODY, "input": TEXT, "word_timestamps": True, "stream": True})
    assert response.status_code == 400
    assert error_of(response)["param"] == "word_timestamps"


def test_past_4096_bytes_the_header_is_omitted_and_says_so(http):
    text = " ".join(["word"] * 180) + "."
    response = http.post("/v1/audio/speech", json={**BODY, "input": text, "word_timestamps": True, "max_new_tokens": 2})
    assert response.status_code == 200
    assert "x-word-timestamps" not in response.headers
    assert "4096" in response.headers["x-word-timestamps-omitted"]
    assert decode_audio(response.content, "wav").duration > 0


def test_sse_events_time_each_segment_as_the_whole_response_does(http):
    text = "<speak>First sentence here. <break time='300ms'/> Second one follows.</speak>"
    response = http.post("/v1/audio/speech", json={**BODY, "input": text, "word_timestamps": True})
    whole, seconds = header_words(response), decode_audio(response.content, "wav").duration
    events = sse_events(
        http.post("/v1/audio/speech", json={**BODY, "input": text, "word_timestamps": True, "stream_format": "sse"})
    )
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "speech.audio.done" and "error" not in kinds
    stamped = [e for e in events if e["type"] == "speech.audio.timestamps"]
    assert [e["segment_index"] for e in stamped] == [0, 1]
    # Each segment's words come after that segment's audio, before the next segment's last audio.
    assert kinds.index("speech.audio.timestamps") > kinds.index("speech.audio.delta")
    streamed = [w for e in stamped for w in e["words"]]
    check_words(streamed, "First sentence here. Second one follows.", seconds)
    assert [w["word"] for w in streamed] == [w["word"] for w in whole]
    for ours, header in zip(streamed, whole):
        assert abs(ours["start"] * 1000 - header["start_ms"]) <= FRAME * 1000
        assert abs(ours["end"] * 1000 - header["end_ms"]) <= FRAME * 1000


def _timed(http, text: str, **extra) -> list[dict]:
    response = http.post("/v1/audio/speech/with-timestamps", json={**BODY, "input": text, **extra})
    assert response.status_code == 200, response.text
    return response.json()["words"]


@pytest.mark.slow
@pytest.mark.parametrize("server_name", ["server", "estimating"])
def test_a_break_shifts_every_later_word_and_speed_halves_them(server_name, request):
    live = request.getfixturevalue(server_name)
    with httpx.Client(base_url=live.url, timeout=120) as http:
        short = _timed(http, "<speak>Hello there. <break time='100ms'/> Brave new world.</speak>")
        long = _timed(http, "<speak>Hello there. <break time='2s'/> Brave new world.</speak>")
        fast = _timed(http, "<speak>Hello there. <break time='100ms'/> Brave new world.</speak>", speed=2.0)
    for before, after in zip(short[:2], long[:2]):
        assert abs(after["start"] - before["start"]) <= FRAME and abs(after["end"] - before["end"]) <= FRAME
    for before, after in zip(short[2:], long[2:]):
        assert abs(after["start"] - before["start"] - 1.9) <= FRAME
        assert abs(after["end"] - before["end"] - 1.9) <= FRAME
    for normal, doubled in zip(short, fast):
        assert abs(doubled["start"] - normal["start"] / 2) <= FRAME
        assert abs(doubled["end"] - normal["end"] / 2) <= FRAME


# ---------- our JSON route: words, spoken words, captions ----------


def test_with_timestamps_gives_words_spoken_words_and_captions(http):
    response = http.post(
        "/v1/audio/speech/with-timestamps", json={**BODY, "input": TEXT, "normalize": True, "sample_rate": 16000}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    audio = decode_audio(base64.b64decode(body["audio_base64"]), "wav")
    assert audio.rate == body["sample_rate"] == 16000 and body["content_type"] == "audio/wav"
    assert abs(audio.duration - body["duration"]) < 0.01
    check_words(body["words"], TEXT, body["duration"])
    spoken = [w["word"] for w in body["spoken_words"]]
    assert "42" not in spoken and "two" in " ".join(spoken).lower()  # numbers written out, then timed
    assert body["estimated"] is False
    srt, vtt = body["captions"]["srt"], body["captions"]["vtt"]
    assert srt.startswith("1\n00:00:") and " --> " in srt and "Hello there," in srt
    assert vtt.startswith("WEBVTT\n\n") and "NOTE" not in vtt and "42 apples," in vtt


def test_the_estimate_is_marked_in_every_shape(estimating):
    with httpx.Client(base_url=estimating.url, timeout=120) as http:
        assert http.get("/ready").json()["word_timings"] == "estimate"
        response = http.post("/v1/audio/speech", json={**BODY, "input": TEXT, "word_timestamps": True})
        assert response.headers["x-word-timestamps-source"] == "estimate"
        words = header_words(response)
        check_words(words, TEXT, decode_audio(response.content, "wav").duration * 1000, "start_ms", "end_ms")
        assert all(w["end_ms"] > w["start_ms"] for w in words)  # spread by syllables: each takes time
        events = sse_events(
            http.post("/v1/audio/speech", json={**BODY, "input": TEXT, "word_timestamps": True, "stream_format": "sse"})
        )
        assert all(e["estimated"] for e in events if e["type"] == "speech.audio.timestamps")
        body = http.post("/v1/audio/speech/with-timestamps", json={**BODY, "input": TEXT}).json()
        assert body["estimated"] is True and body["captions"]["vtt"].startswith("WEBVTT\n\nNOTE ")
        eleven = http.post("/v1/text-to-speech/vivian/with-timestamps", json={"text": TEXT}).json()
        assert eleven["estimated"] is True


@pytest.mark.slow
def test_an_unusable_aligner_is_reported_and_timings_are_estimated(demo_models):
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], aligner_model_path=demo_models["base"])
    with LiveServer(settings) as live, httpx.Client(base_url=live.url, timeout=120) as http:
        ready = http.get("/ready").json()
        assert ready["status"] == "ready" and ready["word_timings"] == "estimate"
        assert "ALIGNER_MODEL_PATH" in ready["aligner_error"]
        response = http.post("/v1/audio/speech", json={**BODY, "input": TEXT, "word_timestamps": True})
        assert response.status_code == 200 and response.headers["x-word-timestamps-source"] == "estimate"


# ---------- ElevenLabs ----------


def test_elevenlabs_with_timestamps(http):
    response = http.post(
        "/v1/text-to-speech/vivian/with-timestamps",
        params={"output_format": "pcm_24000"},
        json={
            "text": TEXT,
            "model_id": "eleven_multilingual_v2",
            "voice_settings": {"stability": 0.5, "speed": 1.0},
            "language_code": "en",
            "apply_text_normalization": "on",
        },
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-unused-fields"] == "voice_settings.stability"
    body = response.json()
    seconds = len(base64.b64decode(body["audio_base64"])) / 2 / 24000
    alignment, spoken = body["alignment"], body["normalized_alignment"]
    assert "".join(alignment["characters"]) == TEXT
    assert "fortytwo" in "".join(spoken["characters"]).replace("-", "").replace(" ", "").lower()
    for shape in (alignment, spoken):
        starts, ends = shape["character_start_times_seconds"], shape["character_end_times_seconds"]
        assert len(starts) == len(ends) == len(shape["characters"])
        assert starts == sorted(starts) and all(0 <= s <= e <= seconds + 1e-3 for s, e in zip(starts, ends))


def test_elevenlabs_stream_with_timestamps_lines_add_up_to_the_text(http):
    text = "Hello there. " * 25 + "Brave new world!"
    chars: list[str] = []
    starts: list[float] = []
    audio = b""
    lines = 0
    with http.stream(
        "POST",
        "/v1/text-to-speech/vivian/stream/with-timestamps",
        params={"output_format": "mp3_44100_128", "optimize_streaming_latency": "3"},
        json={"text": text, "model_id": "eleven_flash_v2_5", "previous_text": "Earlier."},
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-unused-fields"] == "previous_text, %3Foptimize_streaming_latency"
        for line in response.iter_lines():
            chunk = json.loads(line)
            piece = base64.b64decode(chunk["audio_base64"])
            lines += 1
            assert piece or chunk["alignment"], "a line with neither audio nor alignment"
            audio += piece
            if chunk["alignment"]:
                chars += chunk["alignment"]["characters"]
                starts += chunk["alignment"]["character_start_times_seconds"]
    assert lines > 2 and "".join(chars) == text
    decoded = decode_audio(audio, "mp3")
    assert decoded.rate == 44100
    assert starts == sorted(starts) and starts[-1] <= decoded.duration + 0.1  # from the start of the utterance


def test_elevenlabs_errors_are_clear(http):
    bad = http.post("/v1/text-to-speech/vivian/with-timestamps", params={"output_format": "wma_1"}, json={"text": "x"})
    assert bad.status_code == 400 and error_of(bad)["param"] == "output_format"
    rate = http.post(
        "/v1/text-to-speech/vivian/with-timestamps", params={"output_format": "pcm_12345"}, json={"text": "x"}
    )
    assert rate.status_code == 400 and error_of(rate)["param"] == "output_format"
    language = http.post("/v1/text-to-speech/vivian/with-timestamps", json={"text": "x", "language_code": "xx"})
    assert language.status_code == 400 and error_of(language)["param"] == "language_code"
    voice = http.post("/v1/text-to-speech/nobody/with-timestamps", json={"text": "x"})
    assert voice.status_code in (400, 404) and "nobody" in error_of(voice)["message"]


# ---------- the WebSocket: vLLM-Omni's chunks, LiveKit's Baseten fields ----------


def _turn(ws, text: str) -> list[dict]:
    send(ws, type="input.text", text=text)
    send(ws, type="input.done")
    events = []
    while not events or events[-1]["type"] != "session.done":
        events.append(event(ws))
    return events


def test_websocket_word_timestamps_as_vllm_omni_sends_them(server):
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", word_timestamps=True, **PCM)
        events = _turn(ws, TEXT)
    assert "error" not in [e["type"] for e in events], events
    parts = [e for e in events if e["type"] == "audio.start"]
    assert parts and all(e["word_timestamps"] is True for e in parts)
    words: list[dict] = []
    for part in parts:
        index = part["sentence_index"]
        chunks = [e for e in events if e["type"] == "audio.chunk" and e["sentence_index"] == index]
        audio, last = chunks[:-1], chunks[-1]
        assert audio and all(c["timestamps"] is None and c["audio_b64"] for c in audio)
        assert [c["chunk_id"] for c in audio] == list(range(len(audio)))
        assert part_text(events, index)  # the part's text as spoken (its words: as the client wrote them)
        assert last["audio_b64"] == "" and isinstance(last["timestamps"], list)
        seconds = sum(len(base64.b64decode(c["audio_b64"])) for c in audio) / 2 / 24000
        check_times(last["timestamps"], seconds * 1000, "start_ms", "end_ms")
        done = next(e for e in events if e["type"] == "audio.done" and e["sentence_index"] == index)
        assert events.index(done) > events.index(last)
        words += last["timestamps"]
    assert [w["word"] for w in words] == [w.text for w in written_words(TEXT)]


def part_text(events: list[dict], index: int) -> str:
    return next(e["sentence_text"] for e in events if e["type"] == "audio.done" and e["sentence_index"] == index)


def test_websocket_word_timestamps_need_pcm_chunks(server):
    with open_socket(server) as ws:
        send(ws, type="session.config", voice="vivian", word_timestamps=True, response_format="wav")
        error = event(ws)
    assert error["type"] == "error" and error["param"] == "word_timestamps"


@pytest.mark.parametrize("strategy", ["sync", "async"])
def test_livekit_baseten_word_alignment(server, strategy):
    with open_socket(server) as ws:
        send(
            ws,
            type="session.config",
            voice="vivian",
            timestamp_type="word",
            timestamp_transport_strategy=strategy,
            **PCM,
        )
        send(ws, type="input.text", text=TEXT)
        send(ws, type="input.done")
        events, audio, part = [], {}, None
        while not events or events[-1]["type"] != "session.done":
            message = ws.recv(timeout=120)
            if isinstance(message, bytes):  # audio stays binary in this dialect
                audio[part] = audio.get(part, b"") + message
                continue
            events.append(json.loads(message))
            if events[-1]["type"] == "audio.start":
                part = events[-1]["sentence_index"]
    assert "error" not in [e["type"] for e in events], events
    dones = [e for e in events if e["type"] == "audio.done"]
    if strategy == "sync":
        infos = [(e["sentence_index"], e["timestamp_info"]) for e in dones]
    else:
        assert all("timestamp_info" not in e for e in dones)
        infos = [(e["sentence_index"], e["timestamp_info"]) for e in events if e["type"] == "audio.timestamps"]
    assert [index for index, _ in infos] == [e["sentence_index"] for e in dones]
    words = []
    for index, info in infos:
        alignment = info["word_alignment"]
        seconds = len(audio[index]) / 2 / 24000
        timed = [
            {"word": w, "start": s, "end": e}
            for w, s, e in zip(
                alignment["words"], alignment["word_start_times_seconds"], alignment["word_end_times_seconds"]
            )
        ]
        check_times(timed, seconds)
        words += alignment["words"]
    assert words == [w.text for w in written_words(TEXT)]
