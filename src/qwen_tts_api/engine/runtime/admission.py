"""Admission control: a bounded number of requests in the server, and an honest "busy".

Requests beyond those running wait in a queue of at most ``max_waiting``; past that the
engine refuses at once (the API answers 429 with a Retry-After estimated from recent
request durations) rather than letting latency grow without bound.
"""

from __future__ import annotations

import math
import threading

from ..errors import EngineBusy


class Admission:
    def __init__(self, max_waiting: int, workers: int = 1, initial_seconds: float = 5.0):
        self.max_waiting = max_waiting
        self.workers = workers
        self._lock = threading.Lock()
        self._active = 0
        self._avg_seconds = initial_seconds  # moving average of time on the worker

    @property
    def active(self) -> int:
        return self._active

    def admit(self) -> None:
        with self._lock:
            if self._active >= self.workers + self.max_waiting:
                raise EngineBusy(self._retry_after())
            self._active += 1

    def release(self, seconds_on_worker: float | None) -> None:
        with self._lock:
            self._active -= 1
            if seconds_on_worker is not None:
                self._avg_seconds = 0.8 * self._avg_seconds + 0.2 * seconds_on_worker

    def _retry_after(self) -> int:
        # About when one place frees up: the requests ahead, at the recent pace.
        ahead = self._active - self.workers + 1
        return max(1, math.ceil(self._avg_seconds * ahead / self.workers))
