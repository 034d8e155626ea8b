"""Masked regression metrics in plain numpy, the traffic-forecasting convention (DCRNN, Graph WaveNet).

Why masked: METR-LA and PEMS-BAY store a missing reading as speed 0. Scoring a forecast against those
zeros would reward predicting a sensor outage, so every metric ignores entries where the target is 0
(``mask = y != 0``) and averages over the valid ones only. Why numpy and not the adapter: the metrics
are computed on evaluation outputs, once per epoch, and must mean the same whatever backend produced
the forecast (the baselines, which have no backend, are scored by the same code).
"""
from __future__ import annotations

import numpy as np

#: the forecast steps reported (15, 30 and 60 minutes ahead at 5-minute steps), as in DCRNN's tables
HORIZONS: tuple[int, ...] = (3, 6, 12)
#: ``trainer.loss`` values for regression targets, and the one for class labels
REGRESSION_LOSSES: tuple[str, ...] = ("mse", "mae", "huber")
LOSSES: tuple[str, ...] = ("cross_entropy", *REGRESSION_LOSSES)


def masked_errors(pred: np.ndarray, y: np.ndarray, mask_zeros: bool = True) -> dict[str, float]:
    """Masked MAE, RMSE and MAPE (in percent) of ``pred`` against ``y`` over the entries where ``y != 0``
    (every entry when ``mask_zeros`` is false; MAPE always skips zero targets, it is undefined there).
    No valid entry gives NaN, not 0: an empty score must not look perfect."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    valid = y != 0
    mask = valid if mask_zeros else np.ones_like(valid)
    d = (pred - y)[mask]
    nan = float("nan")
    mae = float(np.abs(d).mean()) if d.size else nan
    rmse = float(np.sqrt((d * d).mean())) if d.size else nan
    mape = float((np.abs(pred - y)[valid] / np.abs(y[valid])).mean() * 100.0) if valid.any() else nan
    return {"mae": mae, "rmse": rmse, "mape": mape}


def horizon_metrics(pred: np.ndarray, y: np.ndarray, horizons: tuple[int, ...] = HORIZONS,
                    mask_zeros: bool = True) -> dict[str, dict[str, float]]:
    """Masked errors over all steps (``"all"``) and at each horizon ``h`` (1-based step ``h`` of the output,
    axis 1 of ``pred``/``y`` shaped (batch, output_len, nodes)); horizons beyond ``output_len`` are left out."""
    out = {"all": masked_errors(pred, y, mask_zeros)}
    for h in horizons:
        if h <= y.shape[1]:
            out[str(h)] = masked_errors(pred[:, h - 1], y[:, h - 1], mask_zeros)
    return out


def regression_loss(kind: str, pred: np.ndarray, y: np.ndarray, mask_zeros: bool, delta: float = 1.0) -> float:
    """The training loss ``kind`` (mse, mae, huber) in numpy, as the adapter composes it
    (``dualml.train.losses``): mean over valid entries, 0 when there is none (DCRNN's convention)."""
    d = np.asarray(pred, np.float64) - np.asarray(y, np.float64)
    a = np.abs(d)
    e = {"mse": d * d, "mae": a, "huber": np.where(a <= delta, 0.5 * d * d, delta * (a - 0.5 * delta))}[kind]
    w = loss_weights(y, mask_zeros, np.float64)
    return float((e * w).sum())


def loss_weights(y: np.ndarray, mask_zeros: bool, dtype: np.dtype | type) -> np.ndarray:
    """Per-entry weights whose weighted sum is the masked mean: ``mask / mask.sum()`` (all zero when no
    entry is valid, so such a batch contributes a 0 loss and no gradient instead of NaN)."""
    mask = (y != 0) if mask_zeros else np.ones(y.shape, bool)
    n = int(mask.sum())
    return (mask / max(n, 1)).astype(dtype)
