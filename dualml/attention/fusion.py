"""Fusion blocks: combine a main stream ``a`` [*, dim] with another stream ``b`` [*, other_dim],
selected by name (``gated``, ``gated_residual``, ``cross_attn``, ``adaptive``, ``concat``).

Written once as neutral composites: both backends and ONNX export come from the same code. Where
``other_dim`` differs from ``dim`` the blocks that mix elementwise first project ``b`` with a Linear
(``b_proj``); the output always has ``dim`` features.
"""
from __future__ import annotations

import inspect
from typing import Any

from .. import layers as L
from ..errors import ConfigError, not_allowed
from ..module import Module, Parameter
from .variants import MultiHeadAttention

#: names accepted by :func:`fusion`
FUSIONS = ("gated", "gated_residual", "cross_attn", "adaptive", "concat")
GATES = ("sigmoid", "tanh")


class _Fusion(Module):
    def __init__(self, dim: int, other_dim: int | None = None) -> None:
        super().__init__()
        self.dim, self.other_dim = dim, other_dim or dim
        self.has_b_proj = self.other_dim != dim

    def aligned(self, b):
        return self.b_proj(b) if self.has_b_proj else b

    def with_b_proj(self) -> None:
        if self.has_b_proj:
            self.b_proj = L.Linear(self.other_dim, self.dim)


class ConcatFusion(_Fusion):
    """Linear([a; b]) -> dim."""

    def __init__(self, dim: int, other_dim: int | None = None) -> None:
        super().__init__(dim, other_dim)
        self.proj = L.Linear(self.dim + self.other_dim, dim)

    def forward(self, a, b):
        return self.proj(self.F.concat([a, b], dim=-1))


class GatedFusion(_Fusion):
    """g = sigmoid(W [a; b]); g * a + (1 - g) * b: a learned per-feature choice between streams."""

    def __init__(self, dim: int, other_dim: int | None = None) -> None:
        super().__init__(dim, other_dim)
        self.with_b_proj()
        self.gate = L.Linear(2 * dim, dim)

    def forward(self, a, b):
        F = self.F
        b = self.aligned(b)
        g = F.sigmoid(self.gate(F.concat([a, b], dim=-1)))
        return F.add(F.mul(g, a), F.mul(F.sub(F.ones_like(g), g), b))


class GatedResidualFusion(_Fusion):
    """LayerNorm(a + gate([a; b]) * W [a; b]), the gate sigmoid or tanh: the other stream can only
    add what the gate lets through, and the residual keeps ``a`` when it lets nothing (as in the
    temporal fusion transformer's gated residual network)."""

    def __init__(self, dim: int, other_dim: int | None = None, gate: str = "sigmoid") -> None:
        super().__init__(dim, other_dim)
        if gate not in GATES:
            raise ConfigError(not_allowed("fusion gate", gate, GATES))
        self.gate_fn = gate
        self.value = L.Linear(self.dim + self.other_dim, dim)
        self.gate = L.Linear(self.dim + self.other_dim, dim)
        self.norm = L.LayerNorm(dim)

    def forward(self, a, b):
        F = self.F
        ab = F.concat([a, b], dim=-1)
        g = self.gate(ab)
        g = F.sigmoid(g) if self.gate_fn == "sigmoid" else F.tanh(g)
        return self.norm(F.add(a, F.mul(g, self.value(ab))))


class CrossAttentionFusion(_Fusion):
    """LayerNorm(a + Dropout(attention(query=a, key=value=b))): each position of ``a`` reads the
    whole other stream (a and b may have different lengths: a [batch, La, dim], b [batch, Lb, other_dim])."""

    def __init__(self, dim: int, other_dim: int | None = None, fusion_heads: int = 4,
                 fusion_dropout: float = 0.0) -> None:
        super().__init__(dim, other_dim)
        self.attn = MultiHeadAttention(dim, fusion_heads, kdim=self.other_dim, vdim=self.other_dim)
        self.dropout = L.Dropout(fusion_dropout)
        self.norm = L.LayerNorm(dim)

    def forward(self, a, b, key_padding_mask=None):
        return self.norm(self.F.add(a, self.dropout(self.attn(a, b, b, key_padding_mask=key_padding_mask))))


class AdaptiveFusion(_Fusion):
    """softmax(w)[0] * a + softmax(w)[1] * b with learned ``weights`` [2] (initially equal): the
    mix is learned, the same for every feature."""

    def __init__(self, dim: int, other_dim: int | None = None) -> None:
        super().__init__(dim, other_dim)
        self.with_b_proj()
        self.weights = Parameter((2,), 0.0)

    def forward(self, a, b):
        F = self.F
        w = F.softmax(self.weights, dim=0)
        return F.add(F.mul(a, w[0]), F.mul(self.aligned(b), w[1]))


_CLASSES = {"gated": GatedFusion, "gated_residual": GatedResidualFusion, "cross_attn": CrossAttentionFusion,
            "adaptive": AdaptiveFusion, "concat": ConcatFusion}


def fusion(name: str, dim: int, other_dim: int | None = None, **kwargs: Any) -> Module:
    """The fusion block ``name``: forward(a, b) -> [*, dim]. Extra keys by block: ``gate``
    (gated_residual), ``fusion_heads`` and ``fusion_dropout`` (cross_attn)."""
    if name not in _CLASSES:
        raise ConfigError(not_allowed("fusion", name, FUSIONS))
    cls = _CLASSES[name]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "dim", "other_dim")]
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"fusion={name}: {key} is not a parameter; allowed: "
                              f"{', '.join(allowed) or 'no extra keys'}")
    if name == "cross_attn":
        from .positions import check_heads

        check_heads(dim, kwargs.get("fusion_heads", 4), "fusion_heads")
    return cls(dim, other_dim, **kwargs)
