"""Combiners: how the members' class probabilities become the ensemble's, in plain numpy.

Why numpy and not a framework: members run on different backends, and what joins them must be one
computation that neither backend owns; it is also small enough to be restated exactly as ONNX nodes
(``dualml/ensemble/onnx_graph.py``), which is what makes the single deployable file possible.

Every combiner takes ``probs`` shaped [members, samples, classes] (each member's softmax) and returns
[samples, classes] probabilities. Weighted combiners hold non-negative weights summing to 1 (a point
of the simplex), so the result is again a probability distribution per sample.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, not_allowed

#: combiner names accepted by ``ensemble.combiner``
COMBINERS = ("hard", "soft", "weighted", "logloss", "adaptive", "stacking")
#: probability floor inside logarithms (a member certain of the wrong class must not give inf)
EPS = 1e-12


def _as_probs(probs: Any) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 3:
        raise ConfigError(f"member probabilities have shape {list(p.shape)}; allowed: [members, samples, classes]")
    return p


def votes(probs: Any) -> np.ndarray:
    """One-hot of each member's argmax, [members, samples, classes] (ties: the lowest class, as
    ``np.argmax`` and ONNX ``ArgMax`` both choose)."""
    p = _as_probs(probs)
    return np.eye(p.shape[2])[p.argmax(axis=2)]


def hard_vote(probs: Any, weights: Any = None) -> np.ndarray:
    """The (weighted) share of votes each class gets: argmax = the majority class, rows sum to 1."""
    v = votes(probs)
    w = uniform(len(v)) if weights is None else check_weights(weights, len(v))
    return np.tensordot(w, v, axes=1)


def soft_vote(probs: Any, weights: Any = None) -> np.ndarray:
    """The (weighted) mean of the members' probabilities."""
    p = _as_probs(probs)
    w = uniform(len(p)) if weights is None else check_weights(weights, len(p))
    return np.tensordot(w, p, axes=1)


def uniform(m: int) -> np.ndarray:
    return np.full(m, 1.0 / m)


def check_weights(weights: Any, m: int, key: str = "ensemble.weights") -> np.ndarray:
    """Fixed weights must be a point of the simplex: ``m`` numbers >= 0 summing to 1 (within 1e-6, so
    that ``[0.2, 0.3, 0.5]`` typed by hand passes). Anything else is refused rather than renormalised:
    weights that do not sum to 1 are usually a typo, and renormalising would hide which number was meant."""
    w = np.asarray(weights, dtype=np.float64).ravel()
    if len(w) != m:
        raise ConfigError(f"{key}={list(np.asarray(weights).ravel())} is not allowed; allowed: {m} numbers "
                          f"(one per member) >= 0 summing to 1")
    if not np.isfinite(w).all() or (w < 0).any() or abs(w.sum() - 1.0) > 1e-6:
        raise ConfigError(f"{key}={[float(v) for v in w]} is not allowed (sum {w.sum():.6g}); allowed: numbers "
                          ">= 0 summing to 1")
    return w


def log_loss(p: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels ``y`` under probabilities ``p`` [samples, classes]."""
    return float(-np.log(np.maximum(p[np.arange(len(y)), y], EPS)).mean())


def accuracy_weights(probs: Any, y: np.ndarray) -> np.ndarray:
    """Weights proportional to each member's validation accuracy (a member at chance still counts,
    a member that is never right gets 0)."""
    p = _as_probs(probs)
    acc = (p.argmax(axis=2) == np.asarray(y)[None]).mean(axis=1)
    return acc / acc.sum() if acc.sum() > 0 else uniform(len(p))


def logloss_weights(probs: Any, y: np.ndarray) -> np.ndarray:
    """The simplex weights minimising the validation log-loss of the soft vote.

    The objective ``-mean log(sum_m w_m p_m[y])`` is convex in ``w`` (minus the log of a linear
    function), so SLSQP from the uniform point with the simplex as constraints finds the global
    minimum; the gradient is given in closed form. Clipping tiny negatives SLSQP leaves (~1e-17) and
    renormalising keeps the result exactly on the simplex."""
    from scipy.optimize import minimize

    p = _as_probs(probs)
    y = np.asarray(y)
    py = p[:, np.arange(len(y)), y].T  # [samples, members]: each member's probability of the true class

    def f(w: np.ndarray) -> tuple[float, np.ndarray]:
        mix = np.maximum(py @ w, EPS)
        return float(-np.log(mix).mean()), -(py / mix[:, None]).mean(axis=0)

    m = len(p)
    res = minimize(f, uniform(m), jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * m,
                   constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": lambda w: np.ones_like(w)}],
                   options={"ftol": 1e-12, "maxiter": 500})
    w = np.clip(res.x, 0.0, None)
    return w / w.sum()


@dataclass
class AdaptiveWeights:
    """Weights that follow the members' recent log-loss as labelled data arrives (exponentially
    weighted / Hedge): ``w_m <- w_m * exp(-eta * logloss_m(batch))``, then renormalised. Why: a member
    that degrades on drifting data loses weight without refitting anything; ``eta`` sets how fast
    (0 keeps the weights). ``floor`` (in [0, 1)) mixes in that share of the uniform weights, keeping
    every member at ``floor / members`` or more, so one bad batch cannot silence a member for good."""

    weights: np.ndarray
    eta: float = 1.0
    floor: float = 0.01
    history: list[list[float]] = field(default_factory=list)

    @classmethod
    def start(cls, m: int, eta: float = 1.0, floor: float = 0.01) -> AdaptiveWeights:
        return cls(uniform(m), float(eta), float(floor))

    def update(self, probs: Any, y: np.ndarray) -> np.ndarray:
        """Fold in one labelled batch; returns the new weights."""
        p = _as_probs(probs)
        y = np.asarray(y)
        losses = np.array([log_loss(pm, y) for pm in p])
        w = self.weights * np.exp(-self.eta * (losses - losses.min()))  # shifted: same ratio, no underflow
        # mixed with uniform (not clipped then renormalised, which would push a clipped weight back under
        # the floor): every weight stays >= floor / members and the sum stays 1
        self.weights = (1.0 - self.floor) * (w / w.sum()) + self.floor / len(w)
        self.history.append([float(v) for v in self.weights])
        return self.weights

    def combine(self, probs: Any) -> np.ndarray:
        return soft_vote(probs, self.weights)


@dataclass
class Stacking:
    """A multinomial logistic regression on the members' concatenated probabilities (the meta-model):
    ``softmax(concat(p_1..p_M) @ W + b)``, fitted on the validation split. Kept to one linear layer so
    it exports as MatMul + Add + Softmax. ``W`` is [members * classes, classes]."""

    W: np.ndarray
    b: np.ndarray

    @classmethod
    def fit(cls, probs: Any, y: np.ndarray, c: float = 1.0, seed: int = 0) -> Stacking:
        from sklearn.linear_model import LogisticRegression

        p = _as_probs(probs)
        k = p.shape[2]
        y = np.asarray(y)
        if len(np.unique(y)) < k:
            raise ConfigError(f"ensemble.combiner=stacking needs every class in the validation split; it has "
                              f"{len(np.unique(y))} of {k} (allowed: a larger data.val_fraction)")
        lr = LogisticRegression(C=float(c), max_iter=2000, random_state=seed).fit(features(p), y)
        return cls(lr.coef_.T.astype(np.float64), lr.intercept_.astype(np.float64))

    def combine(self, probs: Any) -> np.ndarray:
        z = features(_as_probs(probs)) @ self.W + self.b
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def features(p: np.ndarray) -> np.ndarray:
    """[members, samples, classes] -> [samples, members * classes], member-major (the ONNX Concat order)."""
    return np.concatenate(list(p), axis=1)


@dataclass
class Combiner:
    """A fitted combiner: ``kind`` (one of :data:`COMBINERS`, ``samme``: boosting's alpha-weighted vote, or
    ``sum``: gradient boosting's ``sum_t weights_t * outputs_t + offset`` on raw regression outputs),
    ``weights`` for the vote kinds, ``stack`` for stacking. ``combine(probs)`` is what the ONNX graph
    computes."""

    kind: str
    weights: np.ndarray | None = None
    stack: Stacking | None = None
    adaptive: AdaptiveWeights | None = None
    #: ``sum`` only: added to the weighted sum (gradient boosting's un-scaling offsets)
    offset: float = 0.0

    def combine(self, probs: Any) -> np.ndarray:
        if self.kind == "sum":  # regression members' outputs, not probabilities: no simplex
            return np.tensordot(np.asarray(self.weights, np.float64), _as_probs(probs), axes=1) + self.offset
        if self.kind in ("hard", "samme"):
            return hard_vote(probs, self.weights)
        if self.kind == "stacking":
            assert self.stack is not None
            return self.stack.combine(probs)
        return soft_vote(probs, self.weights)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.weights is not None:
            out["weights"] = [float(v) for v in self.weights]
        if self.stack is not None:
            out["stacking"] = {"W_shape": list(self.stack.W.shape), "b": [float(v) for v in self.stack.b]}
        if self.kind == "sum":
            out["offset"] = self.offset
        if self.adaptive is not None:
            out["adaptive"] = {"eta": self.adaptive.eta, "floor": self.adaptive.floor,
                               "history": self.adaptive.history}
        return out


def fit_combiner(kind: str, probs: Any, y: np.ndarray, weights: Any = None, eta: float = 1.0,
                 batch: int = 32, seed: int = 0) -> Combiner:
    """Fit combiner ``kind`` on validation ``probs``/``y``. ``weights``: fixed weights for hard/soft
    (checked on the simplex). ``adaptive`` starts uniform and folds the validation split in as a
    stream of ``batch``-sized batches, the way labelled data would arrive after deployment."""
    if kind not in COMBINERS:
        raise ConfigError(not_allowed("ensemble.combiner", kind, COMBINERS))
    p = _as_probs(probs)
    m = len(p)
    if weights is not None and kind not in ("hard", "soft"):
        raise ConfigError(f"ensemble.weights is not allowed with ensemble.combiner={kind} (it fits its own); "
                          "allowed: with combiner hard or soft, or null")
    fixed = None if weights is None else check_weights(weights, m)
    if kind in ("hard", "soft"):
        return Combiner(kind, uniform(m) if fixed is None else fixed)
    if kind == "weighted":
        return Combiner(kind, accuracy_weights(p, y))
    if kind == "logloss":
        return Combiner(kind, logloss_weights(p, y))
    if kind == "adaptive":
        ada = AdaptiveWeights.start(m, eta)
        for i in range(0, p.shape[1], batch):
            ada.update(p[:, i:i + batch], np.asarray(y)[i:i + batch])
        return Combiner(kind, ada.weights.copy(), adaptive=ada)
    return Combiner(kind, stack=Stacking.fit(p, y, seed=seed))


def confidence(probs: Any, combined: np.ndarray) -> dict[str, np.ndarray]:
    """Per prediction: the class, its combined probability (``confidence``) and the members'
    ``agreement``: the fraction of members whose own argmax is that class."""
    p = _as_probs(probs)
    cls = combined.argmax(axis=1)
    return {"class": cls, "confidence": combined[np.arange(len(cls)), cls],
            "agreement": (p.argmax(axis=2) == cls[None]).mean(axis=0)}
