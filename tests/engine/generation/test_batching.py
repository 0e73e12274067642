"""Same codes alone or batched: requests of different lengths joining and leaving mid-flight."""

import pytest
import torch
from frame_generator import FrameGenerator
from helpers import TEST_DEVICE
from qwen_tts import Qwen3TTSModel

from qwen_tts_api.engine.generation import code_predictor
from qwen_tts_api.engine.generation.batching import FrameBatch
from qwen_tts_api.engine.generation.compiled import talker_graph_rows
from qwen_tts_api.engine.generation.kv_cache import SlotCache
from qwen_tts_api.engine.generation.prompt import build_prompt
from qwen_tts_api.engine.generation.rows import RowSpec
from qwen_tts_api.engine.generation.sampling import RowSampling, SamplingParams
from qwen_tts_api.engine.generation.step_parts import StepParts
from qwen_tts_api.engine.models.quantize import quantize_int8

REQUESTS = [  # text, speaker, language, frames, joins before step
    ("Hello there.", "Vivian", "English", 12, 0),
    ("A much longer sentence, with more words to read before speaking.", "Ryan", "Auto", 20, 0),
    ("Short.", "Eric", "Chinese", 6, 3),
    ("Another request arriving later on.", "Sohee", "Korean", 15, 5),
]


@pytest.fixture(scope="module")
def customvoice(demo_models):
    return Qwen3TTSModel.from_pretrained(str(demo_models["customvoice"]), device_map=TEST_DEVICE, dtype=torch.float32)


@pytest.fixture(scope="module")
def customvoice_int8(demo_models):
    """QWEN_TTS_QUANTIZE=int8: int8 weights and per-row int8 activations (fbgemm)."""
    tts = Qwen3TTSModel.from_pretrained(str(demo_models["customvoice"]), device_map=TEST_DEVICE, dtype=torch.float32)
    quantize_int8(tts.model.talker, "dynamic")
    return tts


INT8 = pytest.mark.skipif(TEST_DEVICE != "cpu", reason="fbgemm's int8 kernel runs on the CPU")
CUDA = pytest.mark.skipif(not TEST_DEVICE.startswith("cuda"), reason="CUDA graphs need a GPU (bench/gpu_check.sh)")


@pytest.mark.parametrize(
    ("model", "compiled", "prefill_chunk"),
    [
        ("customvoice", False, 0),
        pytest.param("customvoice_int8", False, 0, marks=INT8),
        # QWEN_TTS_PREFILL_CHUNK: prompts prefilled a few positions at a time (one chunk per
        # step while others speak) make the same codes joining a busy batch as alone.
        ("customvoice", False, 6),
        pytest.param("customvoice_int8", False, 6, marks=INT8),
        # QWEN_TTS_COMPILE: the talker step and the predictor's frame as torch.compile graphs
        # (fullgraph: a graph break fails the test) give the eager solo codes, batched.
        pytest.param("customvoice", True, 0, marks=pytest.mark.slow),
        pytest.param("customvoice_int8", True, 0, marks=[INT8, pytest.mark.slow]),
        # QWEN_TTS_CUDA_GRAPHS=auto: the same graphs recorded and replayed as CUDA graphs.
        pytest.param("customvoice", "reduce-overhead", 0, marks=[CUDA, pytest.mark.slow]),
    ],
)
def test_batched_codes_equal_solo_codes(model, compiled, prefill_chunk, request):
    customvoice = request.getfixturevalue(model)
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    prompts = [build_prompt(customvoice, text, lang, speaker=spk) for text, spk, lang, _, _ in REQUESTS]
    if prefill_chunk:  # alone, the same chunks (back to back)
        solo = [lone_codes(customvoice, params, p, r[3], prefill_chunk) for p, r in zip(prompts, REQUESTS)]
    else:  # alone, the package's whole prefill
        solo = [
            torch.stack(list(FrameGenerator(customvoice, p, params, max_frames=r[3])))
            for p, r in zip(prompts, REQUESTS)
        ]

    mode = compiled if isinstance(compiled, str) else None
    parts = StepParts.build(customvoice.model.talker, params, compiled=bool(compiled), mode=mode)
    batch = FrameBatch(customvoice, params, parts, prefill_chunk)
    rows, made = {}, {i: [] for i in range(len(REQUESTS))}
    widest, chunked_steps = 0, 0
    for step in range(40):
        # Requests that join at the same step prefill together (left-padded: lengths differ).
        joining = [i for i, request in enumerate(REQUESTS) if request[4] == step]
        if joining:
            added = batch.add_many([RowSpec(prompts[i], REQUESTS[i][3]) for i in joining])
            rows.update(zip(joining, added))
        widest = max(widest, len(batch))
        chunked_steps += bool(batch.joining)
        frames, _ = batch.step()
        for row, codes in frames:
            made[next(i for i, r in rows.items() if r is row)].append(codes)
        if not len(batch) and len(rows) == len(REQUESTS):
            break
    assert widest == 4, "all four requests were in one batch at some point"
    assert prompts[0].prefill.shape[1] != prompts[1].prefill.shape[1]  # so their joint prefill was padded
    for i, expected in enumerate(solo):
        assert torch.equal(torch.stack(made[i]), expected), f"request {i}"
    # The first two join an empty batch: prefilled whole. The later ones join speaking rows.
    assert (chunked_steps > 2) == bool(prefill_chunk)
    if compiled:  # and the graphs ran: none failed over to the eager forward
        assert parts.talker_graph is not None and not parts.talker_graph.broken
        assert parts.code_predictor.graph is not None and not parts.code_predictor.graph.broken


def lone_codes(tts, params: SamplingParams, prompt, frames: int, prefill_chunk: int) -> torch.Tensor:
    """A prompt's codes generated alone in a batch of its own."""
    batch = FrameBatch(tts, params, prefill_chunk=prefill_chunk)
    batch.add(prompt, max_frames=frames)
    made = []
    while len(batch):
        made += [codes for _, codes in batch.step()[0]]
    return torch.stack(made)


# Each request's own sampling: the model's (greedy on the demo model), sampled with the
# model's top-k, top-k past the model's (every token considered: a full sort), nucleus.
OWN_SAMPLING = [
    dict(),
    dict(temperature=0.9),
    dict(temperature=0.7, top_k=0),
    dict(temperature=1.1, top_p=0.8),
]


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_rows_with_their_own_sampling_make_their_solo_codes(customvoice, compiled):
    """Seeded rows that ask for different temperatures, top-k and top-p share a batch (the
    code predictor's frame and the talker's choice then take parameters per row, and rows
    whose top-k is wider than the model's choose apart), and each makes the codes it makes
    alone; compiled, the batch runs the same graphs whatever the rows asked for."""
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    prompts = [build_prompt(customvoice, text, lang, speaker=spk) for text, spk, lang, _, _ in REQUESTS]

    def sampling(i: int) -> RowSampling:  # a fresh generator, seeded as the row's
        return RowSampling.seeded(params.overridden(**OWN_SAMPLING[i]), 11 + i, TEST_DEVICE)

    frames = 8
    solo = []
    for i, prompt in enumerate(prompts):
        batch = FrameBatch(customvoice, params)
        batch.add(prompt, frames, sampling=sampling(i))
        solo.append(torch.stack([codes for _ in range(frames + 1) for _, codes in batch.step()[0]]))
    assert not torch.equal(solo[1], solo[2]), "the settings change the codes"
    parts = StepParts.build(customvoice.model.talker, params, compiled=compiled)
    batch = FrameBatch(customvoice, params, parts)
    rows = batch.add_many([RowSpec(p, frames, sampling=sampling(i)) for i, p in enumerate(prompts)])
    made: dict[int, list] = {i: [] for i in range(len(rows))}
    while len(batch):
        for row, codes in batch.step()[0]:
            made[rows.index(row)].append(codes)
    for i, expected in enumerate(solo):
        assert torch.equal(torch.stack(made[i]), expected), f"row {i}: {OWN_SAMPLING[i]}"


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


@pytest.mark.slow  # hundreds of rows joining and leaving
def test_cache_stays_bounded_under_continuous_joins_and_leaves(customvoice):
    """The batch never empties for hundreds of steps; its talker cache holds no more positions
    than its longest row needs, and every row's codes still equal its solo codes."""
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    texts = ["Hi.", "A somewhat longer sentence to read first.", "Medium length words here.", "Okay then, go."]
    speakers = ["Vivian", "Ryan", "Eric", "Sohee"]
    prompts = [build_prompt(customvoice, texts[i % 4], "English", speaker=speakers[(i * 3) % 4]) for i in range(4)]
    batch = FrameBatch(customvoice, params)
    made: dict[int, list] = {}
    owner: dict[int, int] = {}
    spans: dict[int, tuple[int, int]] = {}  # row number -> (prompt index, frames)
    number, longest_seen = 0, 0
    for step in range(400):
        # Two or three rows alive at all times, each short-lived, joining at different steps.
        while len(batch) < 2 + (step // 50) % 2:
            frames = 4 + (number * 7) % 17
            row = batch.add(prompts[number % 4], max_frames=frames)
            owner[id(row)], spans[number], made[number] = number, (number % 4, frames), []
            number += 1
        frames_out, finished = batch.step()
        for row, codes in frames_out:
            made[owner[id(row)]].append(codes)
        for row in finished:
            owner.pop(id(row))
        if len(batch):
            assert batch.cache_length <= max(r.position for r in batch.rows), f"step {step}"
            # Memory too: the preallocated slots and length never run far past what is needed.
            needed = max(r.position for r in batch.rows) + 1
            assert batch.cache.slots <= 4 and batch.cache.capacity <= 2 * SlotCache.LENGTH_STEP * -(-needed // 256)
        longest_seen = max(longest_seen, batch.cache_length)
    assert number > 40  # many rows came and went
    assert longest_seen <= max(p.prefill.shape[1] for p in prompts) + 21
    solo = {}
    for n in [0, 1, 5, 17, number // 2, number - 3]:  # early rows, and rows that joined a long-lived batch
        index, frames = spans[n]
        if (index, frames) not in solo:
            solo[index, frames] = torch.stack(
                list(FrameGenerator(customvoice, prompts[index], params, max_frames=frames))
            )
        assert torch.equal(torch.stack(made[n]), solo[index, frames]), f"row {n}"


def test_non_finite_predictor_logits_fail_their_row_only(customvoice, monkeypatch):
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    prompts = [build_prompt(customvoice, "Hello there.", "English", speaker=s) for s in ("Vivian", "Ryan")]
    expected = torch.stack(list(FrameGenerator(customvoice, prompts[0], params, max_frames=10)))
    head = customvoice.model.talker.code_predictor.lm_head[5]
    calls = {"n": 0}
    rows_through = code_predictor.per_row  # how the code predictor applies its output heads

    def poison_row_one_at_frame_three(x, weight, bias=None):
        output = rows_through(x, weight, bias)
        if weight is head.weight:
            calls["n"] += 1
            if calls["n"] == 3 and output.shape[0] == 2:
                output[1] = float("nan")
        return output

    batch = FrameBatch(customvoice, params)
    kept, poisoned = batch.add_many([RowSpec(prompts[0], 10), RowSpec(prompts[1], 10)])
    monkeypatch.setattr(code_predictor, "per_row", poison_row_one_at_frame_three)
    got, failed_frames = [], []
    while len(batch):
        frames, finished = batch.step()
        got += [codes for row, codes in frames if row is kept]
        failed_frames += [codes for row, codes in frames if row is poisoned]
        assert all(row.error is None for row in finished if row is kept)
    monkeypatch.undo()
    assert poisoned.error is not None and "non-finite" in str(poisoned.error)
    assert len(failed_frames) == 2, "the poisoned frame itself is never emitted"
    assert torch.equal(torch.stack(got), expected)


@pytest.mark.slow  # compiles the step's graphs
# "reduce-overhead" (CUDA graphs) marks the caches as fixed addresses; on a CPU the compiler
# skips the recording, but it traces and guards as on a GPU, so the recompiles show here too.
@pytest.mark.parametrize("mode", [None, "reduce-overhead"])
def test_compiled_step_does_not_recompile_as_the_cache_grows(customvoice, mode):
    """The compiled step's graphs take any number of rows and any cache length: a row that
    outgrows the first cache bucket (256 positions), and rows joining and leaving, never make
    the compiler run again mid-request (minutes on a CPU), and the codes stay the solo codes."""
    torch._dynamo.reset()  # each mode compiles from scratch (and is counted on its own)
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    parts = StepParts.build(customvoice.model.talker, params, compiled=True, mode=mode)
    prompt = build_prompt(customvoice, "A long one, to outgrow the first cache bucket.", "English", speaker="Ryan")
    short = build_prompt(customvoice, "Short.", "English", speaker="Eric")
    batch = FrameBatch(customvoice, params, parts)
    batch.add_many([RowSpec(prompt, 4), RowSpec(short, 3)])  # every graph: two rows, then one
    while len(batch):
        batch.step()
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    frames = SlotCache.LENGTH_STEP + 20 - prompt.prefill.shape[1]
    long_row = batch.add(prompt, max_frames=frames)
    made, capacity = [], 0
    for step in range(frames + 1):
        if step in (10, 40):
            batch.add(short, max_frames=6)  # a second row for a while: the batch grows and shrinks
        for row, codes in batch.step()[0]:
            if row is long_row:
                made.append(codes)
        capacity = max(capacity, batch.cache.capacity)
    assert capacity == 2 * SlotCache.LENGTH_STEP, "the cache outgrew its first bucket"
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    solo = torch.stack(list(FrameGenerator(customvoice, prompt, params, max_frames=frames)))
    assert torch.equal(torch.stack(made), solo)


def test_a_failing_compiled_step_falls_back_to_the_eager_one(customvoice, caplog):
    """A compiled forward that raises (no compiler, a CUDA-graph limitation...) is logged
    once; the eager forward takes over for good and the codes are the solo codes: a seeded
    row that samples uses the draws made for the graph, not fresh ones."""
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    sampled = params.overridden(temperature=0.9)
    parts = StepParts.build(customvoice.model.talker, params, compiled=True)
    calls = []

    def failing(*args):
        calls.append(len(args))
        raise RuntimeError("no C++ compiler")

    assert parts.talker_graph is not None and parts.code_predictor.graph is not None
    parts.talker_graph._graph = parts.code_predictor.graph._graph = failing
    text, speaker, language, frames, _ = REQUESTS[0]
    prompt = build_prompt(customvoice, text, language, speaker=speaker)
    batch = FrameBatch(customvoice, params, parts)
    row = batch.add(prompt, max_frames=frames, sampling=RowSampling.seeded(sampled, 3, TEST_DEVICE))
    made = []
    while len(batch):
        made += [codes for r, codes in batch.step()[0] if r is row]
    alone = FrameBatch(customvoice, params)
    alone.add(prompt, max_frames=frames, sampling=RowSampling.seeded(sampled, 3, TEST_DEVICE))
    solo = torch.stack([codes for _ in range(frames + 1) for _, codes in alone.step()[0]])
    assert torch.equal(torch.stack(made), solo)
    assert parts.talker_graph.broken and parts.code_predictor.graph.broken
    assert len(calls) == 2, "each compiled forward was tried once"
    assert sum("runs eagerly from now on" in r.getMessage() for r in caplog.records) == 2


def test_a_talker_graph_for_one_row_leaves_batches_to_the_eager_step(customvoice):
    """On a CPU the server compiles the talker step for one row only (``talker_graph_rows``):
    a batch of two then steps eagerly, without failing the graph over, and still makes the
    solo codes."""
    params = SamplingParams.from_generate_config(customvoice.generate_defaults)
    parts = StepParts.build(customvoice.model.talker, params, compiled=True, talker_rows=1)
    assert parts.talker_graph is not None and parts.code_predictor.graph is not None
    calls = []

    def recorded(*args):  # stands for the compiled graph: records the rows it is given, and
        calls.append(args[0].shape[0])  # returns nothing, so the eager step runs
        return

    parts.talker_graph._graph = recorded
    parts.code_predictor.graph = None  # the code predictor's graph is not what this test is about
    prompts = [build_prompt(customvoice, text, lang, speaker=spk) for text, spk, lang, _, _ in REQUESTS[:2]]
    batch = FrameBatch(customvoice, params, parts)
    rows = batch.add_many([RowSpec(p, 5) for p in prompts])
    made: dict[int, list] = {0: [], 1: []}
    while len(batch) == 2:
        for row, codes in batch.step()[0]:
            made[rows.index(row)].append(codes)
    assert 2 not in calls and not parts.talker_graph.broken
    for i, prompt in enumerate(prompts):
        solo = torch.stack(list(FrameGenerator(customvoice, prompt, params, max_frames=5)))
        assert torch.equal(torch.stack(made[i]), solo)
    assert talker_graph_rows(torch.device("cpu")) == 1 and talker_graph_rows(torch.device("cuda")) is None
