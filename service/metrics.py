"""Prometheus metrics, written in the text exposition format by hand (no client dependency).

Three kinds are enough here: counters, gauges (set, or read from a callback at scrape time)
and histograms. Every update takes one lock, because the network thread, the CPU pool and
the event loop all record; a scrape renders a consistent snapshot under the same lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence

LabelValues = tuple[str, ...]

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_INF = 'le="+Inf"'


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: LabelValues, extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = ""

    def __init__(self, registry: Registry, name: str, help: str, labels: Sequence[str] = ()) -> None:
        self.name, self.help, self.label_names = name, help, tuple(labels)
        self._lock = registry.lock
        registry.metrics.append(self)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.values: dict[LabelValues, float] = {}

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        with self._lock:
            self.values[labels] = self.values.get(labels, 0.0) + amount

    def get(self, *labels: str) -> float:
        with self._lock:
            return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = self.header()
        for labels, v in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_num(v)}")
        return lines


class Gauge(_Metric):
    """A value that is set, or read from ``callback`` at scrape time (queue depths)."""

    kind = "gauge"

    def __init__(self, *args, callback: Callable[[], float] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.callback = callback
        self.values: dict[LabelValues, float] = {}

    def set(self, value: float, *labels: str) -> None:
        with self._lock:
            self.values[labels] = value

    def render(self) -> list[str]:
        lines = self.header()
        if self.callback is not None:
            lines.append(f"{self.name} {_num(self.callback())}")
        for labels, v in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.label_names, labels)} {_num(v)}")
        return lines


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, *args, buckets: Iterable[float] = LATENCY_BUCKETS, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.buckets = tuple(sorted(buckets))
        self.series: dict[LabelValues, list[float]] = {}  # per-bucket counts, then sum, then count

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            s = self.series.get(labels)
            if s is None:
                s = self.series[labels] = [0.0] * (len(self.buckets) + 2)
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    s[i] += 1
            s[-2] += value
            s[-1] += 1

    def count(self, *labels: str) -> int:
        with self._lock:
            return int(self.series.get(labels, [0.0])[-1])

    def render(self) -> list[str]:
        lines = self.header()
        for labels, s in sorted(self.series.items()):
            for i, bound in enumerate(self.buckets):
                le = f'le="{_num(bound)}"'
                lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, le)} {_num(s[i])}")
            lines.append(f"{self.name}_bucket{_labels(self.label_names, labels, _INF)} {_num(s[-1])}")
            lines.append(f"{self.name}_sum{_labels(self.label_names, labels)} {_num(s[-2])}")
            lines.append(f"{self.name}_count{_labels(self.label_names, labels)} {_num(s[-1])}")
        return lines


class Registry:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.metrics: list[_Metric] = []

    def render(self) -> str:
        with self.lock:
            lines: list[str] = []
            for m in self.metrics:
                lines.extend(m.render())
        return "\n".join(lines) + "\n"


class RateWindow:
    """Patches per second over the last ``window_s`` seconds (a gauge next to the counter)."""

    def __init__(self, window_s: float = 10.0) -> None:
        self.window_s = window_s
        self.events: deque[tuple[float, int]] = deque()
        self.lock = threading.Lock()

    def add(self, n: int) -> None:
        with self.lock:
            self.events.append((time.monotonic(), n))
            self._trim()

    def rate(self) -> float:
        with self.lock:
            self._trim()
            return sum(n for _, n in self.events) / self.window_s

    def _trim(self) -> None:
        cutoff = time.monotonic() - self.window_s
        while self.events and self.events[0][0] < cutoff:
            self.events.popleft()


class ServiceMetrics:
    """The service's metrics, by name; gauges that read live state get callbacks later."""

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.requests = Counter(
            r, "bpr_requests_total", "HTTP requests answered, by route and status", ("route", "status")
        )
        self.latency = Histogram(r, "bpr_request_duration_seconds", "HTTP request latency, by route", ("route",))
        self.stage = Histogram(
            r,
            "bpr_stage_duration_seconds",
            "time per pipeline stage and request (network: per batch; batch_wait: submit to last batch)",
            ("stage",),
        )
        self.batch_patches = Histogram(
            r, "bpr_batch_patches", "patches per network forward pass", buckets=BATCH_BUCKETS
        )
        self.batch_requests = Histogram(
            r, "bpr_batch_requests", "distinct requests whose patches share one forward pass", buckets=BATCH_BUCKETS
        )
        self.patches = Counter(r, "bpr_patches_total", "patches run through the network")
        self.instances = Counter(r, "bpr_instances_total", "instances refined")
        self.rejected = Counter(r, "bpr_rejected_total", "requests turned away before work, by reason", ("reason",))
        self.cancelled = Counter(
            r, "bpr_cancelled_total", "admitted requests stopped before their answer (timeout, disconnect)", ("reason",)
        )
        self.rate = RateWindow()
        Gauge(r, "bpr_patches_per_second", "patches through the network per second, last 10 s", callback=self.rate.rate)
        self.admitted = Gauge(r, "bpr_requests_in_flight", "requests admitted to /refine and /segment now")
        self.queue_patches = Gauge(r, "bpr_queue_patches", "patches waiting for the network")
        self.queue_requests = Gauge(r, "bpr_queue_requests", "requests with patches waiting for the network")
        self.model_info = Gauge(r, "bpr_model_info", "the loaded refiner (value 1)", ("checkpoint", "arch", "device"))

    def render(self) -> str:
        return self.registry.render()
