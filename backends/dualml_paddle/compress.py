"""Filter selection for structured pruning with PaddleSlim's dygraph filter pruners.

``L1NormFilterPruner`` / ``L2NormFilterPruner`` / ``FPGMFilterPruner`` are built on the native
paddle model and an input shape (PaddleSlim traces the model into a program to find which
variables are coupled), then ``prune_var(..., apply=None)`` returns the pruning plan without
touching the model: the conv's own mask (axis 0) gives the removed filters and the plan's other
variables give the layers PaddleSlim considers coupled. The removal is done by dualml's neutral
code, so both backends build the identical pruned model.

Lane 3 (Paddle 3) has no PaddleSlim: its latest release, 2.6.0, imports on paddle 3.3.1 (with six,
requests, decorator, pyzmq and setuptools<81 added by hand) but constructing ``L1NormFilterPruner``
fails with ``AttributeError: module 'paddle.base.dygraph.base' has no attribute
'_to_static_mode_guard_'`` (measured; the dy2static guard it imports was removed in Paddle 3). So on
lane 3 ``selection=backend`` is refused in one line, before any training, pointing at lane 2.6 and at
``selection=numpy`` (dualml's own L1/L2/FPGM, the reference the parity suite holds PaddleSlim to).
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from dualml.errors import BackendError
from dualml.quiet import quiet

from .lane import LANE, PADDLE3, STACKS, VERSION

#: why the paddle filter-selection tool is missing in this process, or None (see the module docstring)
NO_PADDLESLIM = (f"PaddleSlim's filter pruners are lane 2.6 only ({STACKS['lane 2.6']}); this is {LANE} (paddle "
                 f"{VERSION}), where PaddleSlim 2.6.0 "
                 "fails (L1NormFilterPruner: paddle.base.dygraph.base has no _to_static_mode_guard_)"
                 if PADDLE3 else None)


class PaddleCompress:
    def filter_selection_support(self) -> str | None:
        return NO_PADDLESLIM

    def select_filters(self, net: Any, ratios: dict[str, float], method: str, inputs: Any) -> dict[str, Any]:
        """{conv path: Selection} for ``ratios`` {conv path: ratio} by ``method`` (l1 | l2 | fpgm)."""
        if NO_PADDLESLIM:
            raise BackendError(f"prune selection by backend=paddle is not supported: {NO_PADDLESLIM}; allowed: "
                               "selection=numpy / backend=None (dualml's own l1 | l2 | fpgm on canonical weights)")
        from paddleslim.dygraph import FPGMFilterPruner, L1NormFilterPruner, L2NormFilterPruner

        from dualml.build import native_leaves
        from dualml.compress.prune import Selection

        leaves = native_leaves(net)
        owner = {p.name: path for path, leaf in leaves.items() for p in leaf.parameters()}
        shape = [int(s) for s in inputs.shape]
        with quiet(("paddleslim",), logging.WARNING):
            if method == "fpgm":
                pruner = FPGMFilterPruner(net, shape, skip_leaves=False)
            else:
                cls = L1NormFilterPruner if method == "l1" else L2NormFilterPruner
                pruner = cls(net, shape, skip_leaves=False, input_dtype=str(inputs.dtype))
        out = {}
        for path, ratio in ratios.items():
            name = leaves[path].weight.name
            with quiet(("paddleslim",), logging.WARNING):
                plan = pruner.prune_var(name, 0, ratio, apply=None)
            masks = [m for m in (plan.masks.get(name, []) if plan is not None else []) if m.dims == 0]
            if not masks:
                raise BackendError(f"PaddleSlim found no pruning group for layer '{path}' ({name})")
            removed = np.flatnonzero(np.asarray(masks[0].mask) == 0)
            group = sorted({owner[v] for v in plan.masks if v in owner} - {path})
            out[path] = Selection(tuple(int(i) for i in removed), f"paddleslim {type(pruner).__name__}",
                                  tuple(group))
        return out
