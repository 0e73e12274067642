"""Runs the app on a loopback port in a background thread: for tests and benchmarks."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import tempfile
import threading
import time
from typing import Any

import uvicorn

from ..app import create_app, server_options
from ..settings import Settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_ready(proc: subprocess.Popen, url: str, timeout: float) -> None:
    """Until the server process at ``url`` answers /ready (loaded and warmed up); raises if it
    exits first (with the end of its stderr, when piped) or takes longer than ``timeout``."""
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            said = proc.stderr.read()[-2000:] if proc.stderr is not None else ""
            raise RuntimeError(f"server exited during start-up ({proc.returncode}) {said}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(f"server did not become ready within {timeout:g} s")
        time.sleep(0.5)


def cpu_settings(**overrides) -> Settings:
    """CPU settings that do not depend on the environment they run in."""
    values: dict[str, Any] = dict(
        device="cpu",
        dtype="float32",
        codec_dtype="float32",
        attn="",
        customvoice_model_path=None,
        aligner_model_path=None,
        base_model_path=None,
        voicedesign_model_path=None,
        audio_sample_dirs=[],
        allow_private_urls=False,
    )
    values.update(overrides)
    if "data_dir" not in values:  # never the user's own saved voices
        values["data_dir"] = tempfile.mkdtemp(prefix="qwen-tts-data-")
    return Settings(**values)


class BackgroundServer:
    """A real uvicorn server for ``settings`` on a free loopback port."""

    def __init__(self, settings: Settings):
        self.port = free_port()
        self.app = create_app(settings)
        options = server_options(settings)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning", **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self.thread.start()
        deadline = time.monotonic() + 600
        # Started, then warmed up (as a load balancer would wait for /ready), so the warm-up
        # synthesis never competes with what a test measures.
        readiness = self.app.state.server.readiness
        while not (self.server.started and (readiness.ready or readiness.error)):
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
