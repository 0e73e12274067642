"""Chunked prefill (QWEN_TTS_PREFILL_CHUNK): a long prompt joins a busy batch a chunk per
step, so the rows already speaking keep stepping; its chunks depend on the prompt alone."""

from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from frame_generator import FrameGenerator
from helpers import TEST_DEVICE, LiveServer, cpu_settings
from qwen_tts import Qwen3TTSModel

from qwen_tts_api.engine.generation.batching import FrameBatch
from qwen_tts_api.engine.generation.prefill import Prefill
from qwen_tts_api.engine.generation.prompt import build_prompt
from qwen_tts_api.engine.generation.rows import RowSpec
from qwen_tts_api.engine.generation.sampling import SamplingParams

LONG = "A much longer sentence, with more words to read before speaking, and then a few more."


@pytest.fixture(scope="module")
def customvoice(demo_models):
    return Qwen3TTSModel.from_pretrained(str(demo_models["customvoice"]), device_map=TEST_DEVICE, dtype=torch.float32)


@pytest.fixture(scope="module")
def params(customvoice):
    return SamplingParams.from_generate_config(customvoice.generate_defaults)


def test_chunks_are_counted_from_the_end_and_match_the_whole_prefill(customvoice):
    prompt = build_prompt(customvoice, LONG, "English", speaker="Ryan").prefill
    model = customvoice.model.talker.model
    with torch.inference_mode():
        whole = Prefill(model, [prompt], chunk=prompt.shape[1])  # one chunk: the plain call
        whole.advance()
        expected = model(inputs_embeds=prompt, use_cache=True)
        chunked = Prefill(model, [prompt], chunk=7)
        ends = []
        while not chunked.finished:
            chunked.advance()
            ends.append(chunked.done)
    length = prompt.shape[1]
    assert length > 21
    assert ends == [length - 7 * k for k in range(len(ends) - 1, -1, -1)] and 1 <= ends[0] <= 7
    assert whole.hidden is not None and chunked.hidden is not None
    assert torch.equal(whole.hidden, expected.last_hidden_state[:, -1:])
    assert torch.allclose(chunked.hidden, whole.hidden, atol=1e-5)
    for a, b in zip(chunked.row_cache(0), whole.row_cache(0)):
        assert all(torch.allclose(x, y, atol=1e-5) for x, y in zip(a, b))
        assert all(x.shape[-2] == length for x in a)


def test_speaking_rows_step_between_the_chunks_of_a_joining_prompt(customvoice, params):
    short = build_prompt(customvoice, "Hello there.", "English", speaker="Vivian")
    long = build_prompt(customvoice, LONG, "English", speaker="Ryan")
    chunk = 8
    chunks = -(-long.prefill.shape[1] // chunk)
    expected = torch.stack(list(FrameGenerator(customvoice, short, params, max_frames=30)))
    batch = FrameBatch(customvoice, params, prefill_chunk=chunk)
    speaking = batch.add(short, max_frames=30)
    batch.step()
    joining = batch.add(long, max_frames=5)  # nothing runs yet: its chunks go with the steps
    first_frame_at, made = None, [expected[0]]
    assert len(expected) > chunks + 1  # the speaking row outlasts the joining prompt's prefill
    for step in range(1, chunks + 1):
        assert len(batch) == 2
        frames, _ = batch.step()
        rows = [row for row, _ in frames]
        assert speaking in rows, f"the speaking row made a frame at step {step}"
        made += [codes for row, codes in frames if row is speaking]
        if joining in rows and first_frame_at is None:
            first_frame_at = step
        if first_frame_at is None:
            assert batch.joining, "still prefilling"
    # One chunk at each step after it joined; its first frame at the step its last chunk ran.
    assert first_frame_at == chunks
    assert torch.equal(torch.stack(made), expected[: len(made)])


def test_a_row_cancelled_while_joining_leaves(customvoice, params):
    batch = FrameBatch(customvoice, params, prefill_chunk=8)
    batch.add(build_prompt(customvoice, "Hello there.", "English", speaker="Vivian"), max_frames=30)
    stop = {"now": False}
    joining = batch.add(build_prompt(customvoice, LONG, "English", speaker="Ryan"), 5, lambda: stop["now"])
    batch.step()
    stop["now"] = True
    frames, finished = batch.step()
    assert finished == [joining] and joining.error is None and joining.frames_made == 0
    assert len(batch) == 1 and not batch.joining and len(frames) == 1


def test_a_prefill_failing_midway_fails_its_rows_only(customvoice, params, monkeypatch):
    short = build_prompt(customvoice, "Hello there.", "English", speaker="Vivian")
    expected = torch.stack(list(FrameGenerator(customvoice, short, params, max_frames=6)))
    batch = FrameBatch(customvoice, params, prefill_chunk=8)
    speaking = batch.add(short, max_frames=6)
    joining = batch.add(build_prompt(customvoice, LONG, "English", speaker="Ryan"), max_frames=5)
    assert batch.joining
    model = customvoice.model.talker.model

    def broken(*args, **kwargs):
        raise RuntimeError("device lost")

    monkeypatch.setattr(model, "forward", broken)  # the next chunk's call of the package's modules
    frames, finished = batch.step()
    monkeypatch.undo()
    assert finished == [joining] and joining.error is not None
    assert "prefill" in str(joining.error) and not batch.joining
    made = [codes for row, codes in frames if row is speaking]
    while len(batch):
        made += [codes for row, codes in batch.step()[0] if row is speaking]
    assert torch.equal(torch.stack(made), expected), "the speaking row went on as alone"


def test_prompts_joining_at_once_are_prefilled_a_chunk_of_them_per_step(customvoice, params):
    """Four short prompts join a speaking row at once with room for two per chunk: two
    groups, one per step, the speaking row making a frame at each; every row's codes are
    its codes alone."""
    short = build_prompt(customvoice, "Hello there.", "English", speaker="Vivian")
    texts = ["One.", "Two words.", "Three more words.", "And four of them."]
    prompts = [build_prompt(customvoice, text, "English", speaker="Ryan") for text in texts]
    chunk = 2 * max(p.prefill.shape[1] for p in prompts)  # padded to the longest: two fit
    frames = 6
    alone = []
    for prompt in prompts:
        lone = FrameBatch(customvoice, params, prefill_chunk=chunk)
        lone.add(prompt, max_frames=frames)
        alone.append(torch.stack([codes for _ in range(frames + 1) for _, codes in lone.step()[0]]))
    expected = torch.stack(list(FrameGenerator(customvoice, short, params, max_frames=20)))
    batch = FrameBatch(customvoice, params, prefill_chunk=chunk)
    speaking = batch.add(short, max_frames=20)
    made = {speaking: [codes for _, codes in batch.step()[0]]}
    joining = batch.add_many([RowSpec(prompt, frames) for prompt in prompts])
    assert [len(group.rows) for group in batch.joining] == [2, 2]
    made |= {row: [] for row in joining}
    first_frames = []
    while len(batch):
        frames_made, _ = batch.step()
        first_frames.append(sum(1 for row, _ in frames_made if row in joining and not made[row]))
        for row, codes in frames_made:
            made[row].append(codes)
    assert first_frames[:3] == [2, 2, 0]  # a group a step
    assert torch.equal(torch.stack(made[speaking]), expected[: len(made[speaking])])
    for row, codes in zip(joining, alone):
        assert torch.equal(torch.stack(made[row]), codes)


@pytest.mark.slow  # starts a server
@pytest.mark.skipif(TEST_DEVICE != "cpu", reason="fbgemm's int8 kernel runs on the CPU")
def test_a_server_with_chunked_prefill_speaks_the_same_alone_and_joining(demo_models):
    """QWEN_TTS_PREFILL_CHUNK=8, int8: a seeded request that joins while another speaks is
    prefilled a chunk per step and gives the audio it gives alone."""
    settings = cpu_settings(customvoice_model_path=demo_models["customvoice"], quantize="int8", prefill_chunk=8)
    seeded = {"model": "qwen3-tts", "voice": "ryan", "input": LONG, "stream": False}
    seeded |= {"response_format": "pcm", "seed": 3, "temperature": 0.9}
    with LiveServer(settings) as server, httpx.Client(base_url=server.url, timeout=300) as http:
        alone = http.post("/v1/audio/speech", json=seeded).content
        engine = server.app.state.server.engine
        seen: list[tuple[int, bool]] = []  # (frames made, a prefill was still joining)
        remove = engine.add_step_observer(lambda step: seen.append((step.rows, bool(step.joining))))
        try:
            with ThreadPoolExecutor(1) as pool:
                speaking = {"model": "qwen3-tts", "voice": "vivian", "input": "Speaking first, for a while."}
                first = pool.submit(
                    http.post, "/v1/audio/speech", json=speaking | {"stream": False, "response_format": "pcm"}
                )
                while not seen:  # the first request is speaking
                    pass
                joined = http.post("/v1/audio/speech", json=seeded).content
                assert first.result().status_code == 200
        finally:
            remove()
        assert joined == alone
        assert any(joining for _, joining in seen), "the seeded prompt joined a chunk at a time"
