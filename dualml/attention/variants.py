"""Multi-head attention written once: full (self or cross), ``local`` (a window, as an exact mask)
and ``linear`` (kernel feature map elu(x) + 1, linear in length), with optional ``relative`` or
``rotary`` positions.

Masks follow ``dualml.nn.MultiheadAttention`` (torch's convention, on both backends): a boolean
``attn_mask`` [Lq, Lk] or [batch * heads, Lq, Lk] is True where a query may *not* attend, a float one
is added to the logits; ``key_padding_mask`` [batch, Lk] is True at padded keys. Canonical weights are
``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layouts, the names ``MultiheadAttention`` uses.
"""
from __future__ import annotations

import math
from typing import Any

from .. import layers as L
from ..errors import ConfigError, not_allowed
from ..module import Module
from .positions import ENCODINGS, IN_ATTENTION, RelativePositionBias, RotaryEncoding, check_heads

#: names accepted by :func:`attention`
VARIANTS = ("full", "local", "linear")


class MultiHeadAttention(Module):
    """Scaled dot-product attention over ``num_heads`` heads: forward(query, key=None, value=None,
    attn_mask=None, key_padding_mask=None) -> [batch, Lq, embed_dim]. ``key``/``value`` default to the
    query (self-attention); give them from another stream for cross-attention (``kdim``/``vdim``
    their feature sizes). ``position='relative'|'rotary'`` adds that encoding inside.

    Without a float bias or dropout the neutral fused ``scaled_dot_product_attention`` op computes it;
    otherwise (and when the weights are being captured, see ``dualml.attention.attention_weights``)
    the logits are formed explicitly, because the op returns no weights and takes no bias+mask pair."""

    def __init__(self, embed_dim: int, num_heads: int, kdim: int | None = None, vdim: int | None = None,
                 dropout: float = 0.0, bias: bool = True, position: str | None = None, max_len: int = 512,
                 max_relative_position: int = 12) -> None:
        super().__init__()
        check_heads(embed_dim, num_heads)
        if position is not None and position not in IN_ATTENTION:
            extra = (f" ({position} is added to the input: use dualml.attention.positional_encoding)"
                     if position in ENCODINGS else "")
            raise ConfigError(not_allowed("attention position", position, IN_ATTENTION) + extra)
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.position, self.dropout_p = position, float(dropout)
        self.q_proj = L.Linear(embed_dim, embed_dim, bias)
        self.k_proj = L.Linear(kdim or embed_dim, embed_dim, bias)
        self.v_proj = L.Linear(vdim or embed_dim, embed_dim, bias)
        self.out_proj = L.Linear(embed_dim, embed_dim, bias)
        if position == "relative":
            self.relative = RelativePositionBias(num_heads, max_relative_position)
        elif position == "rotary":
            self.rotary = RotaryEncoding(self.head_dim, max_len)
        if self.dropout_p > 0:
            self.attn_dropout = L.Dropout(self.dropout_p)
        #: a list while ``attention_weights`` captures [batch, heads, Lq, Lk] probabilities, else None
        self.capture = None

    # -- pieces shared by the variants -------------------------------------------------------
    def split_heads(self, x):
        """[batch, L, embed] -> [batch, heads, L, head_dim]."""
        F = self.F
        b, n = F.shape(x)[0], F.shape(x)[1]
        return F.transpose(F.reshape(x, (b, n, self.num_heads, self.head_dim)), 1, 2)

    def merge_heads(self, x):
        F = self.F
        x = F.transpose(x, 1, 2)
        return F.reshape(x, (F.shape(x)[0], F.shape(x)[1], self.embed_dim))

    def project(self, query, key, value):
        """q, k, v per head, with rotary positions applied to q and k."""
        key = query if key is None else key
        value = key if value is None else value
        q, k = self.split_heads(self.q_proj(query)), self.split_heads(self.k_proj(key))
        v = self.split_heads(self.v_proj(value))
        if self.position == "rotary":
            q, k = self.rotary.rotate(q), self.rotary.rotate(k)
        return q, k, v

    def blocked(self, q, k, attn_mask, key_padding_mask):
        """(bool mask broadcastable to [batch, heads, Lq, Lk], True = may not attend, or None;
        float bias broadcastable likewise, or None)."""
        F = self.F
        block, bias = None, None
        if attn_mask is not None:
            m = attn_mask
            if len(F.shape(m)) == 3:  # torch's per-head [batch * heads, Lq, Lk]
                m = F.reshape(m, (-1, self.num_heads, F.shape(m)[1], F.shape(m)[2]))
            if str(m.dtype).endswith("bool"):
                block = m
            else:
                bias = m
        if key_padding_mask is not None:
            pad = F.unsqueeze(F.unsqueeze(key_padding_mask, 1), 1)
            block = pad if block is None else block | pad
        extra = self.extra_block(F.shape(q)[2], F.shape(k)[2])
        if extra is not None:
            block = extra if block is None else block | extra
        if self.position == "relative":
            rel = F.unsqueeze(self.relative(F.shape(q)[2], F.shape(k)[2]), 0)
            bias = rel if bias is None else F.add(bias, rel)
        return block, bias

    def extra_block(self, q_len, k_len):
        """A mask the variant itself imposes (``local``: outside the window); None for full attention."""
        return None

    def probabilities(self, q, k, block, bias):
        """softmax(q k^T / sqrt(d) + bias, masked) [batch, heads, Lq, Lk]."""
        F = self.F
        scores = F.matmul(q, F.transpose(k, 2, 3)) * (1.0 / math.sqrt(self.head_dim))
        if bias is not None:
            scores = F.add(scores, bias)
        if block is not None:
            scores = F.masked_fill(scores, block, float("-inf"))
        return F.softmax(scores, dim=-1)

    def attend(self, q, k, v, block, bias):
        F = self.F
        if bias is None and self.dropout_p == 0 and self.capture is None:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=None if block is None else ~block)
        p = self.probabilities(q, k, block, bias)
        if self.capture is not None:
            self.capture.append(p)
        if self.dropout_p > 0:
            p = self.attn_dropout(p)
        return F.matmul(p, v)

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None):
        q, k, v = self.project(query, key, value)
        block, bias = self.blocked(q, k, attn_mask, key_padding_mask)
        return self.out_proj(self.merge_heads(self.attend(q, k, v, block, bias)))


class LocalAttention(MultiHeadAttention):
    """Windowed attention: query i attends to keys j with |i - j| <= ``window`` (positions counted
    from 0 in both streams). A mask on the full logits, so it is exact (same numbers as full attention
    with that mask), not a blocked approximation; the cost stays quadratic."""

    def __init__(self, embed_dim: int, num_heads: int, window: int = 2, **kwargs: Any) -> None:
        if not isinstance(window, int) or isinstance(window, bool) or window < 0:
            raise ConfigError(f"window={window!r} is not allowed; allowed: an integer >= 0 (keys within "
                              "|i - j| <= window)")
        super().__init__(embed_dim, num_heads, **kwargs)
        self.window = window

    def extra_block(self, q_len, k_len):
        F = self.F
        d = F.unsqueeze(F.arange(k_len), 0) - F.unsqueeze(F.arange(q_len), 1)
        return (d > self.window) | (d < -self.window)


class LinearAttention(MultiHeadAttention):
    """Linear attention (Katharopoulos et al. 2020): softmax(q k^T) v is replaced by
    phi(q) (phi(k)^T v) / (phi(q) sum_j phi(k_j)) with phi(x) = elu(x) + 1, so time and memory grow
    linearly with length. Takes ``key_padding_mask`` (padded keys drop out of both sums); an
    ``attn_mask`` would need the quadratic matrix, so it is refused, and so is ``relative`` (a bias
    on logits that do not exist here). ``rotary`` is applied to q and k before phi."""

    def __init__(self, embed_dim: int, num_heads: int, **kwargs: Any) -> None:
        if kwargs.get("position") == "relative":
            raise ConfigError("linear attention: position=relative is not allowed (it biases softmax logits, "
                              "which linear attention never forms); allowed: rotary or none")
        if kwargs.get("dropout", 0.0):
            raise ConfigError("linear attention: dropout is not allowed (there is no attention matrix to drop); "
                              "allowed: 0")
        super().__init__(embed_dim, num_heads, **kwargs)

    def feature(self, x):
        """phi(x) = elu(x) + 1 = relu(x) + exp(-relu(-x)): no exp of a large positive x, so no inf
        whose zero gradient would turn into NaN."""
        F = self.F
        return F.add(F.relu(x), F.exp(-F.relu(-x)))

    def forward(self, query, key=None, value=None, attn_mask=None, key_padding_mask=None):
        F = self.F
        if attn_mask is not None:
            raise ConfigError("linear attention: attn_mask is not allowed (it needs the quadratic matrix); "
                              "allowed: key_padding_mask, or local/full attention")
        q, k, v = self.project(query, key, value)
        fq, fk = self.feature(q), self.feature(k)
        if key_padding_mask is not None:
            fk = F.masked_fill(fk, F.unsqueeze(F.unsqueeze(key_padding_mask, 1), 3), 0.0)
        if self.capture is not None:
            a = F.matmul(fq, F.transpose(fk, 2, 3))
            self.capture.append(F.div(a, F.sum(a, dim=-1, keepdim=True)))
        kv = F.matmul(F.transpose(fk, 2, 3), v)                          # [B, H, D, D]
        norm = F.matmul(fq, F.unsqueeze(F.sum(fk, dim=2), 3))            # [B, H, Lq, 1]
        return self.out_proj(self.merge_heads(F.div(F.matmul(fq, kv), norm)))


_CLASSES = {"full": MultiHeadAttention, "local": LocalAttention, "linear": LinearAttention}


def attention(variant: str, embed_dim: int, num_heads: int, **kwargs: Any) -> MultiHeadAttention:
    """The attention named ``variant`` (``full``, ``local``, ``linear``); ``kwargs`` are the class's
    (kdim, vdim, dropout, bias, position, max_len, max_relative_position; ``window`` for local)."""
    if variant not in _CLASSES:
        raise ConfigError(not_allowed("attention", variant, VARIANTS))
    import inspect

    cls = _CLASSES[variant]
    allowed = {p for c in cls.__mro__ if "__init__" in vars(c) and issubclass(c, MultiHeadAttention)
               for p in inspect.signature(c.__init__).parameters} - {"self", "kwargs", "embed_dim", "num_heads"}
    for key in kwargs:
        if key not in allowed:
            raise ConfigError(f"attention={variant}: {key} is not a parameter; allowed: {', '.join(sorted(allowed))}")
    return cls(embed_dim, num_heads, **kwargs)
