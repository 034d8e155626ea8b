"""Ensembles of dualml models across backends (issue #18): members trained or loaded on torch or paddle,
numpy combiners (votes, fitted weights, adaptive weights, stacking), bagging with out-of-bag scoring,
SAMME boosting, gradient boosting on residuals (regression), and export of the whole ensemble to one ONNX file.

``dualml ensemble ensemble=<name>`` (configs/ensemble/*.yaml) runs :func:`run_ensemble`; from Python::

    from dualml.ensemble import Ensemble, Member, from_checkpoint
    ens = Ensemble.fit([from_checkpoint("runs/a"), from_checkpoint("runs/b/best", backend="paddle")],
                       x_val, y_val, combiner="logloss")
    ens.predict(x_test)   # class, confidence, agreement, probs
"""
from __future__ import annotations

from .combine import (
    COMBINERS,
    AdaptiveWeights,
    Combiner,
    Stacking,
    accuracy_weights,
    confidence,
    fit_combiner,
    hard_vote,
    logloss_weights,
    soft_vote,
)
from .members import Member, check_compatible, from_checkpoint, train_member
from .model import Ensemble
from .pipeline import fit_members, run_ensemble

__all__ = [
    "COMBINERS", "AdaptiveWeights", "Combiner", "Ensemble", "Member", "Stacking", "accuracy_weights",
    "check_compatible", "confidence", "fit_combiner", "fit_members", "from_checkpoint", "hard_vote",
    "logloss_weights", "run_ensemble", "soft_vote", "train_member",
]
