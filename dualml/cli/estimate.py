"""``dualml estimate``: memory formula for training `model` at data.batch_size, term by term, next to the measured peak.

The formula and the measured runs are dualml.evidence.estimate; this file prints and reports them.
"""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from ..evidence.estimate import markdown, run
from .log import result

#: the one-line description in ``dualml --help``
HELP = 'memory formula for training `model` at data.batch_size, term by term, next to the measured peak'
#: config sections (or keys) ``dualml estimate --help`` lists
KEYS = ('backend', 'seed', 'out_dir', 'model', 'data', 'trainer', 'estimate')
SECTION = None


def cmd_estimate(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml estimate model=... data.batch_size=...``: print the table, write JSON + markdown."""
    report, out = run(cfg)
    result(markdown(report))
    result(f"report: {out / 'report.json'} and {out / 'report.md'}")
    return 0
