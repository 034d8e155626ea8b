"""``dualml bench``: measure `model` on torch and paddle side by side
(train step, eager/ORT latency, memory, export, INT8).

Measuring is dualml.evidence.bench (workers, aggregation, markdown, plot); this file runs it and writes
the report that ``dualml decide`` and ``backend=auto`` read.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..evidence.bench import check_options, markdown, plot, run_bench
from .log import result

#: the one-line description in ``dualml --help``
HELP = 'measure `model` on torch and paddle side by side (train step, eager/ORT latency, memory, export, INT8)'
#: config sections (or keys) ``dualml bench --help`` lists
KEYS = ('seed', 'out_dir', 'model', 'data', 'trainer', 'bench')
SECTION = None


def cmd_bench(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml bench model=... data=...``: measure, write report.json/report.md/bench.png under
    ``<out_dir>/bench/<model>/`` and ``<out_dir>/bench/latest.json`` (a copy of the newest report, for
    ``dualml decide``), print the table and where it went."""
    check_options(cfg.bench)
    out = Path(cfg.out_dir) / "bench" / str(cfg.model.name)
    report = run_bench(cfg, out / "logs")
    text = json.dumps(report, indent=2, default=str)
    atomic_write_text(out / "report.json", text)
    md = markdown(report)
    atomic_write_text(out / "report.md", md)
    atomic_write_bytes(out / "bench.png", plot(report))
    latest = json.loads(text) | {"report": str(out / "report.json")}
    atomic_write_text(out.parent / "latest.json", json.dumps(latest, indent=2))
    result(md)
    result(f"report: {out / 'report.json'}, {out / 'report.md'}, {out / 'bench.png'}")
    result(f"latest: {out.parent / 'latest.json'}")
    return 0
