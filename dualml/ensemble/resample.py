"""Bagging and boosting bookkeeping in numpy: which train rows each member sees, out-of-bag scoring,
and SAMME's weight update.

Why resampling for boosting (boosting by resampling): the members are neural nets trained by the one
neutral Trainer, whose loss takes no per-sample weights; drawing the train split with probabilities
equal to the sample weights gives each sample the expected influence SAMME asks for without changing
the training loop. The draw is seeded by (seed, round), so a rerun sees the same rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def bootstrap_rows(n: int, seed: int, member: int) -> np.ndarray:
    """``n`` train rows drawn with replacement, a pure function of (seed, member)."""
    return np.random.default_rng([seed, member, 0xB0]).integers(0, n, n)


def weighted_rows(weights: np.ndarray, seed: int, round_: int) -> np.ndarray:
    """``len(weights)`` train rows drawn with replacement with probability ``weights`` (boosting)."""
    w = np.asarray(weights, np.float64)
    return np.random.default_rng([seed, round_, 0xAB]).choice(len(w), size=len(w), replace=True, p=w / w.sum())


def out_of_bag(rows: list[np.ndarray], n: int) -> np.ndarray:
    """[members, n] True where member m did NOT see train row i (it may score it)."""
    mask = np.ones((len(rows), n), dtype=bool)
    for m, r in enumerate(rows):
        mask[m, np.unique(r)] = False
    return mask


def oob_scores(probs: np.ndarray, rows: list[np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Out-of-bag accuracy of the soft vote: each train row is predicted by the members that did not
    see it (rows every member saw are left out and counted). ``probs``: [members, n, classes] on the
    train split."""
    mask = out_of_bag(rows, len(y))
    covered = mask.any(axis=0)
    w = mask[:, covered].astype(np.float64)
    p = (w[:, :, None] * probs[:, covered]).sum(axis=0) / w.sum(axis=0)[:, None]
    pred = p.argmax(axis=1)
    return {"oob_accuracy": float((pred == y[covered]).mean()), "oob_rows": int(covered.sum()), "rows": len(y),
            "mean_members_per_row": float(w.sum(axis=0).mean())}


@dataclass
class SammeStep:
    """One SAMME round: the member's weighted train error, its vote weight ``alpha`` and the new sample
    weights (normalised)."""

    error: float
    alpha: float
    weights: np.ndarray
    stop: bool


def samme_step(weights: np.ndarray, wrong: np.ndarray, k: int) -> SammeStep:
    """SAMME (Zhu et al. 2009): ``err = sum(w * wrong) / sum(w)``, ``alpha = log((1 - err) / err) +
    log(k - 1)``, ``w <- w * exp(alpha * wrong)`` normalised. A member no better than chance
    (``err >= 1 - 1/k``) gets ``alpha = 0`` and stops the boosting; a perfect one (``err = 0``) is capped
    at ``err = 1e-10`` and stops it too (nothing is left to reweight)."""
    w = np.asarray(weights, np.float64)
    wrong = np.asarray(wrong, bool)
    err = float((w * wrong).sum() / w.sum())
    if err >= 1.0 - 1.0 / k:
        return SammeStep(err, 0.0, w / w.sum(), True)
    e = max(err, 1e-10)
    alpha = math.log((1.0 - e) / e) + math.log(k - 1.0)
    new = w * np.exp(alpha * wrong)
    return SammeStep(err, alpha, new / new.sum(), err <= 0.0)

