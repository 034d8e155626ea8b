"""``backend=auto``: resolved here, at the command line, before a command runs. Why here and not in
``load_config``: resolving may decide, and deciding may run ``dualml bench``, which trains and exports;
a config loader that does that makes every library module that reads a config depend on the whole
package (it was a six-module import cycle). The library sees only real backends."""
from __future__ import annotations

import contextlib
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..config import load_config
from ..errors import DualmlError
from .log import say


def run_bench(cfg: Any, path: Path) -> None:
    """No bench report yet: run ``dualml bench`` for the configured model (imported only now: it is slow
    and starts a worker per framework). Passed to :func:`dualml.evidence.decide.decide`, which never runs one."""
    try:
        bench = importlib.import_module("dualml.cli.bench")
    except ModuleNotFoundError as exc:
        if exc.name != "dualml.cli.bench":
            raise
        raise DualmlError(f"no bench report at {path} and this install has no `dualml bench` to make one; "
                          "pass decide.bench=FILE") from exc
    say(f"no bench report at {path}: running `dualml bench model={cfg.model.name}` first "
          "(or pass decide.bench=FILE, or decide.bench=latest for the newest report of any model)")
    with contextlib.redirect_stdout(sys.stderr):  # stdout stays the command's own (`dualml config` prints YAML)
        rc = bench.cmd_bench(cfg)
    if rc != 0:
        raise DualmlError(f"`dualml bench model={cfg.model.name}` failed (exit {rc}); no decision without it")
    if not path.is_file():
        raise DualmlError(f"`dualml bench` ran but wrote no report at {path}")


def resolve_auto(cfg: Any) -> str:
    """``backend=auto``: set ``cfg.backend`` to the latest decision's pick (deciding first, and
    benchmarking first, when there is no usable decision) and say on stderr which backend and why."""
    from ..evidence.decide import decide, decision_file, stale, write_decision

    path = decision_file(cfg)
    decision: Any = None
    if path.is_file():
        try:
            decision = json.loads(path.read_text())
        except (OSError, ValueError):
            decision = None
    why = stale(decision, cfg) if path.is_file() else "no decision yet"
    if why is not None:
        decision = decide(cfg, run_bench=run_bench)
        still = stale(decision, cfg)
        if still is not None:  # the report itself is another model's or data's: deciding again cannot help
            raise DualmlError(f"backend=auto: no decision for this config: {still}; run `dualml bench "
                              f"model={cfg.model.name} data={cfg.data.name}` to measure it, or choose "
                              "backend=torch or backend=paddle")
        write_decision(decision, path)
    pick = decision["pick"]
    if pick is None:
        raise DualmlError(f"backend=auto: no backend qualifies in {path} ({decision['reason']}); choose "
                          "backend=torch or backend=paddle, or revisit configs/decision")
    bench = decision.get("bench") or {}
    from_bench = f", bench {bench.get('model')} {bench.get('created')}" if bench else ""
    fresh = f"; decided now: {why}" if why else ""
    say(f"backend=auto -> {pick} (decision matrix: {decision['reason']}; {path}{from_bench}{fresh})")
    cfg.backend = pick
    return pick


def load(overrides: Sequence[str] = ()) -> DictConfig:
    """The config every command gets: :func:`dualml.config.load_config`, then ``backend=auto`` resolved."""
    cfg = load_config(overrides)
    if cfg.backend == "auto":
        resolve_auto(cfg)
    return cfg
