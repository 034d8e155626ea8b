"""``dualml train``: train `model` on `data` with `trainer` settings on `backend`; prints the run folder.

Why the relaunch lives here: ``trainer.devices=N`` re-runs this very command line under the framework's
launcher, so it needs the command line itself, which only the CLI has.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from ..backend import get_backend
from ..devices import Nodes, check_master_resolves, parse_nodes, resolve_device
from ..errors import DualmlError
from ..train.trainer import Trainer, TrainingDiverged
from .log import VERBOSE, error, keep_in, result, say, verbosity

#: the one-line description in ``dualml --help``
HELP = 'train `model` on `data` with `trainer` settings on `backend`; prints the run folder'
#: config sections (or keys) ``dualml train --help`` lists
KEYS = ('backend', 'seed', 'model', 'data', 'trainer')
SECTION = None


def _launch_data_parallel(cfg: DictConfig, overrides: Sequence[str]) -> int:
    """``trainer.devices=N`` / ``trainer.nnodes=M``: re-run this command on N workers (per node) under the
    framework's own launcher. The device is resolved here first, so a bad ``trainer.device`` is one line
    before any worker starts. Several nodes: the wait for the rendezvous is bounded from this side too
    (``trainer.rendezvous_timeout_s``): paddle's launcher waits for a missing master forever."""
    n = int(cfg.trainer.devices)
    nodes = parse_nodes(cfg.trainer)
    be = get_backend(cfg.backend)
    device, note = resolve_device(cfg.trainer.get("device", "auto"), be.device_count(), 0, n, be.name)
    if nodes.multi:
        check_master_resolves(nodes)
    tag = f"dp{n}" if not nodes.multi else f"n{nodes.nnodes}x{n}"
    run = cfg.trainer.run_dir or f"runs/{cfg.model.name}-{cfg.backend}-{tag}-{time.strftime('%Y%m%d-%H%M%S')}"
    owner = nodes.node_rank == 0  # only node 0's rank 0 writes the run folder
    if owner and Path(run).exists() and not cfg.trainer.resume:
        raise DualmlError(f"run folder {run} already exists; choose another trainer.run_dir or continue it "
                          "with trainer.resume=true (nothing was overwritten)")
    args = ["train", *[o for o in overrides if not o.startswith("trainer.run_dir=")], f"trainer.run_dir={run}"]
    logs = tempfile.mkdtemp(prefix="dualml-launch-")
    script = str(Path(__file__).with_name("launch_worker.py"))
    kwargs: dict[str, Any] = {}
    if nodes.multi:
        kwargs["nodes"] = nodes
    if device.is_cuda:
        kwargs["device"] = device
    cmd = be.launch_command(n, script, args, logs, **kwargs)
    say(note)
    say(f"launching {n} {cfg.backend} worker(s)" + (f" on node {nodes.node_rank} of {nodes.nnodes} (master "
        f"{nodes.master_addr}:{nodes.master_port})" if nodes.multi else "") + f": {' '.join(cmd)}")
    keep_in(logs)
    joined = Path(logs) / "joined"
    joined.mkdir()
    env = {**os.environ, "DUALML_WORKER": "1", "DUALML_JOINED_DIR": str(joined)}
    out = Path(logs) / "launcher.out"
    verbose = verbosity() >= VERBOSE
    with open(out, "w") as f:
        sink = {} if verbose else {"stdout": f, "stderr": subprocess.STDOUT}
        rc = _run_bounded(cmd, env, sink, joined, n, nodes)
    if rc is None:
        who = (f"node 0 of {nodes.nnodes} (the master, {nodes.master_addr}:{nodes.master_port}) did not see every "
               "node join (are the other nodes running, with this master_addr/master_port?" if owner else
               f"node {nodes.node_rank} of {nodes.nnodes} could not join the master {nodes.master_addr}:"
               f"{nodes.master_port} (is node 0 running and reachable?")
        raise DualmlError(f"no rendezvous within trainer.rendezvous_timeout_s={nodes.rendezvous_timeout_s:g}: "
                          f"{who} launcher log: {out})")
    if rc != 0:
        if not verbose:
            tail = out.read_text(errors="replace").splitlines()[-15:]
            error("the %s launcher exited with %d; last lines of %s:\n%s", cfg.backend, rc, out, "\n".join(tail))
        return rc
    if owner and not verbose:
        metrics = json.loads((Path(run) / "metrics.json").read_text())
        _summary(metrics, Path(run))
    elif not owner:
        say(f"node {nodes.node_rank} done; node 0 writes the run folder {run}")
    say(f"launcher logs: {logs}")
    return rc


def _run_bounded(cmd: list[str], env: dict[str, str], sink: dict[str, Any], joined: Path, n: int,
                 nodes: Nodes) -> int | None:
    """Run the launcher; None when its ``n`` workers have not all passed the rendezvous within the bound
    (the launcher's process group, which this started, is then stopped). One node needs no bound."""
    if not nodes.multi:  # same process group: Ctrl-C reaches the launcher as before
        return subprocess.call(cmd, env=env, **sink)
    # its own process group, so the whole launcher tree can be stopped at the deadline (or on Ctrl-C here)
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, **sink)
    deadline = time.monotonic() + nodes.rendezvous_timeout_s
    try:
        while proc.poll() is None:
            if len(list(joined.iterdir())) >= n:
                return proc.wait()
            if time.monotonic() > deadline:
                _stop_group(proc)
                return None
            time.sleep(0.2)
    except BaseException:
        _stop_group(proc)
        raise
    return proc.returncode


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the launcher's process group (started by this command), SIGKILL what is left after 10 s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            continue


def _summary(metrics: dict[str, Any], run: Path) -> None:
    if metrics.get("world_size", 1) > 1:
        say(f"data parallel over {metrics['world_size']} ranks; mean |rank - rank 0| weight difference "
            f"{metrics['rank_weight_diff_mean']:.3g}")
    if "test_mae" in metrics:  # regression (data=traffic): masked errors at the horizons, and the baselines
        def by_horizon(h: dict[str, Any]) -> str:
            return ", ".join(f"{k}: {v['mae']:.3f}/{v['rmse']:.3f}/{v['mape']:.2f}" for k, v in h.items() if k != "all")

        say("masked test MAE/RMSE/MAPE% at horizons " + by_horizon(metrics["test_horizons"]))
        for name, b in (metrics.get("baselines") or {}).items():
            say(f"  baseline {name}: " + by_horizon(b))
        score = f"test MAE {metrics['test_mae']:.4f}"
    else:
        score = f"test accuracy {metrics['test_acc']:.4f}"
    say(f"{metrics['model']} [{metrics['backend']}]: {score}, test loss "
        f"{metrics['test_loss']:.4f} after {metrics['steps']} steps / {metrics['epochs']} epochs "
        f"in {metrics['seconds']:.1f} s" + (" (stopped early)" if metrics["stopped_early"] else ""))
    result(f"run folder: {run} (metrics.json, curves.png, steps.csv, epochs.csv, tb/, best/last.safetensors)")


def cmd_train(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Train, or with ``trainer.devices=N`` relaunch this command line on N workers; exit 1 if training diverged."""
    if (int(cfg.trainer.devices) > 1 or int(cfg.trainer.get("nnodes", 1)) > 1) and not os.environ.get("DUALML_WORKER"):
        return _launch_data_parallel(cfg, overrides)
    if int(cfg.trainer.devices) < 1:
        raise DualmlError(f"trainer.devices={cfg.trainer.devices} is not allowed; allowed: an integer >= 1")
    trainer = Trainer(cfg)
    if trainer.is_main and not os.environ.get("DUALML_WORKER"):
        say(trainer.device_note)
    if trainer.is_main and trainer.init_report is not None:
        say(trainer.init_report.summary())
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
