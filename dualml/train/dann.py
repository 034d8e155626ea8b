"""Domain adaptation by backpropagation (DANN, Ganin & Lempitsky 2015) on either backend, through the
existing Trainer: a model, a loss, a per-step hook and a data set, no new training loop.

- :class:`DANN` wraps a feature extractor with a label head and, behind a :class:`~dualml.layers.GradReverse`
  layer, a domain head. In train mode ``forward`` returns ``[class logits | 2 domain logits]``; in eval mode
  (evaluation, export, serving) the class logits only, so the Trainer's accuracy, checkpoints and the ONNX
  file are those of an ordinary classifier and the domain head never ships.
- :func:`dann_loss` is cross-entropy on the labelled source rows plus the domain cross-entropy on every row,
  composed once over the adapter's neutral ops (``log_softmax``, ``split``, ``mul``, ``sum``) with numpy
  weights, so torch and paddle compute one formula. Source rows carry their class, target rows the label
  ``-1`` (:func:`mixed_dataset`): the batches mix both, as in the paper.
- :class:`LambdaSchedule` (an ``after_step`` hook) sets the reversal strength to the paper's
  ``2 / (1 + exp(-10 p)) - 1`` of training progress ``p``; the native GRL leaves read it at every forward.
- :func:`shifted_digits` makes the domains: scikit-learn's digits split in two disjoint halves, the target
  half rotated by a seeded angle in [30, 45] degrees. Target labels only score the test split.

Why a Python API rather than config keys: DANN needs a two-headed model, its own loss and two data sets;
as ``trainer.*``/``data.*`` keys that is three new config paths for one method, while the Trainer already
takes ``loss_fn``, ``after_step`` and a ``Dataset`` (``dualml.fit`` passes them on), so the method is these
four pieces and nothing in the loop changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import layers as L
from ..errors import ConfigError
from ..module import Module, Sequential
from .data import Dataset, Split, from_arrays

SOURCE, TARGET = 0, 1


class DANN(Module):
    """``features`` -> ``head`` (classes); ``features`` -> ``grl`` -> ``domain`` (source / target).

    Train mode returns the class and domain logits side by side (``num_classes + 2`` columns, what
    :func:`dann_loss` splits); eval mode returns the class logits only. ``feature_dim`` is what ``features``
    outputs per sample. ``lambda_`` is the reversal strength of the first step (0: where
    :class:`LambdaSchedule` starts; it sets the following steps' values after each update)."""

    def __init__(self, features: Module, feature_dim: int, num_classes: int = 10, domain_hidden: int = 32,
                 lambda_: float = 0.0) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = features
        self.head = L.Linear(feature_dim, num_classes)
        self.grl = L.GradReverse(lambda_)
        self.domain = Sequential(L.Linear(feature_dim, domain_hidden), L.ReLU(), L.Linear(domain_hidden, 2))

    def forward(self, x):
        f = self.features(x)
        y = self.head(f)
        if not self.training:  # the native module's own flag (torch and paddle both keep it)
            return y
        return self.F.concat([y, self.domain(self.grl(f))], dim=1)

    def input_spec(self, batch: int = 4) -> list[L.InputSpec]:
        return self.features.input_spec(batch) if hasattr(self.features, "input_spec") else [
            L.InputSpec((batch, 1, 8, 8), low=0.0, high=1.0)]


def dann_loss(be: Any, logits: Any, labels: Any, x: np.ndarray, num_classes: int, adapt: bool = True) -> Any:
    """Mean cross-entropy over the labelled (source) rows + (``adapt``) the mean domain cross-entropy over all
    rows, source = 0, target = 1. Rows with label ``-1`` are target rows. The one-hot selections are numpy
    weights (``-1/n`` at the true column), so the loss is ``sum(log_softmax * weights)`` on both backends.
    ``adapt=False`` is source-only training on the very same batches (the baseline DANN is judged against)."""
    F = be.ops
    y = np.asarray(be.numpy(labels)).astype(np.int64)
    dtype = str(x.dtype)
    cls, dom = F.split(logits, [num_classes, 2], dim=1)
    src = np.flatnonzero(y >= 0)
    w = np.zeros((len(y), num_classes), dtype)
    w[src, y[src]] = -1.0 / max(len(src), 1)
    loss = F.sum(F.mul(F.log_softmax(cls, dim=1), be.tensor(w)))
    if adapt:
        d = np.zeros((len(y), 2), dtype)
        d[np.arange(len(y)), np.where(y >= 0, SOURCE, TARGET)] = -1.0 / len(y)
        loss = F.add(loss, F.sum(F.mul(F.log_softmax(dom, dim=1), be.tensor(d))))
    return loss


def grl_lambda(progress: float, gamma: float = 10.0) -> float:
    """The paper's reversal strength ``2 / (1 + exp(-gamma p)) - 1``: 0 at the start (the domain head learns
    before it pushes the features), approaching 1 at the end."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def set_grl_lambda(net: Any, value: float) -> int:
    """Set ``lambda_`` on every native GradReverse leaf of ``net`` (read at each forward); returns how many."""
    from ..build import native_nodes

    n = 0
    for spec, nat in native_nodes(net).values():
        if isinstance(spec, L.GradReverse):
            nat.lambda_ = float(value)
            n += 1
    return n


@dataclass
class LambdaSchedule:
    """``after_step`` hook: after each update it sets the GRL's lambda for the next step to
    ``scale * grl_lambda(step / total_steps)``; step 0 runs at the model's own ``lambda_`` (DANN's default 0 =
    ``grl_lambda(0)``). A resumed run's first step also runs at that value (the hook has not run yet)."""

    gamma: float = 10.0
    scale: float = 1.0

    def __call__(self, trainer: Any) -> None:
        set_grl_lambda(trainer.net, self.scale * grl_lambda(trainer.step / max(trainer.total_steps, 1), self.gamma))


# ----------------------------------------------------------------------------- data
@dataclass
class Domains:
    """A labelled source domain and a shifted target domain (its labels for evaluation only)."""

    source: Dataset
    target: Dataset


def rotate(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotate each (..., H, W) image by its angle in degrees (bilinear, zero outside, same size)."""
    from scipy.ndimage import rotate as _rotate

    out = np.empty_like(images)
    for i, (img, a) in enumerate(zip(images, angles, strict=True)):
        out[i] = _rotate(img, float(a), axes=(-1, -2), reshape=False, order=1, mode="constant", cval=0.0)
    return np.clip(out, 0.0, 1.0)


def shifted_digits(seed: int = 0, angle: tuple[float, float] = (30.0, 45.0)) -> Domains:
    """scikit-learn's 1,797 digits (1x8x8 in [0, 1]) split, stratified by ``seed``, into two disjoint halves:
    the source as is, the target rotated by angles drawn uniformly from ``angle`` (degrees, seeded). Each
    domain is split train/val/test like ``data=digits``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    lo, hi = (float(a) for a in angle)
    if not lo <= hi:
        raise ConfigError(f"angle={angle!r} is not allowed; allowed: (low, high) with low <= high, in degrees")
    d = load_digits()
    x = (d.images.astype(np.float32) / np.float32(16.0))[:, None]
    y = d.target.astype(np.int64)
    a, b = train_test_split(np.arange(len(y)), test_size=0.5, stratify=y, random_state=seed)
    a, b = np.sort(a), np.sort(b)
    angles = np.random.default_rng([seed, 45]).uniform(lo, hi, size=len(b))
    xt = rotate(x[b], angles)
    return Domains(from_arrays(x[a], y[a], name="digits", seed=seed),
                   from_arrays(xt, y[b], name=f"digits_rotated{lo:g}-{hi:g}", seed=seed))


def mixed_dataset(domains: Domains) -> Dataset:
    """The Trainer's data for DANN: train = source train rows (labels) + target train rows (label -1, their
    labels dropped); val = the source's val split (model selection never sees a target label); test = the
    target's test split (scored with its labels: the number DANN is judged by)."""
    s, t = domains.source, domains.target
    if s.input_shape != t.input_shape or s.num_classes != t.num_classes:
        raise ConfigError(f"source {s.name} {list(s.input_shape)}/{s.num_classes} classes and target {t.name} "
                          f"{list(t.input_shape)}/{t.num_classes} classes must match")
    train = Split(np.concatenate([s.train.x, t.train.x]),
                  np.concatenate([s.train.y, np.full(len(t.train.y), -1, np.int64)]))
    return Dataset(f"{s.name}->{t.name}", train, s.val, t.test, s.num_classes)


def dann_fit(model: DANN, domains: Domains, backend: str = "torch", adapt: bool = True, gamma: float = 10.0,
             lambda_max: float = 1.0, **fit_keys: Any) -> Any:
    """Train ``model`` with DANN (``adapt=True``) or source-only on the same batches (``adapt=False``) through
    ``dualml.fit``; ``fit_keys`` are fit's (seed, run_dir, progress, trainer keys). ``lambda_max`` scales the
    paper's schedule (its 1.0 is the default). Returns the Trainer: ``.metrics["test_acc"]`` is the accuracy on
    the target domain's test split."""
    from .api import fit

    if not isinstance(model, DANN):
        raise ConfigError(f"model {type(model).__name__} is not allowed; allowed: a dualml.train.dann.DANN")
    if not (math.isfinite(lambda_max) and lambda_max >= 0):
        raise ConfigError(f"lambda_max={lambda_max!r} is not allowed; allowed: a finite number >= 0")
    schedule = LambdaSchedule(gamma, lambda_max) if adapt else None
    c = model.num_classes
    loss = lambda be, logits, labels, x: dann_loss(be, logits, labels, x, c, adapt)  # noqa: E731
    return fit(model, mixed_dataset(domains), backend, loss_fn=loss, after_step=schedule, **fit_keys)
