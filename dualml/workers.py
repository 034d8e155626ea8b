"""One fresh process per backend: how ``dualml bench``, ``dualml estimate`` and ``benchmarks/`` measure a
framework apart from the others.

Why a process of its own for each framework: importing paddle pins OpenMP to one thread for the whole
process (OMP_NUM_THREADS, set to 1 when unset), so torch timed beside it is not what a torch user sees;
and peak memory (``ru_maxrss``, ``VmHWM``) is per process, so each framework's figure must be its own.
The parent imports no framework. Written once here; the callers only say what the worker runs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import DualmlError


def command(target: str, args: Sequence[str]) -> list[str]:
    """``python -m target args`` for a module name (``dualml.evidence.bench``), ``python target args`` for a
    script path (``benchmarks/bench_core.py``), with this interpreter."""
    if target.endswith(".py") or os.sep in target:
        return [sys.executable, os.path.abspath(target), *args]
    return [sys.executable, "-m", target, *args]


def environment(threads: int | None = None, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The worker's environment: ``env`` (default: this process's) with ``OMP_NUM_THREADS=threads`` when
    given, because paddle reads it at import (and sets 1 when unset) and torch reads it too; after import
    ``Backend.set_threads`` keeps the count."""
    out = dict(os.environ if env is None else env)
    if threads is not None:
        out["OMP_NUM_THREADS"] = str(int(threads))
    return out


def start(cmd: Sequence[str], log: Path | None = None, threads: int | None = None,
          env: Mapping[str, str] | None = None, pass_fds: Sequence[int] = ()) -> subprocess.Popen:
    """Start a worker. Its output goes to ``log`` (exporters and frameworks print; the user's terminal
    gets dualml's summary), or to this process's stdout/stderr when None (benchmarks show progress)."""
    kw: dict[str, Any] = {"stdin": subprocess.DEVNULL, "pass_fds": tuple(pass_fds), "env": environment(threads, env)}
    if log is None:
        return subprocess.Popen(list(cmd), **kw)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:  # the child holds its own copy of the descriptor
        return subprocess.Popen(list(cmd), stdout=fh, stderr=subprocess.STDOUT, **kw)


def failure(what: str, code: int, log: Path | None, hint: str = "", keep_log: bool = True) -> str:
    """One line for a worker that died: what ran, its exit (a signal says which, plus ``hint``), the last
    line it printed, and where its whole log is (when ``keep_log``: a temporary log is gone by then)."""
    lines = log.read_text(errors="replace").strip().splitlines() if log is not None and log.exists() else []
    exit_ = f"exit {code}" if code >= 0 else f"killed by signal {-code}{hint}"
    where = f" (log: {log})" if log is not None and keep_log else ""
    return f"{what} failed ({exit_}): {lines[-1] if lines else 'no output'}{where}"


def run(cmd: Sequence[str], out: Path, what: str, log: Path | None = None, threads: int | None = None,
        env: Mapping[str, str] | None = None, hint: str = "", keep_log: bool = True) -> Any:
    """Run a worker that writes JSON to ``out`` to completion and return that JSON; a worker that fails
    or writes nothing is one :class:`DualmlError` line (:func:`failure`)."""
    code = start(cmd, log, threads, env).wait()
    if code != 0 or not out.is_file():
        raise DualmlError(failure(what, code, log, hint, keep_log))
    return json.loads(out.read_text())
