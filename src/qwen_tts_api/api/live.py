"""``WS /v1/audio/speech/stream``: text streamed in (a voice agent's language model, token
by token), speech streamed out while the text is still arriving.

The wire protocol is vLLM-Omni's for Qwen3-TTS (what LiveKit's Baseten plugin speaks):
``session.config`` (sticky), ``input.text`` fragments, ``input.done`` (a flush that keeps
the socket open), ``session.close``; the server answers ``audio.start``, binary audio,
``audio.done`` per part, ``session.done`` per flush, and ``error``. Unlike vLLM-Omni, a
turn does not wait for sentence ends: its first part starts at the first clause and reads
the rest as it arrives (``engine/runtime/live_turn.py``). One turn is one engine request: it takes a
place in the queue (or a ``server_busy`` error), is logged and measured when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterable, Callable

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel

from ..engine.errors import EngineBusy, EngineUnavailable, GenerationError, SynthesisTimeout
from ..engine.runtime.jobs import SamplingChoice, SpeechJob
from ..engine.runtime.stream import PartEnded, SynthesisStream
from ..telemetry.middleware import report
from ..telemetry.record import RequestRecord
from ..text.echo import loggable, quoted
from ..text.markup import is_ssml
from ..text.prepare import PreparedText
from ..voices.store import CallerVoices
from .errors import APIError, engine_error
from .live_messages import MESSAGE_TOO_BIG, Refusal, read_message, validated
from .live_parts import PartSender
from .live_turns import MAX_TURN_CHARS, MAX_WAITING_TURNS, Turn, TurnQueue
from .protocol import (
    LiveError,
    LiveInputText,
    LiveSessionConfig,
    LiveSessionDone,
    SpeechUsage,
    json_text,
)
from .speech import speakable_input
from .state import ServerState, StateDep, VoicesDep
from .voice_plan import VoiceAsk, VoicePlan, plan_voice
from .word_timings import SegmentWords, WordTimer, display_text, part_words, plan_words, with_timings

ROUTE = "/v1/audio/speech/stream"
# Turns sent while one is speaking wait for it, their text counted against MAX_TURN_CHARS too.

router = APIRouter()
log = logging.getLogger(__name__)


@router.websocket(ROUTE)
async def speech_stream(websocket: WebSocket, state: StateDep, voices: VoicesDep) -> None:
    await websocket.accept()
    await LiveSession(websocket, state, voices).run()


class _Closed(Exception):
    """The session is over (closed by us, or the client left)."""


class LiveSession:
    def __init__(self, websocket: WebSocket, state: ServerState, voices: CallerVoices):
        self.ws = websocket
        self.engine, self.settings = state.require_engine(), state.settings
        self.store, self.metrics = voices, state.metrics
        self.aligner = state.aligner
        self.config: LiveSessionConfig | None = None
        self.voice: VoicePlan | None = None
        self.turn: Turn | None = None
        self.queued = TurnQueue()
        self.utterances = 0

    async def run(self) -> None:
        try:
            while True:
                await self._handle(await self._receive())
        except (_Closed, WebSocketDisconnect):
            pass
        finally:
            if self.turn is not None:  # barge-in: the client left (or timed out) mid-turn
                self.turn.cancel()

    # --- receiving ---
    async def _receive(self) -> dict:
        while True:
            configured = self.config is not None
            timeout = self.settings.ws_idle_timeout_seconds if configured else self.settings.ws_config_timeout_seconds
            try:
                message = await asyncio.wait_for(self.ws.receive(), timeout)
            except TimeoutError:
                turn = self.turn
                if turn is not None and turn.flushed and not turn.ended:
                    continue  # still speaking what it was sent: not idle
                reason = (
                    f"idle for {timeout:g} s"
                    if configured
                    else f"no session.config within {timeout:g} s (send it first)"
                )
                await self._close_with("timeout", reason)
            if message["type"] == "websocket.disconnect":
                raise _Closed
            data = read_message(message, self.settings.ws_max_message_bytes)
            if not isinstance(data, Refusal):
                return data
            if data.close:
                await self._close_with(data.code, data.message, MESSAGE_TOO_BIG)
            await self._refusal(data)

    async def _handle(self, message: dict) -> None:
        kind = message.get("type")
        if kind == "session.config":
            await self._configure(message)
        elif kind not in ("input.text", "input.done", "session.close"):
            await self._error(f"unknown message type {quoted(kind)}", "unknown_type", "type")
        elif self.config is None:
            await self._error(f"send session.config before {kind}", "session_not_configured", "type")
        elif kind == "input.text":
            await self._text(message)
        elif kind == "input.done":
            await self._flush()
        else:  # session.close: speak what was sent, then close
            if self.turn is not None:
                await self._flush()
            while self.turn is not None and self.turn.pump is not None:
                await asyncio.shield(self.turn.pump)
            await self.ws.close(1000, "session.close")
            raise _Closed

    async def _configure(self, message: dict) -> None:
        if self.turn is not None:
            await self._error(
                "session.config cannot change a turn in progress: send input.done first", "turn_in_progress", "type"
            )
            return
        config = validated(LiveSessionConfig, message)
        if isinstance(config, Refusal):
            await self._refusal(config)
            return
        ask = VoiceAsk(
            voice=config.voice,
            language=config.language,
            instructions=config.instructions,
            audio_sample=config.ref_audio,
            audio_sample_text=None if config.x_vector_only_mode else config.ref_text,
            task_type=config.task_type,
            model=config.model,
            voice_given="voice" in config.model_fields_set,
            param={"audio_sample": "ref_audio", "audio_sample_text": "ref_text"},
        )
        try:
            voice = await plan_voice(ask, self.engine, self.settings, self.store)
        except APIError as exc:
            await self._error(exc.message, exc.code or "invalid_value", exc.param)
            return
        self.config, self.voice = config, voice

    async def _text(self, message: dict) -> None:
        fragment = validated(LiveInputText, message, unknown_code="invalid_value")
        if isinstance(fragment, Refusal):
            await self._refusal(fragment)
            return
        text = fragment.text
        if not text:
            return
        if self.queued or (self.turn is not None and self.turn.flushed):
            # The next turn, sent while this one is still speaking: it starts when this one ends.
            if not self.queued.fits(text):
                await self._error(
                    f"the turns waiting for the one being spoken hold at most {MAX_TURN_CHARS} characters",
                    "input_too_long",
                    "text",
                )
                return
            if self.queued.open or await self._room_to_wait():
                self.queued.add_text(text)
            return
        await self._append(text)

    async def _room_to_wait(self) -> bool:
        """Whether another turn may wait for the one being spoken (else an ``error`` says not)."""
        if self.queued.has_room:
            return True
        await self._error(
            f"at most {MAX_WAITING_TURNS} turns may wait for the one being spoken; wait for its session.done",
            "too_many_turns",
        )
        return False

    async def _append(self, text: str) -> None:
        turn = self.turn or self._start_turn(text)
        if turn.live is None and turn.ssml is None:
            return  # the turn was refused or failed: its text is dropped until input.done
        if turn.chars + len(text) > MAX_TURN_CHARS:
            await self._error(f"a turn holds at most {MAX_TURN_CHARS} characters", "input_too_long", "text")
            return
        turn.chars += len(text)
        turn.record.input_chars = turn.chars
        if turn.ssml is not None:
            turn.ssml.append(text)
        elif turn.live is not None:
            turn.live.append(text)

    @property
    def _normalize(self) -> bool:
        config = self.config
        assert config is not None
        return self.settings.normalize if config.normalize is None else config.normalize

    def _job(self, text: PreparedText, **extra) -> SpeechJob:
        config, voice = self.config, self.voice
        assert config is not None and voice is not None
        return voice.job(
            text,
            max_frames=config.max_new_tokens,
            first_chunk_frames=config.initial_codec_chunk_frames or None,
            sampling=SamplingChoice(**config.sampling_choice()),
            **extra,
        )

    def _start_turn(self, first: str) -> Turn:
        config, voice = self.config, self.voice
        assert config is not None and voice is not None
        record = RequestRecord(request_id=uuid.uuid4().hex, method="WEBSOCKET", path=ROUTE, route=ROUTE)
        record.model, record.voice_kind = voice.model.name, voice.voice_kind
        record.response_format, record.speed, record.input_chars = config.response_format, config.speed, 0
        turn = self.turn = Turn(self.utterances, record)
        if is_ssml(first):  # read whole at input.done (a document cannot be spoken before it is complete)
            turn.ssml = []
            return turn
        live = self.engine.live_text()
        job = self._job(PreparedText("", ()), live=live, normalize=self._normalize)
        self._run(turn, lambda: self.engine.start_live(voice.kind, job))
        if turn.stream is not None:
            turn.live = live
        return turn

    def _run(self, turn: Turn, start: Callable[[], SynthesisStream]) -> None:
        """Start the turn's engine request and its pump (or the refusal, when busy)."""
        try:
            turn.stream = start()
        except (EngineBusy, EngineUnavailable) as exc:
            turn.end()
            turn.pump = asyncio.ensure_future(self._refused(turn, exc))
            return
        turn.record.stream = turn.stream
        turn.pump = asyncio.ensure_future(self._pump(turn))

    async def _start_ssml(self, turn: Turn) -> None:
        """An SSML turn, complete: read, prepared like ``/v1/audio/speech``'s input, and spoken
        as one request whose segments are the turn's parts."""
        config, voice = self.config, self.voice
        assert config is not None and voice is not None and turn.ssml is not None
        document, turn.ssml = "".join(turn.ssml), None
        try:
            prepared, markup = speakable_input(
                voice.model, document, config.language, self._normalize, config.speed, param="text"
            )
        except APIError as exc:
            turn.end()
            turn.record.status = exc.status
            await self._error(exc.message, exc.code or "invalid_markup", exc.param)
            return
        if markup.ignored:
            log.info("SSML turn: kept as text only: %s", loggable(", ".join(markup.ignored)))
        job = self._job(prepared, announce_parts=True)
        if config.timed:
            turn.words = plan_words(display_text(markup), prepared.segments)
        self._run(turn, lambda: self.engine.start(voice.kind, job))

    async def _flush(self) -> None:
        if self.queued or (self.turn is not None and self.turn.flushed):
            if self.queued.open or await self._room_to_wait():
                self.queued.flush()
            return
        await self._flush_current()

    async def _flush_current(self) -> None:
        turn = self.turn
        if turn is None:  # nothing pending: a keep-alive
            await self._send(LiveSessionDone(utterance_index=self.utterances, total_sentences=0))
            self.utterances += 1
            return
        turn.flush()
        if turn.ssml is not None:
            await self._start_ssml(turn)
        if turn.live is not None and not turn.ended:
            turn.live.finish()
        await self._end_turn_if_done(turn)

    # --- sending ---
    async def _pump(self, turn: Turn) -> None:
        """The turn's audio, part by part, until its stream ends; then its session.done."""
        try:
            await self._speak(turn)
            await self._end_turn_if_done(turn)
        except _Closed:  # the client is gone: the turn was cancelled
            pass

    def _timer(self, turn: Turn) -> WordTimer:
        """Times the turn's parts: an SSML turn's from its planned segments, a live part's from
        its text as spoken."""
        config = self.config
        assert config is not None
        words = turn.words

        def words_of(ended: PartEnded) -> SegmentWords:
            return words[ended.index] if words is not None else part_words(ended)

        return WordTimer(words_of, self.aligner, config.speed)

    async def _speak(self, turn: Turn) -> None:
        config = self.config
        assert config is not None and turn.stream is not None
        record = turn.record
        sender = PartSender(config, turn, self._send, self.ws.send_bytes)
        items: AsyncIterable = turn.stream
        if config.timed:
            items = with_timings(turn.stream, self._timer(turn), markers=True, hold_ends=sender.synchronous)
        try:
            async for item in items:
                await sender.take(item)
            record.status = 499 if turn.abandoned else 200
        except (GenerationError, SynthesisTimeout, EngineUnavailable) as exc:
            failure = engine_error(exc, self.settings.request_timeout_seconds)
            record.status = failure.status
            await sender.failed()
            await self._error(failure.message, failure.code or "generation_failed")
        except Exception:  # the socket is gone (barge-in): stop generating
            turn.cancel()
            record.status = 499
            raise _Closed from None
        finally:
            turn.end()
            record.ended = time.monotonic()
            report(record, self.metrics)

    async def _refused(self, turn: Turn, exc: EngineBusy | EngineUnavailable) -> None:
        with contextlib.suppress(_Closed):
            await self._refuse(turn, exc)

    async def _refuse(self, turn: Turn, exc: EngineBusy | EngineUnavailable) -> None:
        failure = engine_error(exc, self.settings.request_timeout_seconds)
        turn.record.status = failure.status
        retry_after = exc.retry_after if isinstance(exc, EngineBusy) else None
        await self._error(failure.message, failure.code or "server_error", retry_after=retry_after)
        turn.record.ended = time.monotonic()
        report(turn.record, self.metrics)
        await self._end_turn_if_done(turn)

    async def _end_turn_if_done(self, turn: Turn) -> None:
        """``session.done`` once the turn is both flushed and spoken (in either order)."""
        if self.turn is not turn or not (turn.flushed and turn.ended):
            return
        self.turn = None
        self.utterances += 1
        usage = None
        if turn.stream is not None:
            used = turn.stream.usage
            total = used.input_tokens + used.output_frames
            usage = SpeechUsage(input_tokens=used.input_tokens, output_tokens=used.output_frames, total_tokens=total)
        await self._send(LiveSessionDone(utterance_index=turn.index, total_sentences=turn.parts, usage=usage))
        if self.queued:
            queued = self.queued.pop()
            for fragment in queued.fragments:
                await self._append(fragment)
            if queued.flushed:
                await self._flush_current()

    async def _refusal(self, refusal: Refusal) -> None:
        await self._error(refusal.message, refusal.code, refusal.param)

    async def _error(self, message: str, code: str, param: str | None = None, retry_after: int | None = None) -> None:
        await self._send(LiveError(message=message, code=code, param=param, retry_after=retry_after))

    async def _send(self, event: BaseModel) -> None:
        try:
            await self.ws.send_text(json_text(event))
        except Exception as exc:  # the client is gone
            raise _Closed from exc

    async def _close_with(self, code: str, reason: str, close_code: int = 1000) -> None:
        await self._error(f"closing the socket: {reason}", code)
        with contextlib.suppress(Exception):  # the client may be gone already
            await self.ws.close(close_code, reason[:120])  # a close reason holds at most 123 bytes
        raise _Closed
