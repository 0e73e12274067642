"""Same codes alone or batched: requests of different lengths joining and leaving mid-flight."""

import pytest
import torch
from qwen_tts import Qwen3TTSModel

from qwen_tts_api.engine.batching import FrameBatch
from qwen_tts_api.engine.generation import FrameGenerator
from qwen_tts_api.engine.prompt import build_prompt
from qwen_tts_api.engine.sampling import SamplingParams

REQUESTS = [  # text, speaker, language, frames, joins before step
    ("Hello there.", "Vivian", "English", 12, 0),
    ("A much longer sentence, with more words to read before speaking.", "Ryan", "Auto", 20, 0),
    ("Short.", "Eric", "Chinese", 6, 3),
    ("Another request arriving later on.", "Sohee", "Korean", 15, 5),
]


@pytest.fixture(scope="module")
def customvoice(demo_models):
    return Qwen3TTSModel.from_pretrained(str(demo_models["customvoice"]), device_map="cpu", dtype=torch.float32)


def test_batched_codes_equal_solo_codes(customvoice):
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    prompts = [build_prompt(customvoice, text, lang, speaker=spk) for text, spk, lang, _, _ in REQUESTS]
    solo = [torch.stack(list(FrameGenerator(customvoice, p, params, max_frames=r[3])))
            for p, r in zip(prompts, REQUESTS)]

    batch = FrameBatch(customvoice, params)
    rows, made = {}, {i: [] for i in range(len(REQUESTS))}
    widest = 0
    for step in range(40):
        # Requests that join at the same step prefill together (left-padded: lengths differ).
        joining = [i for i, request in enumerate(REQUESTS) if request[4] == step]
        if joining:
            added = batch.add_many([(prompts[i], REQUESTS[i][3], None) for i in joining])
            rows.update(zip(joining, added))
        widest = max(widest, len(batch))
        frames, _ = batch.step()
        for row, codes in frames:
            made[next(i for i, r in rows.items() if r is row)].append(codes)
        if not len(batch) and len(rows) == len(REQUESTS):
            break
    assert widest == 4, "all four requests were in one batch at some point"
    assert prompts[0].prefill.shape[1] != prompts[1].prefill.shape[1]  # so their joint prefill was padded
    for i, expected in enumerate(solo):
        assert torch.equal(torch.stack(made[i]), expected), f"request {i}"


def test_cancelled_row_leaves_and_others_continue(customvoice):
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    prompts = [build_prompt(customvoice, "Hello there.", "English", speaker=s) for s in ("Vivian", "Ryan")]
    expected = torch.stack(list(FrameGenerator(customvoice, prompts[1], params, max_frames=10)))
    stop = {"now": False}
    batch = FrameBatch(customvoice, params)
    first = batch.add(prompts[0], max_frames=30, should_stop=lambda: stop["now"])
    second = batch.add(prompts[1], max_frames=10)
    got = []
    for step in range(12):
        stop["now"] = step == 4
        frames, finished = batch.step()
        got += [codes for row, codes in frames if row is second]
        if first in finished:
            assert first.frames_made == 4
    assert first not in batch.rows and len(batch) == 0
    assert torch.equal(torch.stack(got), expected)
