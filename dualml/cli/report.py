"""Where command reports go: ``<out_dir>/<command>/report.json`` (and ``report.md``), written atomically."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..checkpoint import atomic_write_text
from .log import keep_in


def write_report(cfg: DictConfig, name: str, report: dict[str, Any], md: str | None = None) -> Path:
    """``<out_dir>/<name>/report.json`` (+ ``report.md``); returns the folder the command then prints."""
    out = Path(cfg.out_dir) / name
    keep_in(out)  # the command's log (framework chatter included) lands beside its report
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    if md is not None:
        atomic_write_text(out / "report.md", md)
    return out
