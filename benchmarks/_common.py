"""What both benchmarks share: machine facts read without importing a framework, the worker's
thread count, and atomic report writes (dualml's own writer). Importing it also puts tests/ on the path:
the hand-written reference models the overhead benchmarks compare with are test fixtures
(tests/fixtures/handwritten_<backend>.py), not part of the installed package."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from dualml.checkpoint import atomic_write_bytes as atomic_write  # noqa: F401  (re-exported)
from dualml.evidence.bench import machine_info, threads  # noqa: F401  (re-exported; dualml bench records the same facts)

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


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
