"""Clone prompts: what the Base model needs to speak in a voice heard in reference audio.

Computing one runs the speaker encoder (and, for in-context cloning, the codec encoder)
over the reference. Saved voices keep theirs on disk; inline ``audio_sample`` requests
share an LRU cache keyed by the audio's content and transcript, so a client that sends the
same reference again skips the encoders.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np

from ...constants import SAMPLE_RATE
from ...voices.prompt import ClonePrompt


def compute_clone_prompt(tts, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
    """Run the package's encoders over 24 kHz mono ``waveform``. With a transcript, in-context
    cloning (reference codes + text); without, the speaker embedding alone."""
    transcript = (transcript or "").strip() or None
    # Our own decoded waveform goes in as a (samples, rate) tuple, so the package's unsafe
    # path/URL/base64 loader is never used.
    item = tts.create_voice_clone_prompt(
        ref_audio=(waveform, SAMPLE_RATE), ref_text=transcript, x_vector_only_mode=transcript is None
    )[0]
    return ClonePrompt(
        speaker_embedding=item.ref_spk_embedding.detach().cpu(),
        reference_codes=None if item.ref_code is None else item.ref_code.detach().cpu(),
        reference_text=transcript if item.icl_mode else None,
    )


class PromptCache:
    """A bounded LRU of clone prompts keyed by (audio content hash, transcript)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, str | None], ClonePrompt] = OrderedDict()  # scheduler thread only
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(waveform: np.ndarray, transcript: str | None) -> tuple[str, str | None]:
        digest = hashlib.sha256(np.ascontiguousarray(waveform, dtype=np.float32).tobytes()).hexdigest()
        return digest, (transcript or "").strip() or None

    def cached(self, waveform: np.ndarray, transcript: str | None) -> ClonePrompt | None:
        """The prompt for this reference if it is cached (a hit), else None (no encoder runs)."""
        return self.lookup(self.key(waveform, transcript))

    def lookup(self, key: tuple[str, str | None]) -> ClonePrompt | None:
        """``cached`` for a key made before (``key``)."""
        prompt = self._items.get(key)
        if prompt is not None:
            self._items.move_to_end(key)
            self.hits += 1
        return prompt

    def compute(self, tts, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
        """Run the encoders (a miss) and keep the result."""
        self.misses += 1
        prompt = compute_clone_prompt(tts, waveform, transcript)
        if self.capacity > 0:
            self._items[self.key(waveform, transcript)] = prompt
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return prompt

    def get_or_compute(self, tts, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
        return self.cached(waveform, transcript) or self.compute(tts, waveform, transcript)
