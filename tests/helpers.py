"""Helpers the tests share: a live server with the openai client, audio to send and to
decode, and request plumbing. Fixtures live in conftest.py; this module is imported."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import av
import numpy as np
import pytest
import soundfile as sf

from qwen_tts_api.constants import SAMPLE_RATE as SR
from qwen_tts_api.devtools import BackgroundServer, cpu_settings
from qwen_tts_api.engine.generation.prefill import Prefill

if TYPE_CHECKING:
    import openai

T = TypeVar("T")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., object])

__all__ = [
    "OPENAI_CONTENT_TYPES",
    "capped_copy",
    "SR",
    "LiveServer",
    "cpu_settings",
    "tone",
    "encode_with_pyav",
    "Decoded",
    "decode_audio",
    "opus_head",
    "error_of",
    "recorded_streams",
    "raw_speech_request",
    "hub_cache",
    "serving",
    "tone_wav",
    "batch_sizes",
    "slowed_steps",
    "burst_in_one_step",
    "SERVER_FIXTURES",
    "server_fixture",
    "require_slow_tier",
    "GREEDY_PCM",
]


# A speech request that is greedy and capped: each piece has a known length and the same
# audio alone or beside others.
GREEDY_PCM = {
    "model": "qwen3-tts",
    "voice": "vivian",
    "language": "English",
    "stream": False,
    "response_format": "pcm",
    "temperature": 0,
    "max_new_tokens": 6,
}

# What OpenAI sends for each response_format (written out here, not read from the server).
# Where the model-level tests (equivalence, batching) load their models: a GPU check runs
# them with QWEN_TTS_TEST_DEVICE=cuda:0 (bench/gpu_check.sh); CI runs them on the CPU.
TEST_DEVICE = os.environ.get("QWEN_TTS_TEST_DEVICE", "cpu")

OPENAI_CONTENT_TYPES = {
    "mp3": "audio/mpeg",
    "opus": "audio/opus",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


# ---------- tiers (conftest.py) ----------

SERVER_FIXTURES = {"http", "client"}  # fixtures that start a server (``server_fixture`` adds to it)
slow_tier = threading.local()  # ``allowed``: the running test is in the slow tier (set by conftest.py)


def server_fixture(scope: str = "function", **options: Any) -> Callable[[F], F]:
    """``@pytest.fixture(scope=..., **options)`` for a fixture that starts a server: the tests
    that use it are ``slow``."""

    def fixture(function: F) -> F:
        SERVER_FIXTURES.add(function.__name__)
        return pytest.fixture(scope=scope, **options)(function)  # type: ignore[call-overload]

    return fixture


def require_slow_tier() -> None:
    """Starting a server: the running test must be in the slow tier (else it says how)."""
    if not getattr(slow_tier, "allowed", True):
        raise RuntimeError("this test starts a server: mark it @pytest.mark.slow or use a @server_fixture fixture")


class LiveServer(BackgroundServer):
    def __enter__(self) -> LiveServer:
        require_slow_tier()
        super().__enter__()
        return self

    def openai(self) -> openai.OpenAI:
        import openai  # (imported when a test needs it: it is slow to import)

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="sk-test", max_retries=0, timeout=120)


# ---------- audio helpers ----------


def tone(seconds: float, freq: float, sr: int = SR, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    mono = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


def encode_with_pyav(samples: np.ndarray, sr: int, container: str, codec: str, layout: str = "mono") -> bytes:
    """Write test reference files in formats soundfile cannot (mp3, ogg/opus...)."""
    buf = io.BytesIO()
    with av.open(buf, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=sr, layout=layout)
        data = samples.reshape(1, -1) if samples.ndim == 1 else np.ascontiguousarray(samples).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(data, dtype=np.float32), format="flt", layout=layout)
        frame.sample_rate = sr
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


class Decoded:
    def __init__(self, samples: np.ndarray, rate: int, channels: int, container: str):
        self.samples, self.rate, self.channels, self.container = samples, rate, channels, container

    @property
    def duration(self) -> float:
        return self.samples.shape[-1] / self.rate


def decode_audio(data: bytes, fmt: str | None = None) -> Decoded:
    """Decode any response body the way a player would (pcm needs its known layout)."""
    if fmt == "pcm":
        pcm = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767
        return Decoded(pcm, SR, 1, "pcm")
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        frames = [f.to_ndarray() for f in container.decode(stream)]
        rate = stream.codec_context.sample_rate
        channels = stream.codec_context.channels
        name = container.format.name
    samples = np.concatenate(frames, axis=1)
    return Decoded(samples[0] if samples.shape[0] == 1 else samples, rate, channels, name)


def opus_head(data: bytes) -> tuple[int, int]:
    """(channels, input sample rate) from an Ogg Opus stream's OpusHead packet."""
    at = data.index(b"OpusHead")
    return data[at + 9], int.from_bytes(data[at + 12 : at + 16], "little")


# ---------- request plumbing helpers ----------


def error_of(response) -> dict:
    """The OpenAI error object of a response, after checking the envelope's exact shape."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@contextlib.contextmanager
def recorded_streams(engine) -> Iterator[list]:
    """Collect every SynthesisStream the engine starts while the block runs."""
    streams: list = []
    original = engine.start

    def recording_start(kind, job):
        stream = original(kind, job)
        streams.append(stream)
        return stream

    engine.start = recording_start
    try:
        yield streams
    finally:
        engine.start = original


def raw_speech_request(port: int, body: dict) -> socket.socket:
    """Send a speech request on a plain socket, so a test can drop the connection at will."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(
        b"POST /v1/audio/speech HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def capped_copy(model: Path, directory: Path, frames: int = 20) -> Path:
    """A copy of a demo model that makes at most ``frames`` frames per segment, so long
    input stays fast (random weights never end on their own)."""
    path = directory / f"{model.name}-capped"
    shutil.copytree(model, path)
    config = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**config, "max_new_tokens": frames}))
    return path


# ---------- the Hugging Face cache and the server as its own process ----------


def hub_cache(hf_home: Path, models: dict[str, Path]) -> None:
    """Lay model directories out as the Hugging Face Hub's cache does (``models`` maps repo
    ids to directories), so that ``huggingface_hub`` finds them offline."""
    commit = "0" * 40
    for repo_id, directory in models.items():
        repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
        shutil.copytree(directory, repo / "snapshots" / commit)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)


@contextlib.contextmanager
def serving(env: dict[str, str], *args: str, timeout: float = 300) -> Iterator[str]:
    """``qwen-tts-api serve`` as its own process with ``env`` added; yields its URL once /ready."""
    require_slow_tier()
    import os
    import subprocess
    import sys

    from qwen_tts_api.devtools import free_port, wait_until_ready

    port = free_port()
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN_TTS_", "HF_")) and "MODEL_PATH" not in k}
    proc = subprocess.Popen(
        [sys.executable, "-m", "qwen_tts_api.cli", "serve", *args],
        env={**clean, "HOST": "127.0.0.1", "PORT": str(port), **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(proc, url, timeout)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def tone_wav(seconds: float, freq: float) -> bytes:
    """A tone as the bytes of a wav file (reference audio to upload)."""
    buf = io.BytesIO()
    sf.write(buf, tone(seconds, freq), SR, format="WAV")
    return buf.getvalue()


@contextlib.contextmanager
def batch_sizes(engine) -> Iterator[list[int]]:
    """The rows of every step the engine makes meanwhile (beside its other step observers)."""
    sizes: list[int] = []
    remove = engine.add_step_observer(lambda step: sizes.append(step.rows))
    try:
        yield sizes
    finally:
        remove()


@contextlib.contextmanager
def slowed_steps(engine, seconds: float) -> Iterator[None]:
    """Each generation step lasts ``seconds`` longer meanwhile (a pause on the scheduler
    thread after the real step): a request then lasts long enough to watch on any machine."""
    import time

    remove = engine.add_step_observer(lambda _step: time.sleep(seconds))
    try:
        yield
    finally:
        remove()


def burst_in_one_step(monkeypatch, ask: Callable[[T], R], items: list[T]) -> list[R]:
    """``ask(item)`` for every item, each from its own thread, with the first request's
    prefill held until the others have been sent: they reach the scheduler during it and
    join its step, so the whole burst starts at one step on any machine."""

    prefilling, arrived = threading.Event(), threading.Event()
    original = Prefill.run

    def held_first_prefill(prefill) -> None:
        if not prefilling.is_set():
            prefilling.set()
            arrived.wait(30)
            time.sleep(0.3)  # their requests reach the scheduler's inbox
        original(prefill)

    monkeypatch.setattr(Prefill, "run", held_first_prefill)
    with ThreadPoolExecutor(len(items)) as pool:
        first = pool.submit(ask, items[0])
        assert prefilling.wait(60)
        later = [pool.submit(ask, item) for item in items[1:]]
        time.sleep(0.5)  # sent while the first prefill is held
        arrived.set()
        return [first.result(), *(f.result() for f in later)]


def first_fast(cases: list) -> list:
    """Parametrize cases whose first one stays in the fast tier and the others are ``slow``
    (each runs the package's own generation for seconds)."""
    return [
        cases[0],
        *(pytest.param(*(c if isinstance(c, tuple) else (c,)), marks=pytest.mark.slow) for c in cases[1:]),
    ]
