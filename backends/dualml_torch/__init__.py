"""The PyTorch adapter: the one place dualml imports torch.

Builds neutral specs as ``torch.nn`` layers, reads and writes their weights, and provides the op
namespace. Importing it registers every built-in layer for ``backend=torch``.
"""
from __future__ import annotations

from . import layers as _layers  # noqa: F401  (registers the built-in layers)
from .adapter import backend

__all__ = ["backend"]
