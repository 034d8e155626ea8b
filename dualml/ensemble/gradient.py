"""Gradient boosting on residuals for regression (``data=traffic``): each round trains a member on what
the rounds before left unexplained.

Round 1 fits the targets as any regression run does. Round ``t > 1`` fits the residuals
``y - F_{t-1}(x)`` (in target units, mph) with the same Trainer and ``trainer.loss``; with ``mse`` this is
least-squares gradient boosting (the residual is the negative gradient). ``F_t = F_{t-1} + shrinkage * h_t``.
Why this needs no change to the Trainer: the residuals replace the split's targets, a missing reading
(target 0) keeps residual 0 so the loss's zero mask still drops it, and the residuals' own scale becomes
the data's ``target_scale`` (mean 0, their std), which the loss un-scales the member's output with.
The combination is ``sum_t c_t * (out_t * std_t + mean_t)``: a :class:`Combiner` of kind ``sum`` with
weights ``c_t * std_t`` and offset ``sum_t c_t * mean_t``, exported as Mul + Sum + Add.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ..quiet import progress_bar
from ..train.metrics import masked_errors
from .combine import Combiner
from .members import Member, member_config, train_member


@dataclass
class Boosted:
    """The members, the (mean, std) that un-scales each one's output, its rate, and the rounds' scores."""

    members: list[Member] = field(default_factory=list)
    scales: list[tuple[float, float]] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def combiner(self) -> Combiner:
        c = np.array(self.rates)
        std = np.array([s for _, s in self.scales])
        mean = np.array([m for m, _ in self.scales])
        return Combiner("sum", c * std, offset=float((c * mean).sum()))


def _residual_split(split: Any, pred: np.ndarray) -> Any:
    """``split`` with targets ``y - pred``; missing readings (y == 0) keep residual 0 (the loss masks zeros)."""
    y = split.y.astype(np.float64)
    r = np.where(y != 0, y - pred.reshape(y.shape), 0.0).astype(split.y.dtype)
    return replace(split, y=r)


def boost(specs: Sequence[dict[str, Any]], dataset: Any, overrides: Sequence[str], rounds: int, shrinkage: float,
          progress: bool = True) -> Boosted:
    """``rounds`` rounds of gradient boosting (member templates cycled, seed + round), scoring the running
    ensemble's masked MAE/RMSE on the train, val and test splits after each round."""
    out = Boosted()
    splits = {s: getattr(dataset, s) for s in ("train", "val", "test")}
    f = {s: np.zeros((len(sp.y), int(np.prod(sp.y.shape[1:])))) for s, sp in splits.items()}
    for r in progress_bar(range(rounds), desc="gradient boosting rounds", unit="round", enabled=progress):
        spec = specs[r % len(specs)]
        if r == 0:
            ds, scale = dataset, tuple(float(v) for v in dataset.target_scale)
        else:
            res = {s: _residual_split(sp, f[s]) for s, sp in splits.items()}
            valid = res["train"].y[splits["train"].y != 0]
            scale = (0.0, float(valid.std()) or 1.0)
            ds = replace(dataset, train=res["train"], val=res["val"], test=res["test"], target_scale=scale,
                         baselines=None)
        m = train_member(member_config(overrides, spec, int(spec.get("seed") or 0) + r), ds,
                         info={"index": r, "fits": "targets" if r == 0 else "residuals"})
        rate = 1.0 if r == 0 else float(shrinkage)
        row: dict[str, Any] = {"round": r + 1, "member": m.label, "rate": rate,
                               "scale": list(scale)}
        for s, sp in splits.items():
            f[s] = f[s] + rate * (m.outputs(sp.x).astype(np.float64) * scale[1] + scale[0])  # float64, as combine
            e = masked_errors(f[s].reshape(sp.y.shape), sp.y)
            row[f"{s}_mae"], row[f"{s}_rmse"] = e["mae"], e["rmse"]
        out.members.append(m)
        out.scales.append(scale)
        out.rates.append(rate)
        out.rounds.append(row)
    return out
