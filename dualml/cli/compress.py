"""``dualml compress``: run the compression pipeline `compress` (configs/compress/*.yaml) on `backend`,
measure each pass.

The passes and the pipeline are dualml.compress; this file runs one and writes its report.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from ..checkpoint import atomic_write_text
from ..compress.pipeline import plot, run_pipeline, table
from .log import result

#: the one-line description in ``dualml --help``
HELP = 'run the compression pipeline `compress` (configs/compress/*.yaml) on `backend`, measure each pass'
#: config sections (or keys) ``dualml compress --help`` lists
KEYS = ('backend', 'seed', 'out_dir', 'model', 'data', 'trainer', 'compress')
SECTION = None


def cmd_compress(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml compress backend=... model=... data=... compress=NAME``."""
    out = Path(cfg.out_dir) / "compress" / f"{cfg.compress.name}-{cfg.model.name}-{cfg.backend}"
    report = run_pipeline(cfg, out)
    md = table(report)
    result(md)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    atomic_write_text(out / "report.md", md)
    plot(report, out / "compress.png")
    result(f"report: {out / 'report.json'}, {out / 'report.md'}, {out / 'compress.png'} (ONNX per stage in {out})")
    return 0
