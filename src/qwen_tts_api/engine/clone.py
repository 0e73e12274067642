"""Clone prompts: what the Base model needs to speak in a voice heard in reference audio.

Computing one runs the speaker encoder (and, for in-context cloning, the codec encoder)
over the reference. Saved voices keep theirs on disk; inline ``audio_sample`` requests
share an LRU cache keyed by the audio's content and transcript, so a client that sends the
same reference again skips the encoders.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

SAMPLE_RATE = 24000


@dataclass(frozen=True)
class ClonePrompt:
    speaker_embedding: torch.Tensor  # (D,)
    reference_codes: torch.Tensor | None = None  # (T, 16): in-context cloning only
    reference_text: str | None = None  # the transcript that goes with reference_codes

    @property
    def in_context(self) -> bool:
        return self.reference_codes is not None


def compute_clone_prompt(tts, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
    """Run the package's encoders over 24 kHz mono ``waveform``. With a transcript, in-context
    cloning (reference codes + text); without, the speaker embedding alone."""
    transcript = (transcript or "").strip() or None
    # Our own decoded waveform goes in as a (samples, rate) tuple, so the package's unsafe
    # path/URL/base64 loader is never used.
    item = tts.create_voice_clone_prompt(ref_audio=(waveform, SAMPLE_RATE), ref_text=transcript,
                                         x_vector_only_mode=transcript is None)[0]
    return ClonePrompt(
        speaker_embedding=item.ref_spk_embedding.detach().cpu(),
        reference_codes=None if item.ref_code is None else item.ref_code.detach().cpu(),
        reference_text=transcript if item.icl_mode else None,
    )


class PromptCache:
    """A bounded LRU of clone prompts keyed by (audio content hash, transcript)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str | None], ClonePrompt] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(waveform: np.ndarray, transcript: str | None) -> tuple[str, str | None]:
        digest = hashlib.sha256(np.ascontiguousarray(waveform, dtype=np.float32).tobytes()).hexdigest()
        return digest, (transcript or "").strip() or None

    def get_or_compute(self, tts, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
        key = self.key(waveform, transcript)
        with self._lock:
            prompt = self._items.get(key)
            if prompt is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return prompt
            self.misses += 1
        prompt = compute_clone_prompt(tts, waveform, transcript)
        if self.capacity > 0:
            with self._lock:
                self._items[key] = prompt
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
        return prompt
