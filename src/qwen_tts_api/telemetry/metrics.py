"""Prometheus metrics, in a registry of the app's own (several apps can share a process)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily

from ..constants import ModelKind
from .record import RequestRecord

disable_created_metrics()  # the *_created series only add noise here

_TTFA_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
_RTF_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10)
_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64, 128, 256)
_STEP_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2, 5)


class StepFigures(Protocol):
    """One batched step, as the engine reports it (``engine/runtime/orders.py`` StepStats)."""

    @property
    def kind(self) -> ModelKind: ...
    @property
    def rows(self) -> int: ...
    @property
    def seconds(self) -> float: ...
    @property
    def cache_positions(self) -> int: ...


class _Occupancy(Protocol):
    @property
    def generating(self) -> int: ...
    @property
    def queued(self) -> int: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class WatchedEngine(Protocol):
    """What the metrics read of the engine (telemetry sits below it and imports none of it)."""

    @property
    def models(self) -> Mapping[ModelKind, _Named]: ...
    def occupancy(self) -> _Occupancy: ...
    def prompt_cache_stats(self) -> tuple[int, int]: ...
    def add_step_observer(self, observer: Callable[[StepFigures], None]) -> Callable[[], None]: ...


class _PromptCacheCollector:
    """Reads the engine's clone-prompt cache counters at scrape time."""

    def __init__(self, cache_stats: Callable[[], tuple[int, int]]):
        self.cache_stats = cache_stats

    def collect(self):
        hits, misses = self.cache_stats()
        family = CounterMetricFamily(
            "qwen_tts_prompt_cache_lookups",
            "Clone-prompt cache lookups for inline reference audio, by result",
            labels=["result"],
        )
        family.add_metric(["hit"], hits)
        family.add_metric(["miss"], misses)
        yield family


class ServerMetrics:
    content_type = "text/plain; version=0.0.4; charset=utf-8"

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_resident_memory_bytes, CPU seconds, open files (on Linux)
        self.requests = Counter(
            "qwen_tts_requests",
            "HTTP requests, by route, status, format and model",
            ["route", "status", "format", "model"],
            registry=r,
        )
        self.ttfa = Histogram(
            "qwen_tts_time_to_first_audio_seconds",
            "Arrival to first audio byte, speech requests",
            ["model"],
            buckets=_TTFA_BUCKETS,
            registry=r,
        )
        self.rtf = Histogram(
            "qwen_tts_real_time_factor",
            "Request duration / audio duration, speech requests",
            ["model"],
            buckets=_RTF_BUCKETS,
            registry=r,
        )
        self.audio = Counter("qwen_tts_audio_seconds", "Seconds of audio produced", ["model"], registry=r)
        self.batch_size = Histogram(
            "qwen_tts_batch_size",
            "Requests generated together, per decoding step",
            ["model"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.step_seconds = Histogram(
            "qwen_tts_step_seconds",
            "Time of one batched generation step (one frame for every row)",
            ["model"],
            buckets=_STEP_BUCKETS,
            registry=r,
        )
        self.cache_positions = Gauge(
            "qwen_tts_batch_cache_positions",
            "Positions the batch's talker KV cache holds per row, after the last step",
            ["model"],
            registry=r,
        )
        self.queue_depth = Gauge("qwen_tts_queue_depth", "Requests waiting for a place in a batch", registry=r)
        self.active = Gauge("qwen_tts_requests_generating", "Requests in a batch now", registry=r)

    def watch_engine(self, engine: WatchedEngine) -> None:
        """Gauges and counters that read the engine when scraped; batch sizes as it steps."""
        self.active.set_function(lambda: engine.occupancy().generating)
        self.queue_depth.set_function(lambda: engine.occupancy().queued)
        self.registry.register(_PromptCacheCollector(engine.prompt_cache_stats))
        names = {kind: model.name for kind, model in engine.models.items()}

        def on_step(step: StepFigures) -> None:
            name = names[step.kind]
            self.batch_size.labels(name).observe(step.rows)
            self.step_seconds.labels(name).observe(step.seconds)
            self.cache_positions.labels(name).set(step.cache_positions)

        engine.add_step_observer(on_step)

    def observe(self, record: RequestRecord) -> None:
        model = record.model or ""
        self.requests.labels(record.route, str(record.status), record.response_format or "", model).inc()
        if not record.is_speech or record.status >= 400:
            return
        if record.ttfa is not None:
            self.ttfa.labels(model).observe(record.ttfa)
        audio = record.audio_seconds
        if audio > 0:
            self.audio.labels(model).inc(audio)
            # A WebSocket turn's duration is paced by its client's text, not by synthesis.
            if record.first_byte is not None and record.ended is not None and record.method != "WEBSOCKET":
                self.rtf.labels(model).observe((record.ended - record.started) / audio)

    def render(self) -> bytes:
        return generate_latest(self.registry)
