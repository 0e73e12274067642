"""The inference worker: one request in, an async stream of 24 kHz audio chunks out.

All model work runs on one dedicated thread, never on the event loop, so the HTTP server
(and `/health`) stays responsive. Text is generated segment by segment; each segment's
frames are decoded in chunks as they appear. A request can be cancelled between any two
frames, which frees the worker for the next one.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..text.budget import frame_budget
from ..text.segment import split_text
from .admission import Admission, SynthesisTimeout
from .decoding import StreamingDecoder
from .generation import FrameGenerator
from .joining import SegmentJoiner
from .loading import LoadedModel
from .prompt import build_prompt
from .sampling import SamplingParams

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class ReferenceAudio:
    """Decoded reference audio for cloning: mono float32 at 24 kHz."""

    waveform: np.ndarray
    transcript: str | None = None


@dataclass(frozen=True)
class SpeechJob:
    text: str
    language: str  # as the model names it, e.g. "English" or "Auto"
    speaker: str | None = None  # CustomVoice
    instructions: str | None = None  # CustomVoice; callers drop it for 0.6B models
    reference: ReferenceAudio | None = None  # Base


@dataclass(frozen=True)
class EngineConfig:
    first_chunk_frames: int = 3
    max_chunk_frames: int = 48
    max_queue: int = 16  # requests waiting beyond the one running
    request_timeout: float = 300.0  # seconds from admission to the last audio

    @classmethod
    def from_settings(cls, settings) -> "EngineConfig":
        return cls(settings.stream_first_frames, settings.stream_max_chunk_frames, settings.max_queue,
                   settings.request_timeout_seconds)


@dataclass
class Usage:
    input_tokens: int = 0
    output_frames: int = 0


_END = object()


class SynthesisStream:
    """Audio chunks of one request, handed from the worker thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float):
        self._loop = loop
        self._queue: asyncio.Queue = asyncio.Queue()
        self._cancelled = threading.Event()
        self.deadline = time.monotonic() + timeout
        self.started = False  # set when the worker takes it up
        self.usage = Usage()

    # --- worker side ---
    def emit(self, item: object) -> None:
        self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    @property
    def expired(self) -> bool:
        return time.monotonic() > self.deadline

    def should_stop(self) -> bool:
        return self.cancelled or self.expired

    # --- event-loop side ---
    def cancel(self) -> None:
        """Stop generating after the current frame (or never start, if still queued)."""
        self._cancelled.set()

    async def __aiter__(self) -> AsyncIterator[np.ndarray]:
        while True:
            item = await self._queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    async def collect(self) -> np.ndarray:
        parts = [chunk async for chunk in self]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)


class Engine:
    """Owns the loaded models, the single inference thread and admission control."""

    def __init__(self, models: dict[str, LoadedModel], config: EngineConfig | None = None):
        self.models = models
        self.config = config or EngineConfig()
        self.admission = Admission(self.config.max_queue, workers=1)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-tts-infer")

    def model(self, kind: str) -> LoadedModel | None:
        return self.models.get(kind)

    def start(self, kind: str, job: SpeechJob) -> SynthesisStream:
        """Queue a request; raises EngineBusy when the queue is full."""
        self.admission.admit()
        stream = SynthesisStream(asyncio.get_running_loop(), self.config.request_timeout)
        self._executor.submit(self._run, kind, job, stream)
        return stream

    def _run(self, kind: str, job: SpeechJob, stream: SynthesisStream) -> None:
        began = None
        try:
            # A request whose client left, or that waited past its deadline, never starts.
            if not stream.should_stop():
                began = time.monotonic()
                stream.started = True
                self._produce(self.models[kind], job, stream)
            stream.emit(SynthesisTimeout() if stream.expired else _END)
        except BaseException as exc:  # handed to the request that owns it
            stream.emit(exc)
        finally:
            self.admission.release(None if began is None else time.monotonic() - began)

    def _produce(self, model: LoadedModel, job: SpeechJob, stream: SynthesisStream) -> None:
        tts = model.tts
        clone_prompt = self._clone_prompt(model, job.reference) if job.reference is not None else None
        params = SamplingParams.from_generate_config(tts.generate_defaults)
        segments = split_text(job.text) or [job.text]
        joiner = SegmentJoiner(len(segments))
        cfg = self.config
        for index, segment in enumerate(segments):
            if stream.should_stop():
                return
            prompt = build_prompt(tts, segment, job.language, speaker=job.speaker,
                                  instructions=job.instructions, clone_prompt=clone_prompt)
            stream.usage.input_tokens += prompt.text_tokens
            frames = FrameGenerator(tts, prompt, params, max_frames=frame_budget(segment, model.max_new_tokens),
                                    should_stop=stream.should_stop)
            decoder = StreamingDecoder(
                tts,
                # Only the very first chunk of a request is small: it sets the time to first audio.
                first_chunk=cfg.first_chunk_frames if index == 0 else cfg.max_chunk_frames,
                max_chunk=cfg.max_chunk_frames,
                context_codes=prompt.ref_codes,
            )
            emit = _emitter(stream)
            for frame in frames:
                audio = decoder.push(frame)
                if audio is not None:
                    emit(joiner.feed(index, audio))
            stream.usage.output_frames += frames.frames_made
            tail = decoder.flush()
            emit(joiner.end_segment(index, tail))

    @staticmethod
    def _clone_prompt(model: LoadedModel, reference: ReferenceAudio):
        transcript = (reference.transcript or "").strip() or None
        # Our own decoded waveform goes in as a (samples, rate) tuple, so the package's
        # unsafe path/URL/base64 loader is never used.
        return model.tts.create_voice_clone_prompt(
            ref_audio=(reference.waveform, SAMPLE_RATE),
            ref_text=transcript,
            x_vector_only_mode=transcript is None,
        )[0]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _emitter(stream: SynthesisStream) -> Callable[[np.ndarray | None], None]:
    def emit(audio: np.ndarray | None) -> None:
        if audio is not None and audio.size:
            stream.emit(audio)

    return emit
