"""The PaddlePaddle adapter: the one place dualml imports paddle.

Paddle 2.6 segfaults in zlib's ``inflateReset2`` when paddle (then paddleslim) is imported before
Python's own ``zlib``; importing ``zlib`` first, here, is the fix (see shared STACK.md).
"""
from __future__ import annotations

import zlib  # noqa: F401  - must precede the first `import paddle`

from . import layers as _layers  # noqa: F401  (registers the built-in layers)
from .adapter import backend

__all__ = ["backend"]
