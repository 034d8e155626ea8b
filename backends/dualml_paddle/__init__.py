"""The PaddlePaddle adapter: the one place dualml imports paddle.

``import dualml`` comes first: ``dualml/__init__`` loads Python's ``zlib``, without which paddle 2.6
segfaults in zlib's ``inflateReset2`` (then paddleslim) when imported (see shared STACK.md). A direct
``import dualml_paddle`` in a fresh interpreter therefore stays safe although ``.layers`` imports
paddle before anything of dualml.
"""
from __future__ import annotations

import dualml  # noqa: F401  - first: holds the zlib-before-paddle guard

from . import layers as _layers  # noqa: F401  (registers the built-in layers)
from .adapter import backend

__all__ = ["backend"]
