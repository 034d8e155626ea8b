"""``dualml curves``: train the config on `backend` and `parity.against` in float64 and float32; same training?.

The check itself is dualml.evidence.curves; each run reloads the config from the command line's
overrides, with the backend and dtype set per run, which is why the command takes them.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from ..checkpoint import atomic_write_bytes, atomic_write_text
from ..cpu import describe_cpu
from ..errors import DualmlError
from ..evidence.curves import EARLY_STEPS, PART_RTOL, as_dict, markdown, plot, run_curve
from .log import result, say

#: the one-line description in ``dualml --help``
HELP = 'train the config on `backend` and `parity.against` in float64 and float32; same training?'
#: config sections (or keys) ``dualml curves --help`` lists
KEYS = ('backend', 'seed', 'out_dir', 'model', 'data', 'trainer', 'parity.against')
SECTION = None


def cmd_curves(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml curves model=... trainer.optimizer...``: this training on ``backend`` and ``parity.against``,
    in float64 and float32, judged as above; report under <out_dir>/curves/<model>/. ``overrides`` are the
    command line's ``key=value`` items: each run reloads the config from them (backend and dtype set per run)."""
    backends = (str(cfg.backend), str(cfg.parity.against))
    if backends[0] == backends[1]:
        raise DualmlError(f"parity.against={backends[1]} is the same as backend={backends[0]}; compare two backends")
    steps = int(cfg.trainer.max_steps or 100)
    if steps < EARLY_STEPS:
        raise DualmlError(f"trainer.max_steps={steps} is not allowed here; allowed: >= {EARLY_STEPS} (the early steps "
                          "are judged on their own)")
    # the backend and dtype are set per run; every other override is the training being checked
    overrides = [o for o in overrides if not o.startswith(("backend=", "trainer.dtype=", "trainer.max_steps=",
                                                            "parity.", "out_dir="))]
    results = [as_dict(run_curve(f"{cfg.model.name}/{cfg.trainer.optimizer.name}", overrides, backends, steps, d))
               for d in ("float64", "float32")]
    report = {"cpu": describe_cpu(), "steps": steps, "overrides": overrides, "results": results}
    out = Path(cfg.out_dir) / "curves" / str(cfg.model.name)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2))
    atomic_write_text(out / "report.md", markdown(report))
    atomic_write_bytes(out / "curves.png", plot(results))
    for r in results:
        extra = "" if r["dtype"] == "float64" else (
            f", one-ulp self {r['max_self']:.2e}, ratio {r['ratio']:.2f}, parts >{PART_RTOL:g} at step "
            f"{r['first_part'] or '-'}{' (' + r['cause'][0] + ')' if r['cause'] else ''}")
        say(f"{r['dtype']}: {'pass' if r['passed'] else 'FAIL'} cross max {r['max_cross']:.2e}{extra}")
    result(f"report: {out / 'report.json'}, {out / 'report.md'}, {out / 'curves.png'}")
    return 0 if all(r["passed"] for r in results) else 1
