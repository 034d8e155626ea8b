"""The zlib-before-paddle guard (shared STACK.md: ``import paddle; import paddleslim`` dies with SIGSEGV in
zlib's ``inflateReset2`` unless Python's ``zlib`` is loaded first) lives in ``dualml/__init__.py`` only,
and importing the paddle adapter first thing in a fresh interpreter is safe."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_guard_lives_in_one_place() -> None:
    found = [str(p.relative_to(ROOT)) for top in ("dualml", "backends", "benchmarks", "tests", "parity_tests")
             for p in sorted((ROOT / top).rglob("*.py"))
             if re.search(r"^\s*import zlib\b", p.read_text(encoding="utf-8"), re.M)]
    assert found == ["dualml/__init__.py"], found


@pytest.mark.backends("paddle")
def test_adapter_then_paddleslim_in_a_fresh_interpreter() -> None:
    """``dualml_paddle``'s layers import paddle before any dualml module; its ``__init__`` imports dualml first."""
    import importlib.util

    if importlib.util.find_spec("paddleslim") is None:  # lane 3 (requirements-lane3.txt) has no PaddleSlim
        pytest.skip("PaddleSlim is not installed (lane 3: PaddleSlim 2.6.0 fails on Paddle 3); the segfault "
                    "this guards against is paddle then paddleslim")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "backends"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", "import dualml_paddle, paddleslim"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
