"""What the benchmarks share: machine facts read without importing a framework, the worker's
thread count, one fresh process per backend (:mod:`dualml.workers`) and atomic report writes (dualml's
own writer). Importing it also puts tests/ on the path:
the hand-written reference models the overhead benchmarks compare with are test fixtures
(tests/fixtures/handwritten_<backend>.py), not part of the installed package."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from dualml.checkpoint import atomic_write_bytes as atomic_write  # noqa: F401  (re-exported)
from dualml.evidence.bench import machine_info  # noqa: F401  (re-exported; dualml bench records the same facts)

TESTS = str(Path(__file__).resolve().parents[1] / "tests")
if TESTS not in sys.path:
    sys.path.insert(0, TESTS)


def threads(backend: str) -> int:
    """Intra-op threads the worker's framework computes with (``Backend.threads``, as dualml bench records)."""
    from dualml.backend import get_backend

    return get_backend(backend).threads()


def run_workers(script: str, worker_args: list[str], backends: tuple[str, ...],
                env: dict[str, str] | None = None) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Run ``script --worker B <worker_args> --out FILE`` once per backend, each in a fresh process
    (:mod:`dualml.workers` says why; output stays on this terminal for the progress bars). Returns each
    worker's JSON and the machine facts with the load before and after."""
    import tempfile

    from dualml import workers

    machine = machine_info()
    parts = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        for b in backends:
            path = Path(tmpdir) / f"{b}.json"
            parts[b] = workers.run(workers.command(script, ["--worker", b, *worker_args, "--out", str(path)]),
                                   path, f"{Path(script).name} worker for {b}", env=env)
    machine["loadavg_1m_end"] = os.getloadavg()[0]
    machine["threads"] = {b: parts[b]["threads"] for b in backends}
    return parts, machine
