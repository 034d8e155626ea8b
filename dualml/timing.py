"""Side-by-side timing: several callables measured in one run, interleaved, so machine noise on
a shared box hits all of them alike and their *ratios* mean something. No framework import."""
from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def stats_ms(seconds: list[float]) -> dict[str, float]:
    """Median, p10/p90 and IQR of a list of durations, in milliseconds."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    q10, q25, q50, q75, q90 = np.percentile(a, [10, 25, 50, 75, 90])
    return {"median_ms": float(q50), "p10_ms": float(q10), "p90_ms": float(q90), "iqr_ms": float(q75 - q25),
            "n": int(a.size)}


def interleaved(fns: dict[str, Callable[[], Any]], repeats: int = 30, warmup: int = 3,
                min_seconds: float = 0.0) -> dict[str, dict[str, float]]:
    """Time every callable ``repeats`` times, round-robin with a rotating start, after ``warmup``
    untimed calls each. A round calls each function enough times to last ``min_seconds`` (so tiny
    functions are not dominated by timer resolution); the figures are per call."""
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    inner = {}
    for name in names:
        t0 = time.perf_counter()
        fns[name]()
        one = max(time.perf_counter() - t0, 1e-7)
        inner[name] = max(1, int(min_seconds / one))
    times: dict[str, list[float]] = {n: [] for n in names}
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for r in range(repeats):
            for name in names[r % len(names):] + names[:r % len(names)]:
                fn, k = fns[name], inner[name]
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                times[name].append((time.perf_counter() - t0) / k)
    finally:
        if gc_was:
            gc.enable()
    return {n: stats_ms(times[n]) for n in names}
