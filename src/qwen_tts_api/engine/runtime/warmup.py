"""Before the server says it is ready, run through each model what production runs: a
batched prefill of two prompts of different lengths (VoiceDesign's with a description), a
two-row generation step, streaming decoding and, for Base, a clone prompt from reference
audio (speaker and codec encoders) spoken both ways (x-vector and in-context). The first
user request is otherwise the one that pays for allocator growth, kernel selection and
first-use caches on each path. Before them, probes find how many streams starting
together may decode their first chunks in one call (``first_chunks.probe_first_chunks``) and,
on a CPU, whether streams' later chunks may be (``streaming_decoder.probe_decoding_together``);
their answers are kept in the data directory for the next start on the same machine
(``probe_cache.py``). Each warm-up request speaks at most ``WARMUP_FRAMES`` frames. With
the compiled step (``QWEN_TTS_COMPILE``), a lone request follows, so that both of its graphs
(one row, several rows) are compiled here too."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from ...constants import SAMPLE_RATE, ModelKind
from ...text.prepare import PreparedText, prepare
from ...voices.prompt import ClonePrompt
from ..generation.clone import compute_clone_prompt
from ..generation.first_chunks import TOGETHER_LIMIT, keep_first_chunk_sizes, probe_first_chunks
from ..generation.streaming_decoder import decodes_together, keep_decoding_together, probe_decoding_together
from ..models.compact import release_freed_memory
from ..models.loading import LoadedModel
from .engine import Engine
from .jobs import SpeechJob
from .probe_cache import ProbeCache
from .readiness import Readiness

log = logging.getLogger(__name__)

WARMUP_TEXTS = ("Hello.", "Warming up a batch of two.")
# Frames each warm-up request may make: enough for the first chunk and a few doublings of the
# next ones (every path a request takes), short enough that warming up costs seconds; a
# random-weight model would otherwise speak each text to the end of its frame budget.
WARMUP_FRAMES = 8
WARMUP_TRANSCRIPT = "A gliding tone."
WARMUP_DESCRIPTION = "A calm, clear voice."  # VoiceDesign's instructions


def _warmup_reference() -> np.ndarray:
    t = np.arange(SAMPLE_RATE) / SAMPLE_RATE  # one second of a gliding tone stands in for a voice
    return (0.2 * np.sin(2 * np.pi * (150 + 50 * t) * t)).astype(np.float32)


def _prepared(model: LoadedModel, text: str) -> PreparedText:
    prepared = prepare(text, model.control_tokens, model.max_new_tokens)
    assert prepared is not None
    return prepared


async def _jobs(engine: Engine, kind: ModelKind, model: LoadedModel) -> list[SpeechJob]:
    if kind == ModelKind.CUSTOMVOICE:
        speakers: list[str | None] = [*model.speakers] or [None]
        return [
            SpeechJob(
                text=_prepared(model, text),
                language="Auto",
                speaker=speakers[i % len(speakers)],
                max_frames=WARMUP_FRAMES,
            )
            for i, text in enumerate(WARMUP_TEXTS)
        ]
    if kind == ModelKind.VOICEDESIGN:
        return [
            SpeechJob(
                text=_prepared(model, text), language="Auto", instructions=WARMUP_DESCRIPTION, max_frames=WARMUP_FRAMES
            )
            for text in WARMUP_TEXTS
        ]
    # Computed on the scheduler thread (it owns the model) and kept out of the prompt cache.
    in_context: ClonePrompt = await asyncio.wrap_future(
        engine.scheduler.call(lambda: compute_clone_prompt(model.tts, _warmup_reference(), WARMUP_TRANSCRIPT))
    )
    x_vector = ClonePrompt(speaker_embedding=in_context.speaker_embedding)
    return [
        SpeechJob(text=_prepared(model, text), language="Auto", voice_prompt=prompt, max_frames=WARMUP_FRAMES)
        for text, prompt in zip(WARMUP_TEXTS, (x_vector, in_context))
    ]


async def _kept_or_probed(engine: Engine, kept: ProbeCache, key: str, probe: Callable[[], Any]) -> Any:
    """The answer an earlier start on this machine kept under ``key`` (``probe_cache.py``), else
    ``probe``'s, measured on the scheduler thread (which owns the model) and kept."""
    found = kept.get(key)
    if found is None:
        found = await asyncio.wrap_future(engine.scheduler.call(probe))
        kept.put(key, found)
    return found


async def _probe_first_chunks(engine: Engine, model: LoadedModel, kept: ProbeCache) -> None:
    """Which numbers of streams starting together decode their first chunks in one call
    here (``first_chunks.probe_first_chunks``)."""
    frames, limit = engine.config.first_chunk_frames, min(TOGETHER_LIMIT, engine.config.max_batch)
    key = kept.key("first-chunks", model, frames, limit)
    try:
        found = await _kept_or_probed(engine, kept, key, lambda: sorted(probe_first_chunks(model.tts, frames, limit)))
        sizes = frozenset(int(size) for size in found)
    except Exception:  # noqa: BLE001 - only a saving: without it each stream decodes alone
        log.exception("%s: probing first chunks decoded together failed; each stream decodes alone", model.name)
        return
    keep_first_chunk_sizes(model.tts, frames, sizes)
    if sizes:
        log.info("%s: first chunks of %s streams starting together are decoded in one call", model.name, sorted(sizes))
    else:
        log.info("%s: first chunks are decoded one stream at a time (a batch's differ from lone ones)", model.name)


async def _probe_decoding_together(engine: Engine, model: LoadedModel, kept: ProbeCache) -> None:
    """With ``QWEN_TTS_DECODE_TOGETHER=auto`` on a CPU: whether streams' chunks decoded in
    one call are exact here (``streaming_decoder.probe_decoding_together``)."""
    codec = model.tts.model.speech_tokenizer.model.decoder
    if engine.config.decode_together != "auto" or next(codec.parameters()).device.type != "cpu":
        together = decodes_together(model.tts, engine.config.decode_together)
    else:
        key = kept.key("decoding-together", model)
        try:
            together = bool(await _kept_or_probed(engine, kept, key, lambda: probe_decoding_together(model.tts)))
        except Exception:  # noqa: BLE001 - only a saving: without it each stream decodes alone
            log.exception("%s: probing decoding together failed; each stream decodes alone", model.name)
            return
        keep_decoding_together(model.tts, together)
    how = "in one codec call per chunk length" if together else "one stream at a time (QWEN_TTS_DECODE_TOGETHER)"
    log.info("%s: concurrent streams' chunks are decoded %s", model.name, how)


async def warm_up(engine: Engine, readiness: Readiness) -> None:
    kept = ProbeCache(engine.config.probe_cache_dir)
    try:
        for kind, model in engine.models.items():
            await _probe_first_chunks(engine, model, kept)
            await _probe_decoding_together(engine, model, kept)
            jobs = await _jobs(engine, kind, model)
            streams = engine.start_together(kind, jobs)
            audio = await asyncio.gather(*(stream.collect() for stream in streams))
            if engine.compiled(kind):
                audio.append(await engine.start_together(kind, jobs[:1])[0].collect())
            log.info(
                "warm-up of %s done (%s s of audio)",
                model.name,
                " + ".join(f"{part.size / SAMPLE_RATE:.2f}" for part in audio),
            )
        await asyncio.to_thread(release_freed_memory)  # what the probes and warm-up freed
        readiness.warmed_up = True
    except Exception as exc:  # noqa: BLE001 - reported by /ready, the server keeps running
        log.exception("warm-up synthesis failed")
        readiness.error = f"warm-up synthesis failed: {type(exc).__name__}"
