"""`speed` is a time stretch: duration ~ 1/speed, pitch unchanged."""

import numpy as np
import pytest
from helpers import SR, tone

from qwen_tts_api.audio.tempo import atempo_factors, change_speed


def dominant_frequency(samples: np.ndarray) -> float:
    window = samples * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(window))
    return float(np.argmax(spectrum) * SR / len(samples))


@pytest.mark.parametrize("speed", [0.25, 0.5, 0.8, 1.5, 2.0, 3.0, 4.0])
def test_pure_tone_keeps_pitch(speed):
    source = tone(3.0, 440.0)
    out = change_speed(source, speed)
    expected = len(source) / speed
    assert abs(len(out) - expected) / expected <= 0.03
    assert abs(dominant_frequency(out) - 440.0) / 440.0 <= 0.02


def test_speed_one_is_untouched():
    source = tone(1.0, 440.0)
    assert np.array_equal(change_speed(source, 1.0), source)


@pytest.mark.parametrize("speed", [0.25, 0.3, 1.0, 2.5, 4.0])
def test_factors_stay_in_atempo_sweet_spot(speed):
    factors = atempo_factors(speed)
    assert all(0.5 <= f <= 2.0 for f in factors)
    assert np.isclose(np.prod(factors), speed)
