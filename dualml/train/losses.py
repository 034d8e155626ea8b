"""Regression losses (mse, mae, huber) composed once over the adapter's neutral ops (``Backend.ops``).

Why a composition and not a method per adapter: the same formula written twice would be two chances
to differ (torch's ``l1_loss`` and paddle's take different reductions and masks). Every op used is in
``dualml.ops.OPS``: ``|d|`` is ``2 relu(d) - d`` and the Huber loss ``0.5 m^2 + delta relu(|d| - delta)``
with ``m = |d| - relu(|d| - delta)``, so no comparison op is needed and the gradient at ``d = 0`` is 0 on
both backends. The mask (missing readings, ``y == 0``) is applied as numpy weights ``mask / mask.sum()``
(``dualml.train.metrics.loss_weights``), so the loss is the mean over valid entries exactly as the
metrics define it. The forecast is un-scaled (``pred * std + mean``) before it is compared with the
targets, which stay in their own units (mph), as DCRNN does.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .metrics import loss_weights


def regression_loss(be: Any, kind: str, pred: Any, labels: Any, y: np.ndarray, mask_zeros: bool,
                    scale: tuple[float, float] | None = None, delta: float = 1.0) -> Any:
    """The ``kind`` loss of the model output ``pred`` (any shape with ``y.size`` values per batch) against
    ``labels`` (the tensor of the numpy targets ``y``), through ``be.ops``; a native scalar tensor."""
    F = be.ops
    dtype = str(y.dtype)
    const = lambda v: be.tensor(np.asarray([v], dtype))  # noqa: E731  (shape [1]: broadcasts on both backends)
    pred = F.reshape(F.cast(pred, dtype), y.shape)
    if scale is not None:
        pred = F.add(F.mul(pred, const(scale[1])), const(scale[0]))
    d = F.sub(pred, labels)
    if kind == "mse":
        e = F.mul(d, d)
    else:
        a = F.sub(F.mul(F.relu(d), const(2.0)), d)
        if kind == "mae":
            e = a
        else:  # huber
            r = F.relu(F.sub(a, const(delta)))
            m = F.sub(a, r)
            e = F.add(F.mul(F.mul(m, m), const(0.5)), F.mul(r, const(delta)))
    return F.sum(F.mul(e, be.tensor(loss_weights(y, mask_zeros, y.dtype))))
