"""A request's life inside the engine: its state, why it finished, and what it carries.

A request is found by its id (``Request.id``; the runner keeps its tensors by it). Its state
moves only along ``TRANSITIONS``:

    WAITING ──▶ RUNNING ◀──▶ WAITING_FOR_TEXT        (a live part's row has read all its text)
       │          │  ▲               │
       │          ▼  │               ▼
       │       BETWEEN_PARTS ◀───────┘               (a live turn between two parts keeps its slot)
       ▼          ▼
    FINISHED (with a FinishReason) ◀── from any state

A plain request runs its text segments one after another (RUNNING → RUNNING, a new row for
each segment); a live turn (``live_turn.py``) runs its parts the same way, with the two
live-only states in between.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from enum import Enum

from ...constants import ModelKind
from .jobs import SpeechJob
from .orders import Ticket
from .stream import SynthesisStream


class RequestState(Enum):
    WAITING = "waiting"  # queued until its model's batch has a free slot
    RUNNING = "running"  # its row makes a frame at every step
    WAITING_FOR_TEXT = "waiting_for_text"  # live: its row has read all the text that has arrived
    BETWEEN_PARTS = "between_parts"  # live: a part ended and the next is not ready; it keeps its slot
    FINISHED = "finished"


class FinishReason(Enum):
    DONE = "done"  # all its text was spoken
    CANCELLED = "cancelled"  # the client went away (or barged in)
    TIMED_OUT = "timed_out"  # QWEN_TTS_REQUEST_TIMEOUT passed
    FAILED = "failed"  # its generation failed (the others went on)
    ENGINE_STOPPED = "engine_stopped"  # the scheduler cannot go on


_S = RequestState
TRANSITIONS: Mapping[RequestState, frozenset[RequestState]] = {
    _S.WAITING: frozenset({_S.RUNNING, _S.FINISHED}),
    _S.RUNNING: frozenset({_S.RUNNING, _S.WAITING_FOR_TEXT, _S.BETWEEN_PARTS, _S.FINISHED}),
    _S.WAITING_FOR_TEXT: frozenset({_S.RUNNING, _S.BETWEEN_PARTS, _S.FINISHED}),
    _S.BETWEEN_PARTS: frozenset({_S.RUNNING, _S.FINISHED}),
    _S.FINISHED: frozenset(),
}
HOLDS_SLOT = frozenset({_S.RUNNING, _S.WAITING_FOR_TEXT, _S.BETWEEN_PARTS})


class IllegalTransition(RuntimeError):
    """A request was moved along an edge its lifecycle does not have (a bug)."""


class Request:
    """One speech request as the scheduler sees it: no tensors (the runner holds those, by
    ``id``), its state changed only by the scheduler. Its text segments are spoken one after
    another, each as a row of its model's batch."""

    def __init__(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream, admitted: bool = True):
        self.id = f"req-{uuid.uuid4().hex[:16]}"
        self.kind, self.job, self.stream = kind, job, stream
        self.ticket = Ticket(self.id, kind, job, stream)  # what the runner is given of it
        self.state = RequestState.WAITING
        self.finish_reason: FinishReason | None = None
        self.admitted = admitted  # holds a place in admission control (the warm-up does not)
        self.index = 0  # the segment (or live part) being spoken
        self.has_prompt = job.reference is None  # its clone prompt is known to the runner (or not needed)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.kind} {self.state.value}>"

    # --- what the policy reads ---
    @property
    def stopping(self) -> bool:
        """Cancelled by its client, or past its deadline."""
        return self.stream.should_stop()

    @property
    def needs_encoder(self) -> bool:
        """Inline reference audio whose clone prompt is neither stored nor cached yet."""
        return not self.has_prompt

    @property
    def might_start(self) -> bool:
        """A cheap upper bound of ``ready`` (live turns: without tokenizing)."""
        return True

    @property
    def ready(self) -> bool:
        """Whether it has something to speak now."""
        return True

    @property
    def empty(self) -> bool:
        """Whether it turned out to have nothing to speak at all (a live turn's text)."""
        return False

    @property
    def holds_slot(self) -> bool:
        return self.state in HOLDS_SLOT

    @property
    def more_segments(self) -> bool:
        """Whether a segment follows the current one."""
        return self.index + 1 < len(self.job.text.segments)

    # --- the lifecycle (the scheduler's update) ---
    def move_to(self, state: RequestState, reason: FinishReason | None = None) -> None:
        if state not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"{self!r} cannot become {state.value}")
        self.state = state
        if state is RequestState.FINISHED:
            self.finish_reason = reason or FinishReason.DONE
