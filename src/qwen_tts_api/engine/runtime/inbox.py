"""What reaches the scheduler thread from elsewhere, each kind of item a type of its own."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from .requests import Request


@dataclass(frozen=True)
class Submit:
    """Requests to queue (several at once join at one step: the warm-up's)."""

    requests: list[Request]


@dataclass(frozen=True)
class Wake:
    """Look again at live turns: text arrived, or one was cancelled."""


@dataclass(eq=False)
class ModelCall:
    """A function that uses the models (a clone prompt, a probe), run on the scheduler thread
    between two steps, at most one between two steps; its result comes in ``future``."""

    fn: Callable[[], Any]
    future: Future = field(default_factory=Future)

    def run(self) -> None:
        if self.future.set_running_or_notify_cancel():
            try:
                self.future.set_result(self.fn())
            except BaseException as exc:  # handed to the caller
                self.future.set_exception(exc)

    def refuse(self, exc: Exception) -> None:
        if self.future.set_running_or_notify_cancel():
            self.future.set_exception(exc)


@dataclass(frozen=True)
class AudioFailed:
    """A request's decoding failed on the audio thread (its client was told there)."""

    request_id: str  # found among the waiting or active requests (gone: nothing to do)
    error: Exception  # what the decoding raised; the client has it already


@dataclass(frozen=True)
class Close:
    """Stop after what is in hand."""


InboxItem = Submit | Wake | ModelCall | AudioFailed | Close
