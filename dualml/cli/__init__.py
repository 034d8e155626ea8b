"""The command line: ``dualml <command> key=value ...``. The top layer: it may import every other part of
dualml, and nothing in dualml imports it (the import-linter contract in pyproject.toml holds that)."""
from __future__ import annotations

from .main import main

__all__ = ["main"]
