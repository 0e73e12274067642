"""Our generation loop against the official package, greedy decoding, on demo models.

The package's codes are captured where it hands them to its speech tokenizer.
"""

import numpy as np
import pytest
import torch
from frame_generator import FrameGenerator
from helpers import TEST_DEVICE, first_fast
from qwen_tts import Qwen3TTSModel

from qwen_tts_api.devtools import cpu_settings
from qwen_tts_api.devtools.demo_models import ModelShape, build_model
from qwen_tts_api.engine.generation.prompt import build_prompt
from qwen_tts_api.engine.generation.sampling import SamplingParams
from qwen_tts_api.engine.models.loading import load_model

FRAMES = 14


def load(path) -> Qwen3TTSModel:
    return Qwen3TTSModel.from_pretrained(str(path), device_map=TEST_DEVICE, dtype=torch.float32)


def package_codes(tts, call) -> tuple[torch.Tensor, np.ndarray]:
    """Run a package generate_* call; return the codes it decoded and its waveform."""
    captured = []
    original = tts.model.speech_tokenizer.decode

    def spy(encoded):
        captured.append(encoded[0]["audio_codes"].clone())
        return original(encoded)

    tts.model.speech_tokenizer.decode = spy
    try:
        wavs, _ = call()
    finally:
        tts.model.speech_tokenizer.decode = original
    return captured[0], wavs[0]


def package_custom_voice_codes(tts, text: str, **kwargs) -> torch.Tensor:
    """The package's codes for ``generate_custom_voice`` (our frame count)."""
    codes, _ = package_codes(tts, lambda: tts.generate_custom_voice(text, max_new_tokens=FRAMES + 1, **kwargs))
    return codes


def our_codes(tts, frames=FRAMES, **prompt_args) -> torch.Tensor:
    prompt = build_prompt(tts, **prompt_args)
    params = SamplingParams.from_generate_config(tts.generate_defaults)
    return torch.stack(list(FrameGenerator(tts, prompt, params, max_frames=frames)))


@pytest.fixture(autouse=True, scope="module")
def float32_convolutions():
    """On CUDA, cuDNN runs float32 convolutions in TF32 by default (a 10-bit mantissa), and a
    chunk of the stream rounds differently from the whole waveform: on an H200 the streamed
    waveform was up to 1.4e-2 from the one-pass decode after 200 frames of the demo codec,
    and within 1e-4 with TF32 off. These tests compare the algorithms, so they run the
    convolutions in float32, and with cuDNN's deterministic algorithms (some of its
    transposed-convolution algorithms add with atomics: the same input twice need not give
    the same bits), as on a CPU."""
    flags = torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = False, True
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cudnn.deterministic = flags


@pytest.fixture(scope="module")
def customvoice(demo_models):
    return load(demo_models["customvoice"])


@pytest.fixture(scope="module")
def base(demo_models):
    return load(demo_models["base"])


@pytest.fixture(scope="module")
def voicedesign(demo_models):
    return load(demo_models["voicedesign"])


@pytest.fixture(scope="module")
def customvoice_1_7b(tmp_path_factory):
    return load(
        build_model(tmp_path_factory.mktemp("eq17") / "cv", "custom_voice", seed=5, shape=ModelShape(size_tag="1b7"))
    )


@pytest.mark.parametrize(
    "speaker, language",
    first_fast([("Vivian", "English"), ("Dylan", "Auto"), ("Eric", "Chinese"), ("Sohee", "Korean")]),
)
def test_custom_voice_codes_equal(customvoice, speaker, language):
    text = "Hello there, how are you today?"
    expected = package_custom_voice_codes(customvoice, text, speaker=speaker, language=language)
    ours = our_codes(customvoice, text=text, language=language, speaker=speaker)
    assert expected.shape == (FRAMES, 16)
    assert torch.equal(ours, expected)


def test_custom_voice_with_instructions_codes_equal(customvoice_1_7b):
    text, instructions = "Hello there.", "Speak slowly and warmly."
    expected = package_custom_voice_codes(
        customvoice_1_7b, text, speaker="Ryan", language="English", instruct=instructions
    )
    ours = our_codes(customvoice_1_7b, text=text, language="English", speaker="Ryan", instructions=instructions)
    plain = our_codes(customvoice_1_7b, text=text, language="English", speaker="Ryan")
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, plain)


DESCRIPTION = "A warm, slightly husky alto, speaking slowly."


@pytest.mark.parametrize(
    "language, text_per_frame",
    first_fast([("English", False), ("Chinese", False), ("Auto", False), ("English", True)]),
    ids=["english", "chinese", "auto", "text-per-frame"],
)
def test_voice_design_codes_equal(voicedesign, language, text_per_frame):
    """VoiceDesign: no speaker, the description as the instruction; the package reads the text
    all first by default (non_streaming_mode=True), per frame when asked."""
    text = "Hello there, how are you today?"
    expected, _ = package_codes(
        voicedesign,
        lambda: voicedesign.generate_voice_design(
            text,
            instruct=DESCRIPTION,
            language=language,
            non_streaming_mode=not text_per_frame,
            max_new_tokens=FRAMES + 1,
        ),
    )
    args = {"text": text, "language": language, "streaming_text": text_per_frame}
    ours = our_codes(voicedesign, instructions=DESCRIPTION, **args)
    other = our_codes(voicedesign, instructions="A bright young tenor, speaking fast.", **args)
    assert expected.shape == (FRAMES, 16)
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, other)  # the description is read


from qwen_tts_api.engine.generation.clone import compute_clone_prompt  # noqa: E402


def reference_audio() -> np.ndarray:
    t = np.arange(24000 * 2) / 24000
    return (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 3 * t)) / 2).astype(np.float32)


@pytest.mark.parametrize("transcript", first_fast([None, "This is the reference."]), ids=["x-vector", "in-context"])
def test_clone_codes_equal(base, transcript):
    ref = reference_audio()
    prompt_items = base.create_voice_clone_prompt(
        ref_audio=(ref, 24000), ref_text=transcript, x_vector_only_mode=transcript is None
    )
    text = "Cloned speech sounds like this."
    expected, _ = package_codes(
        base,
        lambda: base.generate_voice_clone(
            text, language="English", voice_clone_prompt=prompt_items, max_new_tokens=FRAMES + 1
        ),
    )
    if transcript is not None:
        ref_len = prompt_items[0].ref_code.shape[0]
        assert torch.equal(expected[:ref_len], prompt_items[0].ref_code)
        expected = expected[ref_len:]
    # Our prompt, computed our way (what the server stores and caches), gives the same codes.
    ours = our_codes(base, text=text, language="English", clone_prompt=compute_clone_prompt(base, ref, transcript))
    assert torch.equal(ours, expected)


@pytest.mark.slow  # text read per frame: also checked by VoiceDesign's and the live text's cases
def test_custom_voice_text_read_per_frame_codes_equal(customvoice):
    """CustomVoice reading its text one token per frame (the package's non_streaming_mode=False,
    how a voice agent's live text is read) gives the package's codes, and differs from reading
    it all first (what HTTP requests with complete text do)."""
    text = "Hello there, how are you today?"
    expected = package_custom_voice_codes(
        customvoice, text, speaker="Vivian", language="English", non_streaming_mode=False
    )
    ours = our_codes(customvoice, text=text, language="English", speaker="Vivian", streaming_text=True)
    whole = our_codes(customvoice, text=text, language="English", speaker="Vivian")
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, whole)


from qwen_tts_api.engine.generation.batching import FrameBatch  # noqa: E402
from qwen_tts_api.engine.generation.live_tokens import PartTokens  # noqa: E402
from qwen_tts_api.engine.generation.prompt import build_live_prompt, live_start_tokens, text_embeddings  # noqa: E402

LIVE_TEXT = (
    "Well, here is a longer answer that arrives one word at a time, the way a language model "
    "writes it, and the voice keeps reading while the words come in."
)


def codes_of_text_arriving(tts, words: list[str], frames: int, **voice) -> tuple[torch.Tensor, int]:
    """Generate while the text arrives a word at a time: the row waits whenever it has read
    every final token. Returns the codes and how many steps the row spent waiting."""
    params = SamplingParams.from_generate_config(tts.generate_defaults)
    batch, tokens = FrameBatch(tts, params), PartTokens(tts, control_tokens=[])
    need = live_start_tokens(tts, voice.get("clone_prompt"))
    text, row, codes, waits = "", None, [], 0
    pending = list(words)
    while row is None or len(batch):
        if pending:
            text += pending.pop(0)
            fresh = tokens.update(text, closed=not pending)
        else:
            fresh = []
        if row is None:
            if len(tokens.ids) >= need or not pending:
                row = batch.add(build_live_prompt(tts, tokens.ids, "English", final=not pending, **voice), frames)
            continue
        if fresh:
            row.prompt.extend(text_embeddings(tts, fresh))
        if not pending:
            row.prompt.finish()
        while len(batch) and row.prompt.text_available(row.frames_made):
            made, _ = batch.step()
            codes += [c for _, c in made]
        if len(batch):
            waits += 1
    return torch.stack(codes), waits


@pytest.mark.parametrize("voice", first_fast(["speaker", "x-vector", "in-context", "designed"]))
def test_text_arriving_gives_the_codes_of_text_known_from_the_start(customvoice, base, voicedesign, voice):
    """A generation that waits for its text resumes exactly where it was: its codes are
    those of the same text read per frame with all of it there from the start."""
    words = [w + " " for w in LIVE_TEXT.split()]
    frames = 60
    if voice == "speaker":
        tts, args = customvoice, {"speaker": "Vivian"}
    elif voice == "designed":
        tts, args = voicedesign, {"instructions": DESCRIPTION}
    else:
        tts = base
        transcript = None if voice == "x-vector" else "This is the reference."
        args = {"clone_prompt": compute_clone_prompt(base, reference_audio(), transcript)}
    arriving, waits = codes_of_text_arriving(tts, words, frames, **args)
    known = our_codes(tts, frames=frames, text=LIVE_TEXT, language="English", streaming_text=True, **args)
    assert waits > 0
    assert torch.equal(arriving, known)


# ---------- waveform: incremental decode against the package's full decode ----------

from qwen_tts_api.engine.generation import codec_layers  # noqa: E402
from qwen_tts_api.engine.generation.streaming_decoder import DecoderState, StreamingDecoder  # noqa: E402


def stream_decode(tts, codes, first_chunk=3, max_chunk=48, context=None) -> np.ndarray:
    decoder = StreamingDecoder(tts, first_chunk=first_chunk, max_chunk=max_chunk, context=context)
    parts = [audio for frame in codes if (audio := decoder.push(frame)) is not None]
    if (tail := decoder.flush()) is not None:
        parts.append(tail)
    return np.concatenate(parts)


# 200 frames is past the decoder's 72-frame attention window; 1/1 decodes frame by frame.
@pytest.mark.slow  # seconds each: decoding a long stream chunk by chunk
@pytest.mark.parametrize("frames", [40, 200])
@pytest.mark.parametrize("first_chunk, max_chunk", [(3, 48), (1, 1), (7, 13)])
def test_streamed_waveform_equals_full_decode(customvoice, frames, first_chunk, max_chunk):
    codes, wav = package_codes(
        customvoice,
        lambda: customvoice.generate_custom_voice(
            "Hello there, how are you?", speaker="Vivian", language="English", max_new_tokens=frames + 1
        ),
    )
    ours = stream_decode(customvoice, codes, first_chunk, max_chunk)
    assert ours.shape == wav.shape
    assert np.abs(ours - wav).max() <= 1e-4


def test_streamed_waveform_in_the_gpu_layout_equals_full_decode(customvoice, monkeypatch):
    """Off a CPU the decoder keeps its one-row images in the usual (NCHW) memory format, not
    channels-last (cuDNN's channels-last depthwise convolution is slow): that path, run here."""
    codec = customvoice.model.speech_tokenizer.model.decoder

    codes, wav = package_codes(
        customvoice,
        lambda: customvoice.generate_custom_voice(
            "Hello there, how are you?", speaker="Vivian", language="English", max_new_tokens=21
        ),
    )
    monkeypatch.setattr(codec_layers, "memory_format", lambda x: torch.contiguous_format)
    codec_layers.forget_kept_weights(codec)  # made once per module, in the layout of their first use
    try:
        ours = stream_decode(customvoice, codes, first_chunk=3, max_chunk=48)
        kept = [getattr(m, codec_layers.IMAGE) for m in codec.modules() if hasattr(m, codec_layers.IMAGE)]
        assert kept and all(w.is_contiguous() for w in kept)  # channels-last ones with a kernel above 1 are not
    finally:
        codec_layers.forget_kept_weights(codec)
    assert ours.shape == wav.shape
    assert np.abs(ours - wav).max() <= 1e-4


def test_a_bfloat16_codec_streams_close_to_the_float32_decode(customvoice, demo_models):
    """QWEN_TTS_CODEC_DTYPE=bfloat16 (auto's choice on a CPU with AMX): the loader casts the
    codec alone, and the streamed waveform is as close to the package's float32 decode as
    the package's own bfloat16 decode (its codec on a GPU) is: not within 1e-4, bfloat16
    keeps 8 bits of mantissa, and this random-weight codec magnifies rounding."""
    codes, wav = package_codes(
        customvoice,
        lambda: customvoice.generate_custom_voice(
            "Hello there, how are you?", speaker="Vivian", language="English", max_new_tokens=41
        ),
    )
    settings = cpu_settings(device=TEST_DEVICE, codec_dtype="bfloat16")
    loaded = load_model("customvoice", demo_models["customvoice"], settings, dtype="float32")
    model = loaded.tts.model
    assert model.speech_tokenizer.model.dtype == torch.bfloat16 and model.talker.dtype == torch.float32
    ours = stream_decode(loaded.tts, codes, first_chunk=1, max_chunk=16)
    (package_bfloat16,), _ = model.speech_tokenizer.decode({"audio_codes": codes})

    def error(decoded: np.ndarray) -> float:  # relative RMS difference from the float32 decode
        assert decoded.dtype == np.float32 and decoded.shape == wav.shape
        return float(np.sqrt(np.mean((decoded - wav) ** 2) / np.mean(wav**2)))

    assert 0 < error(ours) <= 1.5 * error(package_bfloat16)


@pytest.mark.slow  # a whole package generation and decode
def test_in_context_clone_waveform_equals_package(base):
    ref = reference_audio()
    items = base.create_voice_clone_prompt(ref_audio=(ref, 24000), ref_text="This is the reference.")
    codes, wav = package_codes(
        base,
        lambda: base.generate_voice_clone(
            "Cloned speech.", language="English", voice_clone_prompt=items, max_new_tokens=FRAMES + 1
        ),
    )
    ref_len = items[0].ref_code.shape[0]
    ours = stream_decode(base, codes[ref_len:], context=DecoderState.prime(base, items[0].ref_code))
    assert ours.shape == wav.shape
    assert np.abs(ours - wav).max() <= 1e-4


def test_reference_context_is_shared_unchanged_by_its_streams(base):
    """A long request primes the decoder with its reference once; each segment's stream
    starts from that state exactly as if it had been primed afresh."""
    ref_codes = base.create_voice_clone_prompt(ref_audio=(reference_audio(), 24000), ref_text="This is the reference.")[
        0
    ].ref_code
    generator = torch.Generator().manual_seed(3)
    first, second = (torch.randint(0, 2048, (n, 16), generator=generator).to(TEST_DEVICE) for n in (90, 30))
    shared = DecoderState.prime(base, ref_codes)
    stream_decode(base, first, context=shared)  # past the 72-frame window: its cache rolls over
    from_shared = stream_decode(base, second, context=shared)
    afresh = stream_decode(base, second, context=DecoderState.prime(base, ref_codes))
    assert np.array_equal(from_shared, afresh)


def test_a_stream_keeps_only_its_left_context_between_chunks(customvoice):
    """Between chunks a stream holds each convolution's last few inputs, not the chunk's
    whole activations (a view of them did: about 300 MB a stream at the published size)."""
    decoder = StreamingDecoder(customvoice, first_chunk=20, max_chunk=20)
    for frame in torch.randint(0, 2048, (20, 16), generator=torch.Generator().manual_seed(5)).to(TEST_DEVICE):
        decoder.push(frame)
    tails = list(decoder.state().tails.values())
    held = {tail.untyped_storage().data_ptr(): tail.untyped_storage().nbytes() for tail in tails}
    assert tails and sum(held.values()) == sum(tail.numel() * tail.element_size() for tail in tails)
