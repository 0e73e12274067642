"""The runner: carries out the policy's decisions on the models' batches and reports back.

It owns what touches tensors: each model's batch and step parts (built once, when the engine
takes the model), the clone-prompt cache, the rows' prefill, the step, and decoding each
frame to audio for its request. The scheduler (``scheduler.py``) decides with
``policy.py`` and updates each request's state from what the runner reports.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from ...constants import ModelKind
from ...voices.prompt import ClonePrompt
from ..errors import EngineUnavailable, generation_error
from ..generation.batching import BatchRow, FrameBatch, StepParts
from ..generation.clone import PromptCache
from ..generation.compiled import compile_choice, keep_compiled_graphs_in, talker_graph_rows
from ..generation.decoding import decode_together
from ..generation.sampling import SamplingParams
from ..models.loading import LoadedModel
from .jobs import EngineConfig
from .live_turn import LiveRequest
from .requests import Request


@dataclass(frozen=True)
class StepStats:
    """One batched step of one model, as the metrics see it."""

    kind: ModelKind
    rows: int  # frames made
    seconds: float
    cache_positions: int  # positions the batch's longest row holds


StepObserver = Callable[[StepStats], None]
log = logging.getLogger(__name__)


@dataclass
class StepOutcome:
    """What one step of a model's batch did to its requests."""

    stats: StepStats | None = None  # None when no row made a frame
    ended: list[tuple[Request, BatchRow]] = field(default_factory=list)  # rows that ended normally
    failed: list[tuple[Request, Exception]] = field(default_factory=list)


class BatchRunner:
    def __init__(self, models: Mapping[ModelKind, LoadedModel], config: EngineConfig):
        self.models = dict(models)
        self.config = config
        self.prompts = PromptCache(config.prompt_cache_size)
        self.params = {kind: SamplingParams.from_generate_config(m.tts.generate_defaults) for kind, m in models.items()}
        # The compact step of each model, built now (this joins its projection weights in place).
        self.parts = {kind: self._step_parts(kind, m) for kind, m in models.items()}
        self.batches = {kind: self.new_batch(kind) for kind in models}
        self._broken: set[ModelKind] = set()  # batches reset, to be renewed

    def _step_parts(self, kind: ModelKind, model: LoadedModel) -> StepParts:
        talker = model.tts.model.talker
        compiled, mode = compile_choice(self.config.compile, self.config.cuda_graphs, talker.device)
        if compiled:
            keep_compiled_graphs_in(self.config.compile_cache_dir)
            log.info("%s: compiled step (%s); graphs are compiled during warm-up", kind, mode or "default mode")
        rows = talker_graph_rows(talker.device)
        return StepParts.build(talker, self.params[kind], compiled=compiled, mode=mode, talker_rows=rows)

    def new_batch(self, kind: ModelKind) -> FrameBatch:
        return FrameBatch(self.models[kind].tts, self.params[kind], self.parts[kind], self.config.prefill_chunk)

    # --- encoders ---
    def look_up_prompt(self, request: Request) -> None:
        """A waiting request's inline reference: its clone prompt from the cache, if there."""
        reference = request.job.reference
        if reference is None or request.clone_prompt is not None:
            return
        if request.reference_key is None:
            request.reference_key = self.prompts.key(reference.waveform, reference.transcript)
        request.clone_prompt = self.prompts.lookup(request.reference_key)

    def encode(self, request: Request) -> None:
        """Run the encoders over the request's inline reference (raises on failure)."""
        reference = request.job.reference
        assert reference is not None
        tts = self.models[request.kind].tts
        request.clone_prompt = self.prompts.compute(tts, reference.waveform, reference.transcript)

    def clone_prompt(self, kind: ModelKind, waveform, transcript: str | None) -> ClonePrompt:
        """A clone prompt for this reference, from the cache when it can (a queued task's work)."""
        return self.prompts.get_or_compute(self.models[kind].tts, waveform, transcript)

    # --- rows ---
    def prefill(self, kind: ModelKind, requests: list[Request]) -> list[tuple[Request, Exception]]:
        """Start the current segment (or part) of each request; their prefills run as one
        batch. Returns the requests that could not start, with why."""
        model = self.models[kind]
        failed: list[tuple[Request, Exception]] = []
        specs, ready = [], []
        for request in requests:
            try:
                specs.append(request.next_row(model, self.params[kind], self.config))
                ready.append(request)
            except Exception as exc:
                log.exception("preparing a segment failed")
                failed.append((request, generation_error("prompt preparation", exc)))
        if not ready:
            return failed
        try:
            rows = self.batches[kind].add_many(specs)
        except Exception as exc:
            log.exception("prefill failed")
            return failed + [(request, generation_error("prefill", exc)) for request in ready]
        for request, row in zip(ready, rows):
            request.row = row
        return failed

    def feed_live(self, request: LiveRequest) -> None:
        request.feed_row(self.models[request.kind])

    def step(self, kind: ModelKind, owners: Mapping[str, Request]) -> StepOutcome:
        """One frame for every row of ``kind``'s batch that has its text; each frame goes to
        its request's decoder. ``owners``: the requests holding slots, by id."""
        batch, outcome = self.batches[kind], StepOutcome()
        started = time.perf_counter()
        try:
            made, finished = batch.step()
        except Exception as exc:  # the whole batch is unusable: fail its requests, start afresh
            log.exception("batch step failed")
            outcome.failed = self.reset(kind, owners, generation_error("a generation step", exc))
            return outcome
        if made:
            outcome.stats = StepStats(kind, len(made), time.perf_counter() - started, batch.cache_length)
        failed: set[str] = set()
        owned = [(request, codes) for row, codes in made if (request := _owner(row, owners)) is not None]
        self._open_together(kind, owned)
        for request, codes in owned:
            try:
                request.decoded(codes)
            except Exception as exc:
                log.exception("decoding failed")
                failed.add(request.id)
                outcome.failed.append((request, generation_error("decoding", exc)))
        for request in owners.values():
            if isinstance(request, LiveRequest) and request.kind == kind and request.id not in failed:
                try:
                    request.flush_if_waiting()
                except Exception as exc:
                    log.exception("decoding failed")
                    failed.add(request.id)
                    outcome.failed.append((request, generation_error("decoding", exc)))
        for row in finished:
            request = _owner(row, owners)
            if request is None or request.row is not row:
                continue
            request.row = None
            request.stream.usage.output_frames += row.frames_made
            if request.id in failed:  # failed above: its row has left already
                continue
            if row.error is not None:
                log.error("request failed: %s", row.error)
                outcome.failed.append((request, row.error))
            else:
                outcome.ended.append((request, row))
        return outcome

    def _open_together(self, kind: ModelKind, owned: list[tuple[Request, torch.Tensor]]) -> None:
        """Streams whose first chunks this step completes decode them together (``decoding.decode_together``)."""
        openings = [
            (request.decoder, chunk)
            for request, codes in owned
            if request.decoder is not None and (chunk := request.opening_with(codes)) is not None
        ]
        if len(openings) > 1:
            try:
                decode_together(self.models[kind].tts, openings)
            except Exception:  # noqa: BLE001 - only a saving: each stream then decodes alone
                log.exception("grouping first chunks failed")

    def remove(
        self, request: Request, owners: Mapping[str, Request], exc: Exception
    ) -> list[tuple[Request, Exception]]:
        """Take a failed request's row out of its batch. If even that fails, the batch is in
        an unknown state: every request in it fails (returned, with ``request``'s own)."""
        row, request.row = request.row, None
        if row is None:
            return []
        try:
            self.batches[request.kind].remove(row)
        except Exception:
            log.exception("removing a failed row failed")
            return self.reset(request.kind, owners, exc)
        return []

    def reset(self, kind: ModelKind, owners: Mapping[str, Request], exc: Exception) -> list[tuple[Request, Exception]]:
        """``kind``'s batch is unusable: every request in it fails (returned, to be answered),
        and ``renew`` replaces the batch."""
        failed: list[tuple[Request, Exception]] = []
        for row in list(self.batches[kind].rows):
            request = _owner(row, owners)
            if request is not None and request.row is row:
                request.row = None
                failed.append((request, exc))
        self._broken.add(kind)
        return failed

    def renew(self) -> None:
        """A fresh batch for each one ``reset``. If not even that works (the device is gone),
        the engine cannot go on: EngineUnavailable."""
        for kind in list(self._broken):
            try:
                self.batches[kind] = self.new_batch(kind)
            except Exception as fatal:  # it stays broken: every later renew says so again
                raise EngineUnavailable(
                    f"the {kind} model cannot start a new batch after a failed step ({type(fatal).__name__}: {fatal})"
                ) from fatal
            self._broken.discard(kind)

    def rows_can_progress(self) -> bool:
        """Whether a step would do something without new text arriving (a joining prefill
        always can)."""
        return any(batch.can_progress for batch in self.batches.values())

    def generating(self) -> int:
        """Rows in the batches now (joining ones included)."""
        return sum(len(batch) for batch in self.batches.values())


def _owner(row: BatchRow, owners: Mapping[str, Request]) -> Request | None:
    return None if row.owner is None else owners.get(row.owner)
