"""The forced aligner that times each spoken word: Qwen3-ForcedAligner through the maintained
``qwen_asr`` package (``ALIGNER_MODEL_PATH``: a directory or a Hub id, on the TTS models'
device). It is given a segment's audio and its words as spoken (``text/words.py``) and
answers each word's start and end in seconds from the start of that audio.

One alignment runs at a time (the model is not re-entrant), on a thread of its own: never the
event loop, never the scheduler's thread, so audio is never held up by it. What it costs per
second of audio: docs/BENCHMARKS.md ("Word timings").
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ...constants import SAMPLE_RATE
from .directory import read_config
from .source import hub_snapshot, is_hub_id

log = logging.getLogger(__name__)

ALIGNER_ENV = "ALIGNER_MODEL_PATH"
# The aligner's tokenisation for languages that write spaces: it splits the words exactly
# as given (each one clean already), so its answer pairs one to one with them.
SPACED = "English"


class AlignerError(ValueError):
    """The aligner could not be loaded, or could not time one segment's words."""


@dataclass(frozen=True)
class AlignerSource:
    path: Path
    name: str


def resolve_aligner(value: str) -> AlignerSource:
    """``ALIGNER_MODEL_PATH`` as a checked aligner directory (a Hub id is fetched)."""
    path = hub_snapshot(ALIGNER_ENV, value) if is_hub_id(value) else Path(value).expanduser()
    where = f"{ALIGNER_ENV}={value}"
    config = read_config(path, where, AlignerError)
    thinker = config.get("thinker_config")
    thinker = thinker if isinstance(thinker, dict) else {}
    if "forced_aligner" not in str(thinker.get("model_type", "")):
        raise AlignerError(f"{where} is not a Qwen3 forced aligner (thinker model_type {thinker.get('model_type')!r})")
    return AlignerSource(path, value.split("/", 1)[1] if is_hub_id(value) else path.resolve().name)


class WordAligner:
    def __init__(self, model: Any, name: str, device: str):
        self._model = model  # qwen_asr.Qwen3ForcedAligner
        self.name = name
        self.device = device
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aligner")

    @classmethod
    def load(cls, value: str, device: str, dtype: str) -> WordAligner:
        import torch
        from qwen_asr import Qwen3ForcedAligner

        source = resolve_aligner(value)
        try:
            model = Qwen3ForcedAligner.from_pretrained(str(source.path), device_map=device, dtype=getattr(torch, dtype))
        except Exception as exc:  # noqa: BLE001 - any load failure: said once, with the path
            raise AlignerError(f"{ALIGNER_ENV}={value} could not be loaded ({type(exc).__name__}: {exc})") from exc
        log.info("word timings: aligner %s on %s in %s", source.name, device, dtype)
        return cls(model, source.name, device)

    @property
    def thread(self) -> ThreadPoolExecutor:
        """Where alignments run (``loop.run_in_executor``)."""
        return self._thread

    def align(self, audio: np.ndarray, words: Sequence[str]) -> list[tuple[float, float]]:
        """Each of ``words``' (start, end) in seconds from the start of ``audio`` (24 kHz mono)."""
        if not words:
            return []
        if audio.size == 0:
            return [(0.0, 0.0)] * len(words)
        with self._lock:
            try:
                result = self._model.align(audio=(audio, SAMPLE_RATE), text=" ".join(words), language=SPACED)[0]
            except Exception as exc:  # noqa: BLE001 - this segment falls back to the estimate
                raise AlignerError(f"alignment failed ({type(exc).__name__}: {exc})") from exc
        if [item.text for item in result] != list(words):
            raise AlignerError(f"the aligner answered {len(result)} words for {len(words)}")
        return [(float(item.start_time), float(item.end_time)) for item in result]

    def close(self) -> None:
        self._thread.shutdown(wait=False, cancel_futures=True)
