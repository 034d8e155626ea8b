"""``dualml train``: train `model` on `data` with `trainer` settings on `backend`; prints the run folder.

Why the relaunch lives here: ``trainer.devices=N`` re-runs this very command line under the framework's
launcher, so it needs the command line itself, which only the CLI has.
"""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..backend import get_backend
from ..errors import DualmlError
from ..train.trainer import Trainer, TrainingDiverged
from .log import VERBOSE, error, keep_in, result, say, verbosity

#: the one-line description in ``dualml --help``
HELP = 'train `model` on `data` with `trainer` settings on `backend`; prints the run folder'
#: config sections (or keys) ``dualml train --help`` lists
KEYS = ('backend', 'seed', 'model', 'data', 'trainer')
SECTION = None


def _launch_data_parallel(cfg: DictConfig, overrides: Sequence[str]) -> int:
    """``trainer.devices=N``: re-run this command on N workers under the framework's own launcher."""
    n = int(cfg.trainer.devices)
    run = cfg.trainer.run_dir or f"runs/{cfg.model.name}-{cfg.backend}-dp{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    if Path(run).exists() and not cfg.trainer.resume:
        raise DualmlError(f"run folder {run} already exists; choose another trainer.run_dir or continue it "
                          "with trainer.resume=true (nothing was overwritten)")
    args = ["train", *[o for o in overrides if not o.startswith("trainer.run_dir=")], f"trainer.run_dir={run}"]
    logs = tempfile.mkdtemp(prefix="dualml-launch-")
    script = str(Path(__file__).with_name("launch_worker.py"))
    cmd = get_backend(cfg.backend).launch_command(n, script, args, logs)
    say(f"launching {n} {cfg.backend} workers: {' '.join(cmd)}")
    keep_in(logs)
    env = {**os.environ, "DUALML_WORKER": "1"}
    if verbosity() >= VERBOSE:
        rc = subprocess.call(cmd, env=env)
    else:  # the launchers' INFO lines (paddle prints ~36) go to a file; the summary is read from the run
        out = Path(logs) / "launcher.out"
        with open(out, "w") as f:
            rc = subprocess.call(cmd, env=env, stdout=f, stderr=subprocess.STDOUT)
        if rc != 0:
            tail = out.read_text(errors="replace").splitlines()[-15:]
            error("the %s launcher exited with %d; last lines of %s:\n%s", cfg.backend, rc, out, "\n".join(tail))
            return rc
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        _summary(metrics, Path(run))
    say(f"launcher logs: {logs}")
    return rc


def _summary(metrics: dict[str, Any], run: Path) -> None:
    if metrics.get("world_size", 1) > 1:
        say(f"data parallel over {metrics['world_size']} ranks; mean |rank - rank 0| weight difference "
            f"{metrics['rank_weight_diff_mean']:.3g}")
    say(f"{metrics['model']} [{metrics['backend']}]: test accuracy {metrics['test_acc']:.4f}, test loss "
        f"{metrics['test_loss']:.4f} after {metrics['steps']} steps / {metrics['epochs']} epochs "
        f"in {metrics['seconds']:.1f} s" + (" (stopped early)" if metrics["stopped_early"] else ""))
    result(f"run folder: {run} (metrics.json, curves.png, steps.csv, epochs.csv, tb/, best/last.safetensors)")


def cmd_train(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Train, or with ``trainer.devices=N`` relaunch this command line on N workers; exit 1 if training diverged."""
    if int(cfg.trainer.devices) > 1 and not os.environ.get("DUALML_WORKER"):
        return _launch_data_parallel(cfg, overrides)
    if int(cfg.trainer.devices) < 1:
        raise DualmlError(f"trainer.devices={cfg.trainer.devices} is not allowed; allowed: an integer >= 1")
    trainer = Trainer(cfg)
    try:
        metrics = trainer.fit()
    except TrainingDiverged as exc:
        error(str(exc))
        return 1
    finally:  # the run folder keeps the command's log, also when training failed
        if trainer.run_dir is not None and trainer.is_main:
            keep_in(trainer.run_dir)
    run = trainer.run_dir
    if not trainer.is_main:
        return 0
    _summary(metrics, run)
    return 0
