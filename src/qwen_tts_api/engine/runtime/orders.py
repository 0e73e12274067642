"""What the scheduler asks of the runner and what it hears back: plain values, one way.

Each call of ``Runner.execute`` takes ``Orders`` (the policy's decision, with what the
scheduler adds to it: requests that are over, live text to hand over, whether to step) and
returns an ``Outcome``. Neither holds a tensor: the runner keeps its tensors per request id,
and a request's state changes only where the scheduler reads the outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from ...constants import ModelKind
from .jobs import SpeechJob
from .stream import SynthesisStream


@dataclass(frozen=True)
class Ticket:
    """What the runner may know of a request: who it is, its job and where its audio goes."""

    request_id: str
    kind: ModelKind
    job: SpeechJob
    stream: SynthesisStream


@dataclass(frozen=True)
class LivePart:
    """A live turn's current part as far as its text has arrived."""

    index: int
    text: str  # as typed: its tokens come from it (``SpeechJob.spoken`` for what is reported)
    closed: bool  # no more text comes for it


@dataclass(frozen=True)
class Start:
    """Start a request's segment ``index`` (a live turn: its ``part``) as a new row."""

    ticket: Ticket
    index: int
    part: LivePart | None  # None: a plain request's segment


@dataclass
class Orders:
    drop: list[str] = field(default_factory=list)  # requests that are over: rows leave, state goes
    look_up: list[Ticket] = field(default_factory=list)  # inline references: clone prompt from the cache
    encode: Ticket | None = None  # the one encoder call of this turn
    count: list[tuple[Ticket, LivePart]] = field(default_factory=list)  # live parts: tokens final so far
    feed: list[tuple[str, LivePart]] = field(default_factory=list)  # speaking live parts: their text now
    start: list[Start] = field(default_factory=list)  # prefilled together, per model
    step: bool = False  # one step of every batch with rows


@dataclass(frozen=True)
class PartCount:
    """A live part's tokens, as the runner counted them."""

    final: int  # ids no later text can change
    needed: int  # ids a part needs before it may start (more for a cloned voice)


@dataclass(frozen=True)
class StepStats:
    """One batched step of one model, as the metrics see it."""

    kind: ModelKind
    rows: int  # frames made
    seconds: float
    cache_positions: int  # positions the batch's longest row holds
    joining: int = 0  # rows whose prefill is still running (a chunk a step)


@dataclass(frozen=True)
class Ended:
    """A row that ended normally (end of speech or its budget); its audio is out."""

    request_id: str  # the scheduler decides what follows: its next segment or part, or its end


@dataclass
class Outcome:
    prompts: set[str] = field(default_factory=set)  # requests whose clone prompt is now known
    counts: dict[str, PartCount] = field(default_factory=dict)
    failed: list[tuple[str, Exception]] = field(default_factory=list)  # their rows have left
    ended: list[Ended] = field(default_factory=list)
    waiting_for_text: dict[str, bool] = field(default_factory=dict)  # live rows: read all their text?
    stats: list[StepStats] = field(default_factory=list)


StepObserver = Callable[[StepStats], None]


class Runner(Protocol):
    """What the scheduler needs of a runner (``runner.BatchRunner``; the lifecycle tests' fake)."""

    @property
    def kinds(self) -> list[ModelKind]: ...

    def execute(self, orders: Orders) -> Outcome:
        """Carry out ``orders``; raises EngineUnavailable when a model's batch cannot be renewed."""
        ...

    def can_progress(self) -> bool:
        """Whether a step would do something without new text arriving."""
        ...

    def generating(self) -> int:
        """Rows in the batches now (joining ones included)."""
        ...

    def wait_for_first_audio(self) -> None:
        """Let a first chunk being decoded have the processor before the next step."""
        ...

    def close(self) -> None:
        """Finish the audio work queued, then stop."""
        ...
