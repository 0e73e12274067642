"""Turns an engine stream into HTTP bodies: chunked audio or Server-Sent Events.

Speed and encoding run per chunk off the event loop. Whatever ends the body early (the
client going away, an error) cancels generation, which frees the worker.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi import Request

from ..audio.encode import AudioEncoder, make_encoder
from ..audio.tempo import TempoFilter
from ..engine.admission import SynthesisTimeout
from ..engine.synthesis import SynthesisStream

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected before the response started."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_ready(request: Request, work: asyncio.Future | asyncio.Task, stream: SynthesisStream):
    """Await ``work`` until the stream's deadline; if the client disconnects first, cancel
    the stream and raise ClientGone (a queued request then never starts)."""
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        remaining = max(0.0, stream.deadline - time.monotonic())
        done, _ = await asyncio.wait({work, watcher}, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work not in done:
        stream.cancel()
        work.cancel()
        if watcher in done:
            raise ClientGone
        raise SynthesisTimeout
    return work.result()


class ChunkRenderer:
    """Applies ``speed`` and encodes, one chunk at a time."""

    def __init__(self, fmt: str, speed: float):
        self.encoder: AudioEncoder = make_encoder(fmt)
        self.tempo = TempoFilter(speed) if abs(speed - 1.0) > 1e-6 else None

    def render(self, audio: np.ndarray) -> bytes:
        if self.tempo is not None:
            audio = self.tempo.process(audio)
        return self.encoder.encode(audio)

    def finish(self) -> bytes:
        tail = self.encoder.encode(self.tempo.flush()) if self.tempo is not None else b""
        return tail + self.encoder.finish()


async def _encoded(first: np.ndarray | None, rest: AsyncIterator[np.ndarray], fmt: str, speed: float):
    renderer = ChunkRenderer(fmt, speed)
    if first is not None:
        yield await asyncio.to_thread(renderer.render, first)
        async for chunk in rest:
            yield await asyncio.to_thread(renderer.render, chunk)
    yield await asyncio.to_thread(renderer.finish)


async def audio_body(first, rest, stream: SynthesisStream, fmt: str, speed: float) -> AsyncIterator[bytes]:
    try:
        async for data in _encoded(first, rest, fmt, speed):
            if data:
                yield data
    except Exception:
        log.exception("synthesis failed mid-stream")
        raise
    finally:
        stream.cancel()


def _event(payload: dict) -> bytes:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n".encode()


async def sse_body(first, rest, stream: SynthesisStream, fmt: str, speed: float) -> AsyncIterator[bytes]:
    try:
        async for data in _encoded(first, rest, fmt, speed):
            if data:
                yield _event({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode("ascii")})
        usage = stream.usage
        yield _event({"type": "speech.audio.done", "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_frames,
            "total_tokens": usage.input_tokens + usage.output_frames,
        }})
    except Exception:
        log.exception("synthesis failed mid-stream")
        yield _event({"type": "error", "error": {"message": "The server had an error while generating audio",
                                                  "type": "server_error", "param": None, "code": None}})
    finally:
        stream.cancel()
