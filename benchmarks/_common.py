"""What both benchmarks share: machine facts read without importing a framework, the worker's
thread count, and atomic report writes (dualml's own writer)."""
from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

import dualml
from dualml.checkpoint import atomic_write_bytes as atomic_write  # noqa: F401  (re-exported)


def machine_info() -> dict[str, Any]:
    """Versions, load and CPU bf16 support; the parent process stays framework-free."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": version("torch"), "paddle": version("paddlepaddle"), "numpy": np.__version__,
            "dualml": dualml.__version__, "loadavg_1m_start": os.getloadavg()[0],
            "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx"))}


def threads(backend: str) -> int:
    """Intra-op threads the worker really uses (paddle sets OMP_NUM_THREADS, to 1 unless given, on import)."""
    if backend == "torch":
        import torch
        return torch.get_num_threads()
    return int(os.environ.get("OMP_NUM_THREADS", "0"))


def run_workers(script: str, worker_args: list[str], backends: tuple[str, ...],
                env: dict[str, str] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run ``script --worker B <worker_args> --out FILE`` once per backend, each in a fresh process
    (importing paddle pins OMP threads for the whole process, so torch timed beside it is not what a torch
    user sees). Returns each worker's JSON and the machine facts with the load before and after."""
    import json
    import subprocess
    import sys
    import tempfile

    machine = machine_info()
    parts = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for b in backends:
            path = os.path.join(tmpdir, f"{b}.json")
            subprocess.run([sys.executable, os.path.abspath(script), "--worker", b, *worker_args, "--out", path],
                           check=True, env=env)
            with open(path) as f:
                parts[b] = json.load(f)
    machine["loadavg_1m_end"] = os.getloadavg()[0]
    machine["threads"] = {b: parts[b]["threads"] for b in backends}
    return parts, machine
