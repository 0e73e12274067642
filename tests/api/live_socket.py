"""A real WebSocket client for ``WS /v1/audio/speech/stream`` (``websockets``): open a
socket, send messages, read events and audio until a turn is done, and check a turn's events."""

from __future__ import annotations

import json
import time

import numpy as np
from helpers import SR, LiveServer
from websockets.sync.client import connect

ROUTE = "/v1/audio/speech/stream"
SAMPLES_PER_FRAME = 1920
FRAMES = 24  # max_new_tokens per part: the demo models never end on their own
PCM = {"response_format": "pcm", "stream_audio": True, "language": "English", "max_new_tokens": FRAMES}
TEXT = "Hello there, this is a voice agent speaking. It reads what arrives."


def open_socket(server: LiveServer, headers: dict | None = None):
    url = server.url.replace("http://", "ws://") + ROUTE
    return connect(url, additional_headers=headers, max_size=None, open_timeout=30)


def send(ws, **message) -> None:
    ws.send(json.dumps(message))


def event(ws, timeout: float = 60) -> dict:
    """The next JSON event (binary audio frames are not expected here)."""
    message = ws.recv(timeout=timeout)
    assert isinstance(message, str), "expected a JSON event, got audio"
    return json.loads(message)


def until_done(ws, timeout: float = 120, part: int | None = None) -> tuple[list[dict], dict[int, bytes]]:
    """Events and each part's audio up to (and with) the next session.done (``part``: the
    part whose audio.start was already read)."""
    events: list[dict] = []
    audio: dict[int, bytes] = {} if part is None else {part: b""}
    deadline = time.monotonic() + timeout
    while True:
        message = ws.recv(timeout=max(0.1, deadline - time.monotonic()))
        if isinstance(message, bytes):
            assert part is not None, "audio outside audio.start / audio.done"
            audio[part] = audio.get(part, b"") + message
            continue
        events.append(json.loads(message))
        kind = events[-1]["type"]
        if kind == "audio.start":
            part = events[-1]["sentence_index"]
        elif kind == "audio.done":
            part = None
        elif kind == "session.done":
            return events, audio


def speak(ws, fragments: list[str], pause: float = 0.0, part: int | None = None) -> tuple[list[dict], dict[int, bytes]]:
    for fragment in fragments:
        send(ws, type="input.text", text=fragment)
        if pause:
            time.sleep(pause)
    send(ws, type="input.done")
    return until_done(ws, part=part)


def words(text: str) -> list[str]:
    return [w + " " for w in text.split()]


def halves(text: str) -> list[str]:
    """Fragments smaller than words: each word cut in two."""
    out = []
    for word in words(text):
        cut = max(1, len(word) // 2)
        out += [word[:cut], word[cut:]]
    return out


def check_turn(events: list[dict], audio: dict[int, bytes], utterance: int = 0) -> None:
    """Parts come as audio.start, audio, audio.done; the PCM is whole frames; session.done
    counts the parts and its usage counts the frames that were sent."""
    kinds = [e["type"] for e in events]
    assert "error" not in kinds, events
    starts = [e for e in events if e["type"] == "audio.start"]
    dones = [e for e in events if e["type"] == "audio.done"]
    assert [e["sentence_index"] for e in starts] == [e["sentence_index"] for e in dones] == list(range(len(starts)))
    assert all(e["sample_rate"] == SR and e["channels"] == 1 and e["format"] == "pcm" for e in starts)
    assert all(e["utterance_index"] == utterance for e in starts + dones)
    assert all(not e["error"] and e["total_bytes"] == len(audio[e["sentence_index"]]) for e in dones)
    done = events[-1]
    assert done["type"] == "session.done" and done["utterance_index"] == utterance
    assert done["total_sentences"] == len(starts) >= 1
    assert sum(len(a) for a in audio.values()) == done["usage"]["output_tokens"] * SAMPLES_PER_FRAME * 2


def pcm(audio: dict[int, bytes]) -> np.ndarray:
    return np.frombuffer(b"".join(audio[i] for i in sorted(audio)), dtype="<i2")


# ---------- turns ----------
