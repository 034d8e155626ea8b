"""Which supported paddle line this process runs on, read once: every version-dependent code path of
the paddle adapter is keyed on these constants (issue #15; the two lanes are requirements-cpu.txt and
requirements-lane3.txt, see README "Lanes").

- lane 2.6: paddlepaddle 2.6.2 + PaddleSlim 2.6.0 + paddle2onnx 1.3.1 (the pinned stack);
- lane 3: paddlepaddle 3.3.x + paddle2onnx 2.1 (programs in PIR, no PaddleSlim).

Each shim that reads them says which framework behaviour it works around, where it is.
"""
from __future__ import annotations

import os

# paddle2onnx 2.x imports Polygraphy, which pip-installs missing packages by itself at the first use when
# POLYGRAPHY_AUTOINSTALL_DEPS is set (an export must never change the environment). paddle2onnx 2.1.0's
# `export` sets it to 1 itself before constant folding, so the exporter is also called with
# optimize_tool="none" on lane 3 (backends/dualml_paddle/export.py); this default covers any other import.
os.environ.setdefault("POLYGRAPHY_AUTOINSTALL_DEPS", "0")

import paddle  # noqa: E402

#: the paddle version this process imported, as written ("3.3.1") and as (major, minor)
VERSION: str = paddle.__version__
PADDLE_VERSION: tuple[int, int] = tuple(int(p) for p in paddle.__version__.split(".")[:2])  # type: ignore[assignment]
#: True on the Paddle 3 line (lane 3): PIR programs, paddle2onnx 2.x, no PaddleSlim
PADDLE3: bool = PADDLE_VERSION[0] >= 3
#: the lane's name as the refusal messages and reports write it
LANE: str = "lane 3" if PADDLE3 else "lane 2.6"
#: the stack of each lane, for messages that point at the other one
STACKS = {"lane 2.6": "paddlepaddle 2.6.2 + paddleslim 2.6.0 + paddle2onnx 1.3.1, requirements-cpu.txt",
          "lane 3": "paddlepaddle 3.3 + paddle2onnx 2.1, requirements-lane3.txt"}
