"""``dualml train``: train `model` on `data` with `trainer` settings on `backend`; prints the run folder.

Why the relaunch lives here: ``trainer.devices=N`` re-runs this very command line under the framework's
launcher, so it needs the command line itself, which only the CLI has.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from ..backend import get_backend
from ..errors import DualmlError
from ..train.trainer import Trainer, TrainingDiverged

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
    print(f"launching {n} {cfg.backend} workers: {' '.join(cmd)}")
    rc = subprocess.call(cmd, env={**os.environ, "DUALML_WORKER": "1"})
    print(f"launcher logs: {logs}")
    return rc


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
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run = trainer.run_dir
    if not trainer.is_main:
        return 0
    if trainer.world_size > 1:
        print(f"data parallel over {trainer.world_size} ranks; mean |rank - rank 0| weight difference "
              f"{metrics['rank_weight_diff_mean']:.3g}")
    print(f"{metrics['model']} [{metrics['backend']}]: test accuracy {metrics['test_acc']:.4f}, test loss "
          f"{metrics['test_loss']:.4f} after {metrics['steps']} steps / {metrics['epochs']} epochs "
          f"in {metrics['seconds']:.1f} s" + (" (stopped early)" if metrics["stopped_early"] else ""))
    print(f"run folder: {run} (metrics.json, curves.png, steps.csv, epochs.csv, tb/, best/last.safetensors)")
    return 0
