"""What the engine is asked to do: one request's text, language and voice, and the
engine's own configuration (built from the settings, by name)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...settings import Settings
from ...text.normalize import normalize
from ...text.prepare import PreparedText
from .live_text import LiveText

if TYPE_CHECKING:  # a saved voice's prompt holds tensors; the scheduler's side never imports torch
    from ...voices.prompt import ClonePrompt


@dataclass(frozen=True)
class ReferenceAudio:
    """Decoded reference audio for cloning: mono float32 at 24 kHz."""

    waveform: np.ndarray
    transcript: str | None = None


@dataclass(frozen=True)
class SamplingChoice:
    """A request's own sampling settings (None: the model's generation config)."""

    seed: int | None = None  # its own random generator: the same seed, the same audio
    temperature: float | None = None  # 0: greedy
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None


@dataclass(frozen=True)
class SpeechJob:
    text: PreparedText  # cleaned and cut into segments, each with its frame budget
    language: str  # as the model names it, e.g. "English" or "Auto"
    speaker: str | None = None  # CustomVoice
    instructions: str | None = None  # CustomVoice; callers drop it for 0.6B models
    reference: ReferenceAudio | None = None  # Base, cloning from audio sent with the request
    voice_prompt: ClonePrompt | None = None  # Base, a saved voice's stored prompt
    live: LiveText | None = None  # text still arriving (a voice agent's turn); ``text`` is then empty
    max_frames: int | None = None  # a cap on each segment's frames below the model's own
    first_chunk_frames: int | None = None  # frames of the first audio chunk (else the engine's setting)
    # Whether the client hears audio as it is made. A complete response's first chunk (False)
    # is heard no sooner for going ahead of other work, so it does not.
    streaming: bool = True
    sampling: SamplingChoice = SamplingChoice()
    normalize: bool = False  # live text: numbers written out in ``language`` as they arrive
    announce_parts: bool = False  # each segment's start and end in the stream (a WebSocket SSML turn)

    def spoken(self, text: str) -> str:
        """A live part's text as reported and budgeted: with its numbers written out, if asked."""
        return normalize(text, self.language) if self.normalize else text


@dataclass(frozen=True)
class EngineConfig:
    first_chunk_frames: int = 1
    max_chunk_frames: int = 48
    max_queue: int = 16  # requests waiting beyond those in the batch
    request_timeout: float = 300.0  # seconds from admission to the last audio
    max_batch: int = 8  # requests generated together, per model
    prompt_cache_size: int = 32  # clone prompts of inline reference audio kept for reuse
    compile: str = "off"  # QWEN_TTS_COMPILE: auto | on | off (generation/compiled.py)
    cuda_graphs: str = "auto"  # QWEN_TTS_CUDA_GRAPHS: auto | off
    compile_cache_dir: Path | None = None  # where compiled graphs persist (None: torch's default)
    probe_cache_dir: Path | None = None  # where start-up probes' results persist (None: not kept)
    prefill_chunk: int = 256  # prompt positions per prefill chunk, one chunk per step while others speak; 0: whole
    decode_thread: str = "off"  # QWEN_TTS_DECODE_THREAD: auto | on | off (audio_worker.py)
    decode_together: str = "auto"  # QWEN_TTS_DECODE_TOGETHER: auto | on | off (streaming_decoder.decodes_together)

    @classmethod
    def from_settings(cls, settings: Settings, max_batch: int | None = None) -> EngineConfig:
        """``max_batch``: QWEN_TTS_MAX_BATCH resolved for the loaded models (``capacity.py``);
        else the setting's number, or the CPU's batch for auto."""
        if max_batch is None:
            max_batch = settings.max_batch if isinstance(settings.max_batch, int) else cls.max_batch
        return cls(
            first_chunk_frames=settings.stream_first_frames,
            max_chunk_frames=settings.stream_max_chunk_frames,
            max_queue=settings.max_queue,
            request_timeout=settings.request_timeout_seconds,
            max_batch=max_batch,
            prompt_cache_size=settings.prompt_cache_size,
            compile=settings.compile,
            cuda_graphs=settings.cuda_graphs,
            compile_cache_dir=settings.compile_cache_dir,
            probe_cache_dir=settings.data_dir,
            prefill_chunk=settings.prefill_chunk,
            decode_thread=settings.decode_thread,
            decode_together=settings.decode_together,
        )
