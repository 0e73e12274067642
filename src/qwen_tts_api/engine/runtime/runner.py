"""The runner: carries out the scheduler's orders on the models' batches and reports back.

It owns everything that touches tensors: each model's batch and step parts (built once, when
the engine takes the model), the clone-prompt cache, and per request (by id) a ``Voicing``
with its prompt, rows and audio. Its one door is ``execute(Orders) -> Outcome``
(``orders.py``); the scheduler (``scheduler.py``) decides with ``policy.py`` and updates each
request's state from the outcome. Failures stay with the requests they touch: a request
reported failed has left its batch already; a step that raises fails its batch, which the
next ``execute`` replaces first (or raises EngineUnavailable when it cannot).
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Mapping

import numpy as np
import torch

from ...constants import ModelKind
from ...voices.prompt import ClonePrompt
from ..errors import EngineUnavailable, generation_error
from ..generation.batching import FrameBatch
from ..generation.clone import PromptCache
from ..generation.compiled import StepState, compile_choice, keep_compiled_graphs_in, talker_graph_rows
from ..generation.first_chunks import group_first_chunks
from ..generation.rows import BatchRow
from ..generation.sampling import SamplingParams
from ..generation.step_parts import StepParts
from ..generation.streaming_decoder import decodes_together
from ..models.loading import LoadedModel
from .audio_worker import AudioWorker
from .jobs import EngineConfig
from .orders import Ended, LivePart, Orders, Outcome, Start, StepStats, Ticket
from .stream_audio import AudioFailure, StreamAudio
from .voicing import Voicing

log = logging.getLogger(__name__)


class BatchRunner:
    def __init__(
        self,
        models: Mapping[ModelKind, LoadedModel],
        config: EngineConfig,
        audio_worker: AudioWorker | None = None,
        report_audio_failure: AudioFailure = lambda request_id, exc: None,
    ):
        """``audio_worker``: the thread that decodes, if any (the streams it orders are given
        it too); ``report_audio_failure``: where decoding that failed there is reported (the
        scheduler's inbox)."""
        self._models = dict(models)
        self._config = config
        self._prompts = PromptCache(config.prompt_cache_size)
        self._params = {
            kind: SamplingParams.from_generate_config(m.tts.generate_defaults) for kind, m in models.items()
        }
        # The compact step of each model, built now (this joins its projection weights in place).
        self._parts = {kind: self._step_parts(kind, m) for kind, m in models.items()}
        self._batches = {kind: self._new_batch(kind) for kind in models}
        self._broken: set[ModelKind] = set()  # batches reset, to be renewed
        self._worker = audio_worker
        self._report_audio_failure = report_audio_failure
        self._voicings: dict[str, Voicing] = {}
        self._steps = dict.fromkeys(models, 0)  # steps each batch made (decoding together keeps time by it)

    def _step_parts(self, kind: ModelKind, model: LoadedModel) -> StepParts:
        talker = model.tts.model.talker
        compiled, mode = compile_choice(self._config.compile, self._config.cuda_graphs, talker.device)
        if compiled:
            keep_compiled_graphs_in(self._config.compile_cache_dir)
            log.info("%s: compiled step (%s); graphs are compiled during warm-up", kind, mode or "default mode")
        rows = talker_graph_rows(talker.device)
        return StepParts.build(talker, self._params[kind], compiled=compiled, mode=mode, talker_rows=rows)

    def _new_batch(self, kind: ModelKind) -> FrameBatch:
        return FrameBatch(self._models[kind].tts, self._params[kind], self._parts[kind], self._config.prefill_chunk)

    # --- what the scheduler asks (runtime.orders.Runner) ---
    @property
    def kinds(self) -> list[ModelKind]:
        return list(self._models)

    def execute(self, orders: Orders) -> Outcome:
        self._renew()  # a batch reset by the last orders (the outcome that said so came first)
        outcome = Outcome()
        for request_id in orders.drop:
            self._drop(request_id, outcome)
        for ticket in orders.look_up:
            self._look_up(ticket, outcome)
        if orders.encode is not None:
            self._encode(orders.encode, outcome)
        for ticket, part in orders.count:
            self._contained(self._voicing(ticket), "live text", outcome, lambda v, p=part: self._count(v, p, outcome))
        for request_id, part in orders.feed:
            if (voicing := self._voicings.get(request_id)) is not None and voicing.row is not None:
                self._contained(voicing, "live text", outcome, lambda v, p=part: self._feed(v, p, outcome))
        starts: dict[ModelKind, list[Start]] = defaultdict(list)
        for start in orders.start:
            starts[start.ticket.kind].append(start)
        for kind, group in starts.items():
            self._start(kind, group, outcome)
        if orders.step:
            for kind, batch in self._batches.items():
                if len(batch):
                    self._step(kind, outcome)
        return outcome

    def can_progress(self) -> bool:
        return any(batch.can_progress for batch in self._batches.values())

    def generating(self, kind: ModelKind | None = None) -> int:
        """Rows in the batches now (joining ones included); of one model's, given ``kind``."""
        return sum(len(batch) for k, batch in self._batches.items() if kind in (None, k))

    def wait_for_first_audio(self) -> None:
        if self._worker is not None:
            self._worker.wait_for_first_audio()

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()  # after what is queued: the last requests' audio and ends

    # --- what the engine asks (model calls on the scheduler thread, and facts) ---
    def clone_prompt(self, kind: ModelKind, waveform: np.ndarray, transcript: str | None) -> ClonePrompt:
        """A clone prompt for this reference, from the cache when it can."""
        return self._prompts.get_or_compute(self._models[kind].tts, waveform, transcript)

    def prompt_cache_stats(self) -> tuple[int, int]:
        """Clone-prompt cache (hits, misses) so far."""
        return self._prompts.hits, self._prompts.misses

    def step_state(self, kind: ModelKind) -> StepState:
        """How ``kind``'s steps run: compiled while a graph of it runs (one that failed hands its
        part to the eager forward), else eagerly."""
        parts = self._parts[kind]
        states = {graph.state for graph in (parts.talker_graph, parts.code_predictor.graph) if graph is not None}
        return "compiled" if "compiled" in states else "eager"

    def compiled_rows(self, kind: ModelKind) -> int | None:
        """Batches up to how many rows step through ``kind``'s compiled talker graph (0: none
        is compiled; None: any size)."""
        graph = self._parts[kind].talker_graph
        return 0 if graph is None else graph.max_rows

    # --- requests ---
    def _voicing(self, ticket: Ticket) -> Voicing:
        voicing = self._voicings.get(ticket.request_id)
        if voicing is None:
            job = ticket.job
            segments = None if job.live is not None else len(job.text.segments)
            together = self._decodes_together(ticket.kind)
            audio = StreamAudio(
                ticket.request_id, ticket.stream, self._worker, self._report_audio_failure, segments, together
            )
            voicing = self._voicings[ticket.request_id] = Voicing(ticket, audio, clone_prompt=job.voice_prompt)
        return voicing

    def _drop(self, request_id: str, outcome: Outcome) -> None:
        voicing = self._voicings.pop(request_id, None)
        if voicing is not None:
            self._remove_row(voicing, outcome)

    def _look_up(self, ticket: Ticket, outcome: Outcome) -> None:
        """An inline reference's clone prompt from the cache, if there."""
        voicing, reference = self._voicing(ticket), ticket.job.reference
        if reference is not None and voicing.clone_prompt is None:
            if voicing.reference_key is None:
                voicing.reference_key = self._prompts.key(reference.waveform, reference.transcript)
            voicing.clone_prompt = self._prompts.lookup(voicing.reference_key)
        if voicing.clone_prompt is not None:
            outcome.prompts.add(ticket.request_id)

    def _encode(self, ticket: Ticket, outcome: Outcome) -> None:
        """Run the encoders over the request's inline reference."""
        voicing, reference = self._voicing(ticket), ticket.job.reference
        assert reference is not None
        try:
            tts = self._models[ticket.kind].tts
            voicing.clone_prompt = self._prompts.compute(tts, reference.waveform, reference.transcript)
        except EngineUnavailable:
            raise
        except Exception as exc:
            log.exception("admitting a request failed")
            outcome.failed.append((ticket.request_id, generation_error("reference encoding", exc)))
            return
        outcome.prompts.add(ticket.request_id)

    def _count(self, voicing: Voicing, part: LivePart, outcome: Outcome) -> None:
        outcome.counts[voicing.request_id] = voicing.count(self._models[voicing.ticket.kind], part)

    def _feed(self, voicing: Voicing, part: LivePart, outcome: Outcome) -> None:
        voicing.feed(self._models[voicing.ticket.kind], part)
        self._flush_if_waiting(voicing, outcome)

    def _contained(self, voicing: Voicing, stage: str, outcome: Outcome, work) -> None:
        """Work for one request whose failure fails that request alone (its client is told
        ``stage``); one that stops the engine goes on up."""
        try:
            work(voicing)
        except EngineUnavailable:
            raise
        except Exception as exc:
            log.exception("%s failed for %s", stage, voicing.request_id)
            self._fail(voicing, generation_error(stage, exc), outcome)

    def _flush_if_waiting(self, voicing: Voicing, outcome: Outcome) -> None:
        """A live row that has read all its text waits: what it made is heard now."""
        row = voicing.row
        assert row is not None
        waiting = outcome.waiting_for_text[voicing.request_id] = row.waiting_for_text
        if waiting:
            voicing.audio.flush_waiting(row.frames_made, voicing.first_chunk)

    # --- rows ---
    def _start(self, kind: ModelKind, starts: list[Start], outcome: Outcome) -> None:
        """Start each request's segment (or live part); their prefills run as one batch."""
        model, params = self._models[kind], self._params[kind]
        specs, ready = [], []
        for start in starts:
            voicing = self._voicing(start.ticket)
            try:
                if start.part is not None:
                    specs.append(voicing.part_row(model, params, self._config, start.part))
                else:
                    specs.append(voicing.segment_row(model, params, self._config, start.index))
                voicing.index = start.index
                ready.append(voicing)
            except Exception as exc:
                log.exception("preparing a segment failed")
                outcome.failed.append((voicing.request_id, generation_error("prompt preparation", exc)))
        if not ready:
            return
        try:
            rows = self._batches[kind].add_many(specs)
        except Exception as exc:
            log.exception("prefill failed")
            outcome.failed += [(voicing.request_id, generation_error("prefill", exc)) for voicing in ready]
            return
        for voicing, row in zip(ready, rows):
            voicing.row = row

    def _step(self, kind: ModelKind, outcome: Outcome) -> None:
        """One frame for every row of ``kind``'s batch that has its text; each frame goes to
        its request's audio."""
        batch = self._batches[kind]
        started = time.perf_counter()
        try:
            made, finished = batch.step()
        except Exception as exc:  # the whole batch is unusable: fail its requests, start afresh
            log.exception("batch step failed")
            self._reset(kind, generation_error("a generation step", exc), outcome)
            return
        if made:
            seconds = time.perf_counter() - started
            outcome.stats.append(StepStats(kind, len(made), seconds, batch.cache_length, batch.joining_rows))
        speaking = self._speaking(kind)
        owned = [(voicing, codes) for row, codes in made if (voicing := speaking.get(id(row))) is not None]
        self._group_first_chunks(kind, owned)
        for voicing, codes in owned:
            self._contained(voicing, "decoding", outcome, lambda v, c=codes: v.audio.frame(c))
        self._steps[kind] += 1
        if self._decodes_together(kind):
            self._decode_due(kind, speaking, {id(row) for row in finished if row.error is None}, outcome)
        for voicing in list(self._voicings.values()):
            if voicing.ticket.job.live is not None and voicing.ticket.kind == kind and voicing.row is not None:
                self._contained(voicing, "decoding", outcome, lambda v: self._flush_if_waiting(v, outcome))
        for row in finished:
            voicing = speaking.get(id(row))
            if voicing is None or voicing.row is not row:
                continue  # failed above (its row has left), or dropped
            voicing.row = None
            voicing.ticket.stream.usage.output_frames += row.frames_made
            if row.error is not None:
                log.error("request failed: %s", row.error)
                outcome.failed.append((voicing.request_id, row.error))
            else:
                self._contained(voicing, "decoding", outcome, lambda v, r=row: self._row_ended(v, r, outcome))

    def _row_ended(self, voicing: Voicing, row: BatchRow, outcome: Outcome) -> None:
        """A row that ended normally: its last audio (unless its client is gone), then the
        segment's pause; the scheduler decides what follows."""
        ticket = voicing.ticket
        if not ticket.stream.should_stop():
            voicing.audio.end()
            if ticket.job.live is not None:
                ticket.stream.usage.input_tokens += row.prompt.text_tokens
            else:
                voicing.audio.silence(ticket.job.text.segments[voicing.index].pause_after)
        outcome.ended.append(Ended(voicing.request_id))

    def _group_first_chunks(self, kind: ModelKind, owned: list[tuple[Voicing, torch.Tensor]]) -> None:
        """Streams whose first chunks this step completes decode them together (``first_chunks.py``)."""
        completing = [
            (first, chunk)
            for voicing, codes in owned
            if (first := voicing.audio.first) is not None and (chunk := first.completed_by(codes)) is not None
        ]
        if len(completing) > 1:
            try:
                group_first_chunks(self._models[kind].tts, completing)
            except Exception:  # noqa: BLE001 - only a saving: each stream then decodes alone
                log.exception("grouping first chunks failed")

    def _decodes_together(self, kind: ModelKind) -> bool:
        return decodes_together(self._models[kind].tts, self._config.decode_together)

    def _decode_due(self, kind: ModelKind, speaking: dict[int, Voicing], ending: set[int], outcome: Outcome) -> None:
        """Chunks due at this step (a row in ``ending``: all it has left), one codec call per
        chunk length for all streams whose chunk has it (``stream_audio.py``, decoding together)."""
        by_length: dict[int, list[tuple[Voicing, torch.Tensor, bool]]] = defaultdict(list)
        for row_id, voicing in speaking.items():
            if voicing.row is None:
                continue  # failed at this step
            if (due := voicing.audio.due(self._steps[kind], row_id in ending)) is not None:
                by_length[due[0].shape[0]].append((voicing, *due))
        for group in by_length.values():
            urgent = any(first for _, _, first in group)
            if len(group) == 1:
                voicing, chunk, _ = group[0]
                self._contained(voicing, "decoding", outcome, lambda v, c=chunk, u=urgent: v.audio.decode_alone(c, u))
            else:
                audio = [(voicing.audio, chunk) for voicing, chunk, _ in group]
                StreamAudio.decode_due(self._models[kind].tts, self._worker, audio, urgent)

    def _speaking(self, kind: ModelKind) -> dict[int, Voicing]:
        """``kind``'s requests with a row, by their row (``Voicing.row`` is the one link)."""
        return {id(v.row): v for v in self._voicings.values() if v.row is not None and v.ticket.kind == kind}

    def _fail(self, voicing: Voicing, exc: Exception, outcome: Outcome) -> None:
        """Report ``voicing``'s request failed; its row leaves its batch now."""
        if all(request_id != voicing.request_id for request_id, _ in outcome.failed):
            outcome.failed.append((voicing.request_id, exc))
        self._remove_row(voicing, outcome, exc)

    def _remove_row(self, voicing: Voicing, outcome: Outcome, exc: Exception | None = None) -> None:
        """The request's row leaves its batch. If even that fails, the batch is in an unknown
        state: every request in it fails."""
        row, voicing.row = voicing.row, None
        if row is None:
            return
        try:
            self._batches[voicing.ticket.kind].remove(row)
        except Exception as failure:
            log.exception("removing a row failed")
            self._reset(voicing.ticket.kind, exc or generation_error("a generation step", failure), outcome)

    def _reset(self, kind: ModelKind, exc: Exception, outcome: Outcome) -> None:
        """``kind``'s batch is unusable: every request with a row in it fails, and the batch
        is replaced at the start of the next ``execute``."""
        for voicing in self._voicings.values():
            if voicing.ticket.kind == kind and voicing.row is not None:
                voicing.row = None
                outcome.failed.append((voicing.request_id, exc))
        self._broken.add(kind)

    def _renew(self) -> None:
        """A fresh batch for each one reset. If not even that works (the device is gone), the
        engine cannot go on: EngineUnavailable."""
        for kind in list(self._broken):
            try:
                self._batches[kind] = self._new_batch(kind)
            except Exception as fatal:  # it stays broken: every later renew says so again
                raise EngineUnavailable(
                    f"the {kind} model cannot start a new batch after a failed step ({type(fatal).__name__}: {fatal})"
                ) from fatal
            self._broken.discard(kind)
