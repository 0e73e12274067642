"""A voice agent's turn as the scheduler sees it: text arrives while it is spoken (``job.live``).

Its parts (``text/live.py``) are spoken one after another like segments. A part starts once
it holds a first clause and enough final tokens (``can_start``: the runner counts them,
``orders.PartCount``); while it speaks, the scheduler hands the runner the part's text at
each turn of the loop. Between two parts the turn keeps its slot in the batch. No tensors
here: the tokens, rows and audio are the runner's.
"""

from __future__ import annotations

from collections.abc import Callable

from ...constants import ModelKind
from ...text.live import Part, PartSplitter
from .jobs import SpeechJob
from .orders import LivePart, PartCount
from .requests import Request
from .stream import SynthesisStream

Counter = Callable[["LiveRequest"], PartCount]  # the runner's count of the current part's tokens


class LiveRequest(Request):
    def __init__(self, kind: ModelKind, job: SpeechJob, stream: SynthesisStream):
        super().__init__(kind, job, stream)
        assert job.live is not None
        self.live = job.live
        self.splitter = PartSplitter()
        self.tokens: PartCount | None = None  # the current part's, as last counted
        self._ready = False  # set by ``prepare_start`` while waiting

    def take_text(self) -> None:
        text, done = self.live.take()
        self.splitter.feed(text)
        if done:
            self.splitter.finish()

    @property
    def part(self) -> Part | None:
        parts = self.splitter.parts
        return parts[self.index] if self.index < len(parts) else None

    @property
    def live_part(self) -> LivePart:
        """The current part as the runner is given it."""
        part = self.part
        assert part is not None
        return LivePart(self.index, part.text, part.closed)

    @property
    def done(self) -> bool:
        return self.splitter.finished and self.index >= len(self.splitter.parts)

    # --- what the policy reads ---
    @property
    def might_start(self) -> bool:
        """Whether ``can_start`` may hold now (cheap: no counting; new text wakes the loop)."""
        part = self.part
        if part is None or not part.ready:
            return self.done
        if self.tokens is None:
            return True
        return self.tokens.final >= self.tokens.needed or part.closed

    @property
    def ready(self) -> bool:
        return self._ready

    @property
    def empty(self) -> bool:
        return self.done

    def prepare_start(self, count: Counter) -> None:
        """While waiting or between parts: pass over parts with nothing to speak and say
        whether the current one can start (``ready``). Its clone prompt must be known."""
        self._ready = False
        if not self.might_start:
            return
        while not self.can_start(count) and self.skip_empty_part():
            pass
        self._ready = not self.done and self.can_start(count)

    def can_start(self, count: Counter) -> bool:
        """Whether the current part has what it needs to start speaking."""
        part = self.part
        if part is None or not part.ready:
            return False
        self.tokens = tokens = count(self)
        return tokens.final >= tokens.needed or (part.closed and tokens.final > 0)

    def skip_empty_part(self) -> bool:
        """A closed part with nothing to speak (only control tokens, say) is passed over."""
        part = self.part
        if part is not None and part.closed and self.tokens is not None and not self.tokens.final:
            self.index += 1
            self.tokens = None
            return True
        return False

    def end_part(self) -> tuple[int, str, str]:
        """The part's generation ended (its audio is out): the next part comes after.
        Returns the ended part's index, its text as reported and as typed."""
        part = self.part
        assert part is not None
        if not part.closed:  # the model ended before its text did: what follows is a new part
            self.splitter.close_current()
        ended = (self.index, self.job.spoken(part.text), part.text)
        self.index += 1
        self.tokens = None
        return ended
