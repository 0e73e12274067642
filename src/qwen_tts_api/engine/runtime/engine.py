"""The engine's front: one request in, an async stream of 24 kHz audio chunks out.

All model work runs on the scheduler's thread (``scheduler.py``), never on the event loop,
so the HTTP server (and `/health`) stays responsive. A request can be cancelled between
any two frames, which frees its slot in the batch. The API sees this class only through
``engine/interface.py``'s ``SpeechEngine``.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from ...constants import ModelKind
from ...settings import Settings
from ...voices.prompt import ClonePrompt
from ..errors import EngineUnavailable
from ..generation.compiled import StepState
from ..models.loading import LoadedModel
from ..models.openmp import release_worker_threads
from .admission import Admission
from .audio_worker import AudioWorker, decode_thread_wanted
from .capacity import batch_size
from .jobs import EngineConfig, SpeechJob
from .live_text import LiveText
from .orders import StepObserver
from .runner import BatchRunner
from .scheduler import Scheduler
from .stream import SynthesisStream


@dataclass(frozen=True)
class Occupancy:
    generating: int  # rows in the batches now
    admitted: int  # requests admitted (generating or queued)

    @property
    def queued(self) -> int:
        return max(0, self.admitted - self.generating)


class Engine:
    """Owns the loaded models, admission control and the batching scheduler."""

    def __init__(self, models: Mapping[ModelKind, LoadedModel], config: EngineConfig | None = None):
        self.models: dict[ModelKind, LoadedModel] = dict(models)
        self.config = config or EngineConfig()
        self.admission = Admission(self.config.max_queue, workers=self.config.max_batch)
        devices = (model.tts.model.talker.device for model in self.models.values())
        self._audio = AudioWorker() if decode_thread_wanted(self.config.decode_thread, devices) else None
        self.runner = BatchRunner(self.models, self.config, self._audio, self._audio_failed)
        self.scheduler: Scheduler = Scheduler(self.runner, self.config, self.admission)
        # From here the scheduler thread runs the models (and a decoding thread their codec):
        # the thread that built them gives its OpenMP workers back (models/openmp.py).
        release_worker_threads()

    @classmethod
    def from_settings(cls, models: Mapping[ModelKind, LoadedModel], settings: Settings) -> Engine:
        """An engine configured by ``settings`` for ``models`` (QWEN_TTS_MAX_BATCH=auto sized for them)."""
        return cls(models, EngineConfig.from_settings(settings, batch_size(settings.max_batch, models)))

    def _audio_failed(self, request_id: str, exc: Exception) -> None:
        """Decoding that failed on the audio thread goes to the scheduler, through its inbox."""
        self.scheduler.audio_failed(request_id, exc)

    def model(self, kind: ModelKind) -> LoadedModel | None:
        return self.models.get(kind)

    @property
    def failure(self) -> str | None:
        """Why this engine can no longer generate (the process should be restarted), or None."""
        return self.scheduler.failure

    def add_step_observer(self, observer: StepObserver) -> Callable[[], None]:
        """``observer(StepStats)`` after each step (on the scheduler thread); returns its remover."""
        return self.scheduler.add_step_observer(observer)

    def occupancy(self) -> Occupancy:
        return Occupancy(generating=self.runner.generating(), admitted=self.admission.active)

    def prompt_cache_stats(self) -> tuple[int, int]:
        """Clone-prompt cache (hits, misses) so far."""
        return self.runner.prompt_cache_stats()

    @property
    def decodes_on_its_own_thread(self) -> bool:
        return self._audio is not None

    def step_state(self) -> StepState:
        """How the models' steps run (``/ready``): ``compiled`` where a model's graphs run."""
        states = {self.runner.step_state(kind) for kind in self.models}
        return "compiled" if "compiled" in states else "eager"

    def compiled(self, kind: ModelKind) -> bool:
        """Whether ``kind``'s talker step runs as a compiled graph."""
        return self.runner.compiled_rows(kind) != 0

    def _stream(self, timeout: float) -> SynthesisStream:
        return SynthesisStream(asyncio.get_running_loop(), timeout, self._audio, self.scheduler.wake)

    def _open_stream(self) -> SynthesisStream:
        """A stream for a request that takes a place in admission control (or a refusal)."""
        if (failure := self.failure) is not None:
            raise EngineUnavailable(failure)
        self.admission.admit()
        return self._stream(self.config.request_timeout)

    def start(self, kind: ModelKind, job: SpeechJob) -> SynthesisStream:
        """Queue a request; raises EngineBusy when the queue is full, EngineUnavailable when
        the engine has failed."""
        stream = self._open_stream()
        self.scheduler.submit(kind, job, stream)
        return stream

    def live_text(self) -> LiveText:
        """A turn's text channel, for ``start_live``: what is appended wakes the scheduler."""
        return LiveText(self.scheduler.wake)

    def start_live(self, kind: ModelKind, job: SpeechJob) -> SynthesisStream:
        """Queue a turn whose text arrives while it is spoken (``job.live``, from
        ``live_text``). Its stream carries PartStarted / audio / PartEnded per part. Raises as
        ``start``; ``stream.cancel()`` cancels it."""
        assert job.live is not None
        stream = self._open_stream()
        self.scheduler.submit_live(kind, job, stream)
        return stream

    def start_together(self, kind: ModelKind, jobs: list[SpeechJob]) -> list[SynthesisStream]:
        """Requests of the server's own (the warm-up), outside admission control, that join
        the batch at the same step. They have no deadline: with the compiled step, the first
        of them waits while its graphs compile, which can take minutes."""
        streams = [self._stream(math.inf) for _ in jobs]
        self.scheduler.submit_together(kind, list(zip(jobs, streams)))
        return streams

    async def clone_prompt(self, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
        """The Base model's clone prompt for a reference (runs on the scheduler thread)."""
        if (failure := self.failure) is not None:
            raise EngineUnavailable(failure)
        # The encoders are model work like speech: they take a place in the queue (or a 429).
        self.admission.admit()
        try:
            return await asyncio.wrap_future(
                self.scheduler.call(lambda: self.runner.clone_prompt(ModelKind.BASE, waveform, transcript))
            )
        finally:
            self.admission.release(None)

    def close(self) -> None:
        self.scheduler.close()
