"""Positional encodings, selected by name: ``sinusoidal``, ``learnable``, ``relative``, ``rotary``.

Each is a neutral composite (a :class:`dualml.Module` over neutral ops), so both backends run the
same function from the same canonical weights with no adapter code. Tables that depend only on
positions (sinusoidal, rotary cos/sin) are :class:`Buffer` s computed once in float64 with numpy and
stored in float32: they are part of the canonical weights, so a float64 build computes exactly the
function the numpy reference computes from the same weights.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .. import layers as L
from ..errors import ConfigError, not_allowed
from ..module import Buffer, Module, Parameter

#: names accepted by :func:`positional_encoding`
ENCODINGS = ("sinusoidal", "learnable", "relative", "rotary")
#: encodings added to the input (``x + table[:L]``) vs. applied inside attention
ADDITIVE, IN_ATTENTION = ("sinusoidal", "learnable"), ("relative", "rotary")


def sinusoidal_positions(max_len: int, d_model: int) -> np.ndarray:
    """The fixed sin/cos position table of "Attention is all you need", [max_len, d_model]."""
    pos = np.arange(max_len, dtype=np.float64)[:, None]
    div = np.exp(np.arange(0, d_model, 2, dtype=np.float64) * (-math.log(10000.0) / d_model))
    table = np.zeros((max_len, d_model), dtype=np.float64)
    table[:, 0::2] = np.sin(pos * div)
    table[:, 1::2] = np.cos(pos * div)[:, : d_model // 2]
    return table.astype(np.float32)


class SinusoidalEncoding(Module):
    """x + the fixed sin/cos table of "Attention is all you need" (the zoo transformer's table)."""

    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.table = Buffer(sinusoidal_positions(max_len, d_model))

    def forward(self, x):
        return self.F.add(x, self.table[: self.F.shape(x)[1]])


class LearnableEncoding(Module):
    """x + a learned absolute table ``table`` [max_len, d_model] (canonical weight, normal(0.02))."""

    def __init__(self, d_model: int, max_len: int = 512) -> None:
        super().__init__()
        self.d_model, self.max_len = d_model, max_len
        self.table = Parameter((max_len, d_model), L.normal(0.02))

    def forward(self, x):
        return self.F.add(x, self.table[: self.F.shape(x)[1]])


class RelativePositionBias(Module):
    """A learned bias per head for each clipped relative distance ``j - i`` in
    [-max_relative_position, max_relative_position] (Shaw et al. / T5 style without buckets), added to
    the attention logits. Canonical weight ``bias.weight`` [2 * max_relative_position + 1, num_heads]:
    an Embedding, so the lookup is the framework's own exact gather."""

    def __init__(self, num_heads: int, max_relative_position: int = 12) -> None:
        super().__init__()
        if not isinstance(max_relative_position, int) or max_relative_position < 1:
            raise ConfigError(f"max_relative_position={max_relative_position!r} is not allowed; "
                              "allowed: a positive integer")
        self.num_heads, self.max_relative_position = num_heads, max_relative_position
        self.bias = L.Embedding(2 * max_relative_position + 1, num_heads)

    def forward(self, q_len, k_len):
        """The bias [num_heads, q_len, k_len] for ``q_len`` queries and ``k_len`` keys."""
        F, m = self.F, self.max_relative_position
        d = F.unsqueeze(F.arange(k_len), 0) - F.unsqueeze(F.arange(q_len), 1)   # j - i, [Lq, Lk]
        d = F.where(d > m, F.zeros_like(d) + m, d)
        d = F.where(d < -m, F.zeros_like(d) - m, d)
        return F.permute(self.bias(d + m), (2, 0, 1))


class RotaryEncoding(Module):
    """RoPE (Su et al.), rotate-half form: q and k of each head are rotated by position-dependent
    angles, so q_i . k_j depends on j - i. Applied inside attention (``rotate``), not to the input.
    ``cos``/``sin`` [max_len, head_dim / 2] are buffers: no trigonometric op is needed at run time."""

    def __init__(self, head_dim: int, max_len: int = 512, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ConfigError(f"rotary: head_dim={head_dim} is not allowed; allowed: an even number "
                              "(embed_dim / num_heads)")
        self.head_dim, self.max_len, self.base = head_dim, max_len, base
        angles = rotary_angles(max_len, head_dim, base)
        self.cos = Buffer(np.cos(angles).astype(np.float32))
        self.sin = Buffer(np.sin(angles).astype(np.float32))

    def rotate(self, x):
        """x [batch, heads, L, head_dim] rotated by positions 0..L-1."""
        F = self.F
        n = F.shape(x)[2]
        cos, sin = self.cos[:n], self.sin[:n]
        x1, x2 = F.split(x, self.head_dim // 2, dim=-1)
        return F.concat([F.sub(F.mul(x1, cos), F.mul(x2, sin)), F.add(F.mul(x2, cos), F.mul(x1, sin))], dim=-1)

    def forward(self, x):
        return self.rotate(x)


def rotary_angles(max_len: int, head_dim: int, base: float = 10000.0) -> np.ndarray:
    """angle[p, i] = p * base^(-2i / head_dim), float64, [max_len, head_dim / 2]."""
    inv_freq = base ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    return np.arange(max_len, dtype=np.float64)[:, None] * inv_freq[None, :]


def positional_encoding(type: str, d_model: int, num_heads: int = 1, max_len: int = 512,  # noqa: A002
                        max_relative_position: int = 12, **unused: Any) -> Module:
    """The encoding named ``type``. ``sinusoidal``/``learnable`` are added to a [batch, L, d_model]
    input; ``relative`` (a bias per head) and ``rotary`` (per head of size d_model / num_heads) are
    used inside attention: pass ``position=`` to :func:`dualml.attention.attention` instead."""
    if type not in ENCODINGS:
        raise ConfigError(not_allowed("position", type, ENCODINGS))
    if unused:
        raise ConfigError(f"position={type}: unknown parameter(s) {', '.join(sorted(unused))}; allowed: "
                          "d_model, num_heads, max_len, max_relative_position")
    if type == "sinusoidal":
        return SinusoidalEncoding(d_model, max_len)
    if type == "learnable":
        return LearnableEncoding(d_model, max_len)
    check_heads(d_model, num_heads)
    if type == "relative":
        return RelativePositionBias(num_heads, max_relative_position)
    return RotaryEncoding(d_model // num_heads, max_len)


def check_heads(embed_dim: int, num_heads: int, key: str = "num_heads") -> None:
    """One-line ConfigError unless ``num_heads`` is a positive integer dividing ``embed_dim``."""
    if not isinstance(num_heads, int) or isinstance(num_heads, bool) or num_heads < 1 or embed_dim % num_heads:
        divisors = [str(h) for h in range(1, embed_dim + 1) if embed_dim % h == 0]
        raise ConfigError(f"{key}={num_heads!r} is not allowed; it must divide embed_dim={embed_dim}; "
                          f"allowed: {', '.join(divisors)}")
