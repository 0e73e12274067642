"""The scheduling policy: between two steps, what happens next. It touches no tensors and no
model, so it can be driven with plain objects (``tests/engine/runtime/test_policy.py``).

Given the waiting requests in arrival order, the free slots of each model's batch and the
queued encoder work, it decides:

- a waiting request whose client left or whose deadline passed leaves the queue;
- requests join their model's batch in arrival order while it has free slots (those that
  join together prefill as one batch, in groups of at most ``QWEN_TTS_PREFILL_CHUNK``
  positions); a request that cannot start yet (a live turn still waiting for its first
  clause) keeps its place and lets the ones behind it pass;
- the encoders run at most once between two steps: one queued task (a voice upload's clone
  prompt), or else one waiting request's inline reference, whose prompt is then computed
  and which joins at once. Others that need the encoders wait for a later step, so the rows
  already speaking never stall for more than one encoder call.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from ...constants import ModelKind


class Candidate(Protocol):
    """What the policy reads of a waiting request (``requests.Request`` has all of it)."""

    @property
    def kind(self) -> ModelKind: ...

    @property
    def stopping(self) -> bool: ...  # cancelled, or past its deadline

    @property
    def needs_encoder(self) -> bool: ...  # an inline reference without a clone prompt

    @property
    def might_start(self) -> bool: ...  # cheap upper bound of ``ready``

    @property
    def ready(self) -> bool: ...  # it has something to speak now

    @property
    def empty(self) -> bool: ...  # it has nothing to speak at all


C = TypeVar("C", bound=Candidate)


@dataclass
class Decision(Generic[C]):
    run_task: bool = False  # run the oldest queued encoder task
    stopped: list[C] = field(default_factory=list)  # leave the queue: cancelled or out of time
    empty: list[C] = field(default_factory=list)  # leave the queue: nothing to speak
    encode: C | None = None  # compute this request's clone prompt, then it joins (if still ready)
    join: dict[ModelKind, list[C]] = field(default_factory=dict)  # start, in arrival order

    @property
    def joining(self) -> list[C]:
        return [request for requests in self.join.values() for request in requests]


def free_slots(max_batch: int, kinds: Iterable[ModelKind], holding: Iterable[ModelKind]) -> dict[ModelKind, int]:
    """Free slots per model: ``holding`` names the model of each request that holds a slot
    (a row in the batch, or a live turn between two parts)."""
    slots = dict.fromkeys(kinds, max_batch)
    for kind in holding:
        slots[kind] -= 1
    return slots


def decide(waiting: Iterable[C], slots: Mapping[ModelKind, int], tasks_waiting: int) -> Decision[C]:
    decision: Decision[C] = Decision()
    encoder_free = True
    if tasks_waiting:
        decision.run_task, encoder_free = True, False
    left = dict(slots)
    for request in waiting:
        if request.stopping:
            decision.stopped.append(request)
            continue
        if left.get(request.kind, 0) <= 0:
            continue
        if request.needs_encoder:
            if not encoder_free or not request.might_start:
                continue
            encoder_free = False
            decision.encode = request
        elif request.empty:
            decision.empty.append(request)
            continue
        elif not request.ready:
            continue
        left[request.kind] -= 1
        decision.join.setdefault(request.kind, []).append(request)
    return decision


def has_work(waiting: Iterable[Candidate], slots: Mapping[ModelKind, int], tasks_waiting: int) -> bool:
    """Whether an admission could make progress without anything new arriving (a turn
    waiting for text cannot: its arrival wakes the loop). Rows that can step are the
    runner's to say."""
    if tasks_waiting:
        return True
    return any(request.stopping or (slots.get(request.kind, 0) > 0 and request.might_start) for request in waiting)
