"""A live session's turns: the text between two ``input.done`` and the speech made of it,
and the turns sent while one is still speaking (``live.py``)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from ..engine.runtime.live_text import LiveText
from ..engine.runtime.stream import SynthesisStream
from ..telemetry.record import RequestRecord
from .word_timings import SegmentWords

MAX_TURN_CHARS = 65536  # a turn's whole text (one message holds at most MAX_INPUT_CHARS)
MAX_WAITING_TURNS = 8


class TurnState(Enum):
    """Its text and its speech end in either order; ``session.done`` follows both."""

    OPEN = "open"  # text may still come, speech may still come
    FLUSHED = "flushed"  # input.done received; still speaking
    SPOKEN = "spoken"  # no more speech (spoken, refused or failed); input.done not yet received
    DONE = "done"  # both


class Turn:
    def __init__(self, index: int, record: RequestRecord):
        self.index = index
        self.record = record
        self.state = TurnState.OPEN
        self.live: LiveText | None = None  # where its text goes (None: refused or failed, text dropped)
        self.ssml: list[str] | None = None  # an SSML turn's text, spoken whole at input.done
        self.words: list[SegmentWords] | None = None  # an SSML turn's words by part, when timed
        self.stream: SynthesisStream | None = None
        self.pump: asyncio.Task | None = None  # sends its audio and events
        self.parts = 0
        self.chars = 0
        self.abandoned = False  # the client left mid-turn

    @property
    def flushed(self) -> bool:
        return self.state in (TurnState.FLUSHED, TurnState.DONE)

    @property
    def ended(self) -> bool:
        return self.state in (TurnState.SPOKEN, TurnState.DONE)

    def flush(self) -> None:
        self.state = TurnState.DONE if self.ended else TurnState.FLUSHED

    def end(self) -> None:
        self.live = None
        self.state = TurnState.DONE if self.flushed else TurnState.SPOKEN

    def cancel(self) -> None:
        self.abandoned = True
        if self.stream is not None and not self.ended:
            self.stream.cancel()  # the scheduler is told (a turn between parts has no step to see it)


@dataclass
class QueuedTurn:
    """A turn sent while the one before it is still speaking."""

    fragments: list[str] = field(default_factory=list)
    flushed: bool = False


class TurnQueue:
    """The turns waiting for the one being spoken: at most ``MAX_WAITING_TURNS``, their text
    together at most ``MAX_TURN_CHARS``."""

    def __init__(self) -> None:
        self._turns: deque[QueuedTurn] = deque()
        self._chars = 0

    def __bool__(self) -> bool:
        return bool(self._turns)

    @property
    def open(self) -> bool:
        """Whether the last queued turn still takes text."""
        return bool(self._turns) and not self._turns[-1].flushed

    def fits(self, text: str) -> bool:
        return self._chars + len(text) <= MAX_TURN_CHARS

    @property
    def has_room(self) -> bool:
        return len(self._turns) < MAX_WAITING_TURNS

    def add_text(self, text: str) -> None:
        """Text for the last turn (a new one when the last is flushed: ``has_room`` first)."""
        if not self.open:
            self._turns.append(QueuedTurn())
        self._turns[-1].fragments.append(text)
        self._chars += len(text)

    def flush(self) -> None:
        """``input.done`` for the last turn (a new, empty one when it is flushed: ``has_room`` first)."""
        if self.open:
            self._turns[-1].flushed = True
        else:
            self._turns.append(QueuedTurn(flushed=True))

    def pop(self) -> QueuedTurn:
        turn = self._turns.popleft()
        self._chars -= sum(len(fragment) for fragment in turn.fragments)
        return turn
