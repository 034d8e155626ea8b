"""Knowledge distillation with the teacher on any backend: its outputs cross over as numpy.

The student trains in the normal Trainer; only the loss changes (``Trainer(loss_fn=...)``). For each
micro-batch the teacher, built on its own backend (or an ONNX file), maps the numpy inputs to logits,
and the student's loss is Hinton's: alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) +
(1 - alpha) * CE(labels, student). The soft term is computed as the cross-entropy against the soft
targets minus their entropy (a constant from numpy), i.e. KL(teacher || student), so the logged loss
goes to 0 as the student matches. The loss uses only ``self.F`` ops: the same on both backends.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..module import Module

Teacher = Callable[[np.ndarray], np.ndarray]


def native_teacher(model: Module, weights: dict[str, np.ndarray], backend: str) -> Teacher:
    """The teacher as numpy -> numpy logits, built on ``backend`` in eval mode."""
    from ..build import build
    from ..onnx.export import eager

    net = build(model, backend, weights=weights)
    return lambda x: eager(net, backend, x)


def softmax_t(logits: np.ndarray, temperature: float) -> np.ndarray:
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z)
    return (p / p.sum(axis=-1, keepdims=True)).astype(np.float32)


def kd_loss(teacher: Teacher, temperature: float = 4.0, alpha: float = 0.7) -> Callable[..., Any]:
    """A ``Trainer`` loss_fn: soft targets from ``teacher`` at ``temperature`` mixed with the hard loss."""
    if not isinstance(temperature, (int, float)) or temperature <= 0:
        raise ConfigError(f"distill: temperature={temperature!r} is not allowed; allowed: a number > 0")
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"distill: alpha={alpha!r} is not allowed; allowed: 0 <= alpha <= 1")
    t, a = float(temperature), float(alpha)

    def loss(be: Any, logits: Any, labels: Any, x: np.ndarray) -> Any:
        p = softmax_t(teacher(x), t)
        entropy = float(-(p * np.log(np.maximum(p, 1e-30))).sum(-1).mean())  # makes the logged term KL
        log_q = be.ops.log_softmax(logits / t, dim=-1)
        kl = be.ops.mean(be.ops.sum(-(be.tensor(p) * log_q), dim=-1)) - entropy
        return kl * (a * t * t) + be.cross_entropy(logits, labels) * (1.0 - a)
    return loss
