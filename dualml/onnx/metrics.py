"""Prometheus text exposition for ``dualml serve``'s ``/metrics``, written by hand.

Why not ``prometheus_client``: the serving image carries onnxruntime, numpy, omegaconf and pyyaml
only, and the few series a model server needs (counters by label, histograms, gauges) are a page of
code. The output follows the text format 0.0.4 (``# HELP``/``# TYPE``, cumulative ``_bucket`` lines
with ``le``, ``_sum``/``_count``); the tests parse it with ``prometheus_client``'s own parser.
Every update takes one lock for a few dict operations (~1 µs), cheap next to a request.
"""
from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence

#: request latency buckets, seconds (1 ms .. 10 s)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: samples per ONNX Runtime run
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: the Content-Type Prometheus expects for the text format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


class _Metric:
    def __init__(self, registry: Registry, name: str, help_text: str, kind: str, labels: Sequence[str]) -> None:
        self.name, self.help, self.kind, self.labels = name, help_text, kind, tuple(labels)
        self._lock = registry.lock
        registry.metrics.append(self)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    def __init__(self, registry: Registry, name: str, help_text: str, labels: Sequence[str] = ()) -> None:
        super().__init__(registry, name, help_text, "counter", labels)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *label_values: str, by: float = 1) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + by

    def get(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0)

    def items(self) -> list[tuple[tuple[str, ...], float]]:
        with self._lock:
            return sorted(self._values.items())

    def lines(self) -> list[str]:
        return [f"{self.name}{_labels(self.labels, k)} {_num(v)}" for k, v in self.items()]


class Gauge(_Metric):
    """A value read when scraped (queue depth, open connections): no bookkeeping on the hot path."""

    def __init__(self, registry: Registry, name: str, help_text: str, read: Callable[[], float]) -> None:
        super().__init__(registry, name, help_text, "gauge", ())
        self.read = read

    def lines(self) -> list[str]:
        return [f"{self.name} {_num(self.read())}"]


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set."""

    def __init__(self, registry: Registry, name: str, help_text: str, buckets: Sequence[float],
                 labels: Sequence[str] = ()) -> None:
        super().__init__(registry, name, help_text, "histogram", labels)
        self.bounds = tuple(buckets)
        self._data: dict[tuple[str, ...], list[float]] = {}  # per-bucket counts (+Inf last), then sum

    def observe(self, value: float, *label_values: str) -> None:
        i = bisect.bisect_left(self.bounds, value)
        with self._lock:
            d = self._data.get(label_values)
            if d is None:
                d = self._data[label_values] = [0] * (len(self.bounds) + 1) + [0.0]
            d[i] += 1
            d[-1] += value

    def lines(self) -> list[str]:
        with self._lock:
            data = sorted((k, list(v)) for k, v in self._data.items())
        out = []
        for key, d in data:
            total = 0
            for bound, n in zip([*self.bounds, float("inf")], d[:-1]):
                total += n
                le = 'le="' + ("+Inf" if bound == float("inf") else _num(float(bound))) + '"'
                out.append(f"{self.name}_bucket{_labels(self.labels, key, le)} {total}")
            out.append(f"{self.name}_sum{_labels(self.labels, key)} {_num(float(d[-1]))}")
            out.append(f"{self.name}_count{_labels(self.labels, key)} {total}")
        return out


class Registry:
    """The metrics of one server, rendered in registration order."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.metrics: list[_Metric] = []

    def render(self) -> bytes:
        lines: list[str] = []
        for m in self.metrics:
            lines += m.header() + m.lines()  # type: ignore[attr-defined]
        return ("\n".join(lines) + "\n").encode()
