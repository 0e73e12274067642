"""What a live session sends for each part of a turn (``live.py``): ``audio.start``; its audio
as binary PCM frames while it is made (``stream_audio``), as one body in
``response_format`` when it ends, or as vLLM-Omni's JSON ``audio.chunk`` messages
(``word_timestamps``); its words when asked (``word_timings.py``): vLLM-Omni's last
``audio.chunk``, LiveKit's Baseten ``timestamp_info`` in ``audio.done`` ("sync") or an
``audio.timestamps`` message ("async"); then ``audio.done``.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

import numpy as np
from pydantic import BaseModel

from ..audio.render import Renderer
from ..engine.runtime.stream import PartEnded, PartStarted
from .live_turns import Turn
from .protocol import (
    LiveAudioChunk,
    LiveAudioDone,
    LiveAudioStart,
    LiveAudioTimestamps,
    LiveSessionConfig,
    TimestampInfo,
    WordTimestamp,
)
from .timing_protocol import timestamp_info, vllm_words
from .word_timings import SegmentTimings


class PartSender:
    def __init__(
        self,
        config: LiveSessionConfig,
        turn: Turn,
        send: Callable[[BaseModel], Awaitable[None]],
        send_bytes: Callable[[bytes], Awaitable[None]],
    ):
        self.config, self.turn = config, turn
        self._send, self._send_bytes = send, send_bytes
        self._pcm = Renderer("pcm", 1.0, config.output_rate)
        self.in_json = config.word_timestamps  # vLLM-Omni's: audio as audio.chunk messages
        # Words ride the part's end (vLLM-Omni's last chunk, or "sync"), else they go when timed.
        self.synchronous = self.in_json or config.timestamp_transport_strategy == "sync"
        self.part: PartStarted | None = None  # the part being sent
        self._held: list[np.ndarray] = []  # its audio, when it is sent whole
        self._sent = 0  # its audio bytes
        self._chunks = 0  # its audio.chunk messages
        self._timings: SegmentTimings | None = None  # its words, for its audio.done

    async def take(self, item: object) -> None:
        if isinstance(item, PartStarted):
            await self._started(item)
        elif isinstance(item, SegmentTimings):
            await self._timed(item)
        elif isinstance(item, PartEnded):
            await self._ended(item)
        elif isinstance(item, np.ndarray):
            await self._audio(item)

    async def _started(self, part: PartStarted) -> None:
        self.part, self._held, self._sent, self._chunks, self._timings = part, [], 0, 0, None
        self.turn.parts += 1
        start = LiveAudioStart(
            utterance_index=self.turn.index,
            sentence_index=part.index,
            sentence_text=part.text,
            format=self.config.response_format,
            sample_rate=self.config.output_rate,
            word_timestamps=True if self.in_json else None,
        )
        await self._send(start)

    async def _audio(self, audio: np.ndarray) -> None:
        record = self.turn.record
        if record.first_byte is None:
            record.first_byte = time.monotonic()
        if not self.config.stream_audio:
            self._held.append(audio)
            return
        data = await asyncio.to_thread(self._pcm.chunk, audio)
        if self.in_json:
            if data and self.part is not None:
                await self._send(self._chunk(self.part.index, data))
        else:
            await self._send_bytes(data)
        self._sent += len(data)

    async def _timed(self, timings: SegmentTimings) -> None:
        if self.in_json:
            words = vllm_words(timings.words, timings.offset)
            await self._send(self._chunk(timings.index, b"", words, timings.estimated))
        elif self.synchronous:
            self._timings = timings
        else:
            info = timestamp_info(timings.words, timings.offset, timings.estimated)
            index = timings.index
            await self._send(
                LiveAudioTimestamps(utterance_index=self.turn.index, sentence_index=index, timestamp_info=info)
            )

    async def _ended(self, ended: PartEnded) -> None:
        config = self.config
        if not config.stream_audio and self._held:
            whole = Renderer(config.response_format, config.speed, config.output_rate).whole
            body = await asyncio.to_thread(whole, np.concatenate(self._held))
            await self._send_bytes(body)
            self._sent += len(body)
        timings, self.part = self._timings, None
        info = None if timings is None else timestamp_info(timings.words, timings.offset, timings.estimated)
        await self._done(ended.index, ended.text, info)

    async def failed(self) -> None:
        """The turn failed: the part being sent ends with ``error``."""
        if self.part is not None:
            await self._done(self.part.index, self.part.text, error=True)

    async def _done(self, index: int, text: str, info: TimestampInfo | None = None, error: bool = False) -> None:
        done = LiveAudioDone(
            utterance_index=self.turn.index,
            sentence_index=index,
            sentence_text=text,
            total_bytes=self._sent,
            error=error,
            timestamp_info=info,
        )
        await self._send(done)

    def _chunk(
        self, index: int, data: bytes, words: list[WordTimestamp] | None = None, estimated: bool | None = None
    ) -> LiveAudioChunk:
        chunk_id = self._chunks
        self._chunks += bool(data)
        return LiveAudioChunk(
            utterance_index=self.turn.index,
            sentence_index=index,
            chunk_id=chunk_id,
            audio_b64=base64.b64encode(data).decode("ascii"),
            timestamps=words,
            estimated=estimated,
        )
