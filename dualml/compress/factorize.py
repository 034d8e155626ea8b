"""Neutral rewrites on canonical weights: low-rank (SVD) factorization of Linear layers and Conv+BN
folding. Both return a new neutral model and its canonical weights, so building the result on torch
or on paddle gives the identical model (no framework code involved at all).
"""
from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import layers as L
from ..errors import ConfigError, did_you_mean
from ..module import Module, Sequential, join, named_leaves


@dataclass
class Rewrite:
    """A rewritten model: ``changed`` says what happened per layer, ``skipped`` why a layer was left."""

    model: Module
    weights: dict[str, np.ndarray]
    changed: dict[str, dict[str, Any]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)


def _set_node(model: Module, path: str, node: Any) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = model
    for part in filter(None, parent_path.split(".")):
        parent = parent.children()[part]
    setattr(parent, name, node)


def _pick(model: Module, kind: type, layers: Iterable[str] | None, what: str) -> list[str]:
    found = [p for p, leaf in named_leaves(model) if isinstance(leaf, kind)]
    if layers is None:
        return found
    layers = list(layers)
    for name in layers:
        if name not in found:
            raise ConfigError(f"{what}: layer '{name}' is not allowed{did_you_mean(name, found)}; allowed "
                              f"({kind.__name__} layers of this model): {', '.join(found) or 'none'}")
    return layers


# ----------------------------------------------------------------------------- low rank
def choose_rank(s: np.ndarray, rank: int | None = None, energy: float | None = None) -> int:
    """``rank`` as given (capped at the full rank), or the smallest rank keeping ``energy`` of the
    squared singular values (the Frobenius norm share), e.g. 0.9."""
    if (rank is None) == (energy is None):
        raise ConfigError("lowrank: give exactly one of rank (an integer >= 1) or energy (0 < energy <= 1)")
    if rank is not None:
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ConfigError(f"lowrank: rank={rank!r} is not allowed; allowed: an integer >= 1")
        return min(rank, len(s))
    if not isinstance(energy, (int, float)) or isinstance(energy, bool) or not 0.0 < energy <= 1.0:
        raise ConfigError(f"lowrank: energy={energy!r} is not allowed; allowed: 0 < energy <= 1")
    share = np.cumsum(s.astype(np.float64) ** 2) / max(float((s.astype(np.float64) ** 2).sum()), 1e-30)
    return int(min(len(s), np.searchsorted(share, energy - 1e-12) + 1))


def lowrank(model: Module, weights: dict[str, np.ndarray], rank: int | None = None, energy: float | None = None,
            layers: Iterable[str] | None = None) -> Rewrite:
    """Replace each chosen Linear [out, in] by Linear(in, r, bias=False) -> Linear(r, out) from the
    truncated SVD W ~ (U_r sqrt(S_r)) (sqrt(S_r) V_r^T). A layer is skipped (and says so) when r
    would not save parameters, r*(in+out) >= in*out."""
    new = copy.deepcopy(model)
    out = dict(weights)
    res = Rewrite(new, out)
    for path in _pick(model, L.Linear, layers, "lowrank"):
        leaf = dict(named_leaves(model))[path]
        w = weights[join(path, "weight")].astype(np.float64)
        u, s, vt = np.linalg.svd(w, full_matrices=False)
        r = choose_rank(s, rank, energy)
        n_in, n_out = leaf.in_features, leaf.out_features
        if r * (n_in + n_out) >= n_in * n_out:
            res.skipped[path] = f"rank {r} saves nothing ({r}*({n_in}+{n_out}) >= {n_in}*{n_out})"
            continue
        root = np.sqrt(s[:r])
        first, second = L.Linear(n_in, r, bias=False), L.Linear(r, n_out, bias=leaf.bias)
        _set_node(new, path, Sequential(first, second))
        del out[join(path, "weight")]
        out[join(path, "0.weight")] = (root[:, None] * vt[:r]).astype(np.float32)
        out[join(path, "1.weight")] = (u[:, :r] * root[None, :]).astype(np.float32)
        if leaf.bias:
            out[join(path, "1.bias")] = out.pop(join(path, "bias"))
        kept = float((s[:r].astype(np.float64) ** 2).sum() / max((s.astype(np.float64) ** 2).sum(), 1e-30))
        res.changed[path] = {"rank": r, "full_rank": int(len(s)), "energy_kept": kept,
                             "params_before": n_in * n_out, "params_after": r * (n_in + n_out)}
    return res


# ----------------------------------------------------------------------------- Conv + BN folding
def fold_bn(model: Module, weights: dict[str, np.ndarray], input_shape: tuple[int, ...] | None = None,
            backend: str | None = None) -> Rewrite:
    """Fold every BatchNorm2d whose only input is a Conv2d output used by nothing else into that conv
    (inference form: W' = W * g/sqrt(v+eps), b' = (b - m) * g/sqrt(v+eps) + beta) and replace the
    BatchNorm by Identity. The pairs are found by tracing one forward, not by names, on ``backend``
    (the configured one; None: :func:`dualml.backend.default_backend`): the result is the same on any."""
    from .measure import trace

    tr = trace(model, input_shape, backend=backend, weights=weights)
    new = copy.deepcopy(model)
    out = dict(weights)
    res = Rewrite(new, out)
    uses: dict[str, int] = {}
    for c in tr.calls:
        uses[c.path] = uses.get(c.path, 0) + 1
    for c in tr.calls:
        if not isinstance(c.spec, L.BatchNorm2d) or c.sources[0] is None:
            continue
        src = tr.calls[c.sources[0]]
        if not isinstance(src.spec, L.Conv2d):
            continue
        if len(src.consumers) != 1 or uses[src.path] != 1 or uses[c.path] != 1 or src.is_model_output:
            res.skipped[c.path] = f"its conv '{src.path}' output is used elsewhere too"
            continue
        conv, bn = src.spec, c.spec
        g = out.pop(join(c.path, "weight")) if bn.affine else np.ones(bn.num_features, np.float32)
        beta = out.pop(join(c.path, "bias")) if bn.affine else np.zeros(bn.num_features, np.float32)
        mean, var = out.pop(join(c.path, "running_mean")), out.pop(join(c.path, "running_var"))
        scale = g.astype(np.float64) / np.sqrt(var.astype(np.float64) + bn.eps)
        w = out[join(src.path, "weight")].astype(np.float64)
        b = out.get(join(src.path, "bias"), np.zeros(conv.out_channels)).astype(np.float64)
        out[join(src.path, "weight")] = (w * scale[:, None, None, None]).astype(np.float32)
        out[join(src.path, "bias")] = ((b - mean) * scale + beta).astype(np.float32)
        folded = copy.copy(conv)
        folded.bias = True
        _set_node(new, src.path, folded)
        _set_node(new, c.path, L.Identity())
        res.changed[c.path] = {"into": src.path}
    return res
