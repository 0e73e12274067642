"""Turns an engine stream into HTTP bodies: chunked audio or Server-Sent Events.

Speed and encoding run per chunk off the event loop. Whatever ends the body early (the
client going away, an error) cancels generation, which frees the worker.
"""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

import numpy as np
from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from starlette.types import Send

from ..audio.render import Renderer
from ..constants import SAMPLE_RATE
from ..engine.errors import GenerationError, SynthesisTimeout
from ..engine.runtime.stream import SynthesisStream
from ..settings import Settings
from .errors import timeout_error
from .protocol import (
    ErrorDetail,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechAudioTimestamps,
    SpeechStreamError,
    SpeechUsage,
)
from .timing_protocol import our_words
from .word_timings import SegmentTimings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClientGone(Exception):
    """The client disconnected before the response started."""


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def until_ready(request: Request, work: asyncio.Future | asyncio.Task, stream: SynthesisStream):
    """Await ``work``; if the client disconnects first, cancel the stream and raise ClientGone
    (a queued request then never starts). The deadline is the engine's: a request out of
    time ends its stream with SynthesisTimeout, which ``work`` raises."""
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if work not in done:
        stream.cancel()
        work.cancel()
        raise ClientGone
    return work.result()


async def awaited(request: Request, work: Awaitable[T], stream: SynthesisStream, settings: Settings) -> T:
    """``work`` (the first audio, or a whole response) as a route awaits it: a client that
    left raises ClientGone (the route answers 499), one out of time is a 504, and anything
    else that goes wrong cancels the stream."""
    try:
        return await until_ready(request, asyncio.ensure_future(work), stream)
    except ClientGone:
        raise
    except SynthesisTimeout as exc:
        raise timeout_error(settings) from exc
    except BaseException:
        stream.cancel()
        raise


class SpeechStreamingResponse(StreamingResponse):
    """A streamed body that is closed as soon as the response ends, early or not: a client
    that left, or one that stopped reading (api/limits.py), stops its generation at once,
    not when the abandoned body happens to be collected."""

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            close = getattr(self.body_iterator, "aclose", None)
            if close is not None:
                await close()


async def _encoded(first: object, rest: AsyncIterator, fmt: str, speed: float, rate: int):
    """Each audio chunk's bytes; word timings (``SegmentTimings``) pass through."""
    renderer = Renderer(fmt, speed, rate)

    async def one(item: object):
        return await asyncio.to_thread(renderer.chunk, item) if isinstance(item, np.ndarray) else item

    if first is not None:
        yield await one(first)
        async for item in rest:
            yield await one(item)
    yield await asyncio.to_thread(renderer.finish)


async def audio_body(
    first, rest, stream: SynthesisStream, fmt: str, speed: float, rate: int = SAMPLE_RATE
) -> AsyncIterator[bytes]:
    try:
        async for data in _encoded(first, rest, fmt, speed, rate):
            if isinstance(data, bytes) and data:
                yield data
    except Exception:
        log.exception("synthesis failed mid-stream")
        raise
    finally:
        stream.cancel()


def _event(payload: BaseModel) -> bytes:
    return f"data: {payload.model_dump_json()}\n\n".encode()


async def sse_body(
    first, rest, stream: SynthesisStream, fmt: str, speed: float, rate: int = SAMPLE_RATE
) -> AsyncIterator[bytes]:
    try:
        async for data in _encoded(first, rest, fmt, speed, rate):
            if isinstance(data, SegmentTimings):
                words = our_words(data.words)
                yield _event(SpeechAudioTimestamps(segment_index=data.index, words=words, estimated=data.estimated))
            elif data:
                yield _event(SpeechAudioDelta(audio=base64.b64encode(data).decode("ascii")))
        usage = stream.usage
        total = usage.input_tokens + usage.output_frames
        yield _event(
            SpeechAudioDone(
                usage=SpeechUsage(
                    input_tokens=usage.input_tokens, output_tokens=usage.output_frames, total_tokens=total
                )
            )
        )
    except Exception as exc:
        log.exception("synthesis failed mid-stream")
        message = str(exc) if isinstance(exc, GenerationError) else "The server had an error while generating audio"
        code = "generation_failed" if isinstance(exc, GenerationError) else None
        yield _event(SpeechStreamError(error=ErrorDetail(message=message, type="server_error", code=code)))
    finally:
        stream.cancel()
