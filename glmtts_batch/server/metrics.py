"""`GET /metrics` in the Prometheus text format, collected fresh on each scrape."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from glmtts_batch.server.engine_host import gpu_memory
from glmtts_batch.server.queue import JobQueue


class ServerMetrics:
    """Counters since this process started, plus the queue and GPU state at scrape time."""

    def __init__(self, queue: JobQueue, engine_stats: Callable[[], dict[str, Any]]) -> None:
        self.queue = queue
        self.engine_stats = engine_stats
        self._lock = threading.Lock()
        self.tasks = {"ok": 0, "failed": 0, "invalid": 0, "skipped": 0}
        self.audio_seconds = 0.0
        self.speech = {"ok": 0, "error": 0}
        self.speech_audio_seconds = 0.0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)  # a registry per server: no process-global metrics

    def task_record(self, record: dict[str, Any]) -> None:
        with self._lock:
            self.tasks[record["status"]] += 1
            if record["status"] == "ok":
                self.audio_seconds += record.get("duration_s") or 0.0

    def speech_request(self, ok: bool, audio_seconds: float = 0.0) -> None:
        with self._lock:
            self.speech["ok" if ok else "error"] += 1
            self.speech_audio_seconds += audio_seconds

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            tasks, speech = dict(self.tasks), dict(self.speech)
            audio, speech_audio = self.audio_seconds, self.speech_audio_seconds
        family: CounterMetricFamily | GaugeMetricFamily = CounterMetricFamily(
            "glmtts_tasks", "Job tasks by manifest status", labels=["status"]
        )
        for status, n in tasks.items():
            family.add_metric([status], n)
        yield family
        yield CounterMetricFamily("glmtts_audio_seconds", "Audio synthesised by job tasks", value=audio)
        family = CounterMetricFamily("glmtts_speech_requests", "Speech requests by outcome", labels=["outcome"])
        for outcome, n in speech.items():
            family.add_metric([outcome], n)
        yield family
        yield CounterMetricFamily(
            "glmtts_speech_audio_seconds", "Audio returned by speech requests", value=speech_audio
        )
        states = self.queue.counts()
        yield GaugeMetricFamily("glmtts_queue_depth", "Jobs waiting to run", value=states["queued"])
        family = GaugeMetricFamily("glmtts_jobs", "Jobs by state", labels=["state"])
        for state, n in states.items():
            family.add_metric([state], n)
        yield family
        family = GaugeMetricFamily(
            "glmtts_engine_stat", "The engine's own counters (e.g. prompt cache hits)", labels=["stat"]
        )
        for name, value in self.engine_stats().items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                family.add_metric([name], value)
        yield family
        memory = gpu_memory()
        if memory is not None:
            family = GaugeMetricFamily("glmtts_gpu_memory_bytes", "CUDA memory held by torch", labels=["kind"])
            for kind, n in memory.items():
                family.add_metric([kind.removesuffix("_bytes")], n)
            yield family
