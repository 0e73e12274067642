"""The inference worker: one request in, a 24 kHz mono waveform out.

All model calls run on one dedicated thread, never on the event loop, so the HTTP server
(and `/health`) stays responsive while a long utterance is generated.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..text.budget import frame_budget
from .loading import LoadedModel

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
    instructions: str | None = None  # CustomVoice, dropped by 0.6B models
    reference: ReferenceAudio | None = None  # Base


class Engine:
    """Owns the loaded models and the single inference thread."""

    def __init__(self, models: dict[str, LoadedModel]):
        self.models = models
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qwen-tts-infer")

    def model(self, kind: str) -> LoadedModel | None:
        return self.models.get(kind)

    async def synthesize(self, kind: str, job: SpeechJob) -> np.ndarray:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._run, kind, job)

    def _run(self, kind: str, job: SpeechJob) -> np.ndarray:
        model = self.models[kind]
        budget = frame_budget(job.text, model.max_new_tokens)
        if job.reference is not None:
            wavs, sample_rate = self._clone(model, job, budget)
        else:
            wavs, sample_rate = model.tts.generate_custom_voice(
                text=job.text,
                speaker=job.speaker,
                language=job.language,
                instruct=job.instructions or None,
                max_new_tokens=budget,
            )
        if sample_rate != SAMPLE_RATE:
            raise RuntimeError(f"model produced {sample_rate} Hz audio, expected {SAMPLE_RATE}")
        return np.asarray(wavs[0], dtype=np.float32)

    @staticmethod
    def _clone(model: LoadedModel, job: SpeechJob, budget: int):
        ref = job.reference
        assert ref is not None
        transcript = (ref.transcript or "").strip() or None
        # Our own decoded waveform goes in as a (samples, rate) tuple, so the package's
        # unsafe path/URL/base64 loader is never used.
        prompt = model.tts.create_voice_clone_prompt(
            ref_audio=(ref.waveform, SAMPLE_RATE),
            ref_text=transcript,
            x_vector_only_mode=transcript is None,
        )
        return model.tts.generate_voice_clone(
            text=job.text,
            language=job.language,
            voice_clone_prompt=prompt,
            max_new_tokens=budget,
        )

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
