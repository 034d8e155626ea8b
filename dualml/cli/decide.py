"""``dualml decide``: score the decision matrix `decision` (configs/decision/*.yaml)
from the bench report; pick a backend.

Scoring is dualml.evidence.decide, which never runs a benchmark; this file passes it the one thing it may
need, a way to make a missing bench report (dualml.cli.auto.run_bench).
"""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from ..evidence.decide import decide, decision_file, markdown, write_decision
from .auto import run_bench
from .log import result

#: the one-line description in ``dualml --help``
HELP = 'score the decision matrix `decision` (configs/decision/*.yaml) from the bench report; pick a backend'
#: config sections (or keys) ``dualml decide --help`` lists
KEYS = ('out_dir', 'model', 'decision', 'decide')
#: this command's own section: its keys may be given bare (``decide.x=1`` as ``x=1``); a bare word is ``decide.model``
SECTION = 'decide'


def cmd_decide(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml decide [decision=NAME] [model=...] [decide.bench=FILE]``."""
    decision = decide(cfg, run_bench=run_bench)
    paths = write_decision(decision, decision_file(cfg))
    result(markdown(decision))
    result(f"decision: {paths['json']}, {paths['md']}, {paths['png']}")
    return 0
