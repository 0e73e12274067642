"""What runs before /ready (a batched prefill, a two-row batch, both kinds of cloning, a
description for VoiceDesign), and in-context cloning that decodes its reference frames once
per request, not once per segment."""

from __future__ import annotations

import base64
import io

import pytest
import soundfile as sf
from helpers import SR, LiveServer, capped_copy, cpu_settings, decode_audio, server_fixture, tone
from qwen_tts import Qwen3TTSModel

from qwen_tts_api.engine.generation.batching import FrameBatch
from qwen_tts_api.engine.generation.streaming_decoder import DecoderState
from qwen_tts_api.engine.runtime import voicing
from qwen_tts_api.engine.runtime.warmup import WARMUP_DESCRIPTION, WARMUP_TRANSCRIPT
from qwen_tts_api.text.segment import split_text

FRAME = 1920 / SR


@pytest.mark.slow  # starts a server
def test_warm_up_runs_what_production_runs_before_ready(demo_models, monkeypatch):
    prefills: list[list[bool]] = []  # per batched prefill: does each prompt clone in context?
    add_many = FrameBatch.add_many

    def recording_add_many(self, specs):
        prefills.append([spec.prompt.ref_codes is not None for spec in specs])
        return add_many(self, specs)

    transcripts: list[str | None] = []
    create_prompt = Qwen3TTSModel.create_voice_clone_prompt

    def recording_create_prompt(self, *args, **kwargs):
        transcripts.append(kwargs.get("ref_text"))
        return create_prompt(self, *args, **kwargs)

    instructions: list[str | None] = []
    build_prompt = voicing.build_prompt

    def recording_build_prompt(*args, **kwargs):
        instructions.append(kwargs.get("instructions"))
        return build_prompt(*args, **kwargs)

    monkeypatch.setattr(FrameBatch, "add_many", recording_add_many)
    monkeypatch.setattr(Qwen3TTSModel, "create_voice_clone_prompt", recording_create_prompt)
    monkeypatch.setattr(voicing, "build_prompt", recording_build_prompt)
    settings = cpu_settings(
        customvoice_model_path=demo_models["customvoice"],
        base_model_path=demo_models["base"],
        voicedesign_model_path=demo_models["voicedesign"],
    )
    with LiveServer(settings) as live:
        assert live.app.state.server.readiness.ready
        before_ready = list(prefills)
        stats = live.app.state.server.engine.prompt_cache_stats()
        assert stats == (0, 0), "the warm-up leaves the users' prompt cache alone"
    # CustomVoice: two prompts prefilled together; Base: an x-vector and an in-context prompt together.
    assert [False, False] in before_ready
    assert [False, True] in before_ready
    # The speaker and codec encoders ran on reference audio (in-context: with its transcript).
    assert transcripts == [WARMUP_TRANSCRIPT]
    # VoiceDesign: its two prompts carry a description.
    assert instructions.count(WARMUP_DESCRIPTION) == 2 and len(before_ready) == 3


@server_fixture(scope="module")
def capped_base(demo_models, tmp_path_factory):
    """The demo Base model with a 20-frame limit per segment, so long input stays fast."""
    path = capped_copy(demo_models["base"], tmp_path_factory.mktemp("capped-base"))
    with LiveServer(cpu_settings(base_model_path=path)) as live:
        yield live


def test_reference_frames_are_decoded_once_per_request(capped_base, monkeypatch):
    primed: list[int] = []
    prime = DecoderState.prime.__func__

    def counting_prime(cls, tts, codes):
        primed.append(codes.shape[0])
        return prime(cls, tts, codes)

    monkeypatch.setattr(DecoderState, "prime", classmethod(counting_prime))
    text = " ".join(f"Sentence {i} of a long cloned request, spoken in the reference voice." for i in range(14))
    segments = split_text(text)
    assert len(segments) >= 3
    wav = io.BytesIO()
    sf.write(wav, tone(1.5, 200.0), SR, format="WAV")
    audio = (
        capped_base.openai()
        .audio.speech.with_raw_response.create(
            model="qwen3-tts",
            voice="alloy",
            input=text,
            response_format="wav",
            extra_body={
                "audio_sample": base64.b64encode(wav.getvalue()).decode(),
                "audio_sample_text": "A steady tone.",
            },
        )
        .content
    )
    assert decode_audio(audio).duration == pytest.approx(len(segments) * 20 * FRAME, abs=0.01)
    assert len(primed) == 1 and primed[0] > 0, f"reference decoded {len(primed)} times for {len(segments)} segments"
