"""The demo aligner loads through the real qwen_asr path and answers one time span per word;
the server's wrapper checks what it answers."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qwen_tts_api.devtools.demo_aligner import PUBLISHED_ALIGNER_IDS, published_aligner_config
from qwen_tts_api.engine.models.aligner import AlignerError, WordAligner, resolve_aligner


def test_the_published_configuration_is_the_aligners():
    config = published_aligner_config()
    thinker = config["thinker_config"]
    assert config["timestamp_token_id"] == PUBLISHED_ALIGNER_IDS["<timestamp>"] == 151705
    assert config["timestamp_segment_time"] == 80 and thinker["classify_num"] == 5000
    assert thinker["model_type"] == "qwen3_forced_aligner"
    assert thinker["audio_token_id"] == PUBLISHED_ALIGNER_IDS["<|audio_pad|>"]
    assert (thinker["text_config"]["hidden_size"], thinker["text_config"]["num_hidden_layers"]) == (1024, 28)
    assert (thinker["audio_config"]["d_model"], thinker["audio_config"]["encoder_layers"]) == (1024, 24)
    assert len(config["support_languages"]) == 11


def test_the_demo_aligner_times_every_word_through_qwen_asr(demo_aligner):
    aligner = WordAligner.load(str(demo_aligner), "cpu", "float32")
    try:
        audio = np.random.default_rng(0).standard_normal(24000 * 2).astype(np.float32) * 0.1
        words = ["Hello", "there", "it's", "42", "你", "好"]
        times = aligner.align(audio, words)
        assert len(times) == len(words) and all(start <= end for start, end in times)
        assert aligner.align(audio, []) == []
        assert aligner.align(np.zeros(0, np.float32), ["x"]) == [(0.0, 0.0)]
    finally:
        aligner.close()


def test_an_answer_that_does_not_pair_with_the_words_is_an_error():
    class Item:
        def __init__(self, text):
            self.text, self.start_time, self.end_time = text, 0.0, 0.1

    class Model:
        def align(self, audio, text, language):
            return [[Item(word) for word in text.split()[:-1]]]  # one word short

    aligner = WordAligner(Model(), "fake", "cpu")
    with pytest.raises(AlignerError, match="answered 1 words for 2"):
        aligner.align(np.ones(2400, np.float32), ["a", "b"])
    aligner.close()


def test_a_directory_that_is_not_an_aligner_is_refused(tmp_path, demo_models):
    with pytest.raises(AlignerError, match="not a Qwen3 forced aligner"):
        resolve_aligner(str(demo_models["customvoice"]))
    with pytest.raises(AlignerError, match="has no config.json"):
        resolve_aligner(str(tmp_path))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(AlignerError, match="unreadable"):
        resolve_aligner(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(published_aligner_config()))
    assert resolve_aligner(str(tmp_path)).path == tmp_path
