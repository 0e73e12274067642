"""A voice agent's turn: its text, carried from the event loop to the scheduler thread."""

from __future__ import annotations

import threading
from collections.abc import Callable


class LiveText:
    """One turn's text as it arrives (appended on the event loop, taken on the scheduler
    thread). ``wake`` tells the scheduler that there is something new to look at."""

    def __init__(self, wake: Callable[[], None] = lambda: None):
        self._lock = threading.Lock()
        self._fragments: list[str] = []
        self._done = False
        self.wake = wake

    def append(self, fragment: str) -> None:
        with self._lock:
            self._fragments.append(fragment)
        self.wake()

    def finish(self) -> None:
        with self._lock:
            self._done = True
        self.wake()

    def take(self) -> tuple[str, bool]:
        """The text that arrived since the last call, and whether the turn's text is complete."""
        with self._lock:
            text, self._fragments = "".join(self._fragments), []
            return text, self._done
