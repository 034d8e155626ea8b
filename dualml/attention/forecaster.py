"""The traffic forecaster (issue #17): a spatio-temporal transformer written once over the neutral
attention composites, so torch, paddle and both ONNX exports compute the same function.

Input x (batch, input_len, nodes, in_features) -> y (batch, output_len, nodes)::

    embed (in_features -> embed_dim) -> positions over time
    stage 1: temporal_depth_1 temporal blocks alternating with spatial_depth_1 spatial blocks -> h1
    stage 2: temporal_depth_2 temporal blocks alternating with spatial_depth_2 spatial blocks on h1 -> h2
    fusion_type(h2, h1) -> head: Linear(input_len * embed_dim -> output_len) per node

A temporal block is a post-norm transformer block (attention, then a feed-forward of 2 * embed_dim,
each with a residual and LayerNorm) over time for each node; a spatial block is the same over the
nodes for each time step. ``sinusoidal``/``learnable`` positions are added after the embedding;
``relative``/``rotary`` are applied inside every temporal attention. With unequal depths the blocks
alternate until the shorter kind runs out (1 temporal / 3 spatial: T S S S).
"""
from __future__ import annotations

from .. import layers as L
from ..errors import ConfigError, not_allowed
from ..layers import InputSpec
from ..module import Module, ModuleList
from .fusion import FUSIONS, fusion
from .positions import ENCODINGS, IN_ATTENTION, check_heads, positional_encoding
from .variants import attention


class Block(Module):
    """LayerNorm(h + Dropout(attn(h))) -> LayerNorm(h + Dropout(FFN(h))), h [batch', L, dim]."""

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0, **attn: object) -> None:
        super().__init__()
        self.attn = attention("full", dim, num_heads, **attn)
        self.norm1 = L.LayerNorm(dim)
        self.ff1 = L.Linear(dim, 2 * dim)
        self.act = L.ReLU()
        self.ff2 = L.Linear(2 * dim, dim)
        self.norm2 = L.LayerNorm(dim)
        self.dropout = L.Dropout(dropout)

    def forward(self, h):
        F = self.F
        h = self.norm1(F.add(h, self.dropout(self.attn(h))))
        return self.norm2(F.add(h, self.dropout(self.ff2(self.act(self.ff1(h))))))


class Stage(Module):
    """``temporal`` temporal blocks alternating with ``spatial`` spatial blocks on h (batch, nodes, time, dim)."""

    def __init__(self, temporal: int, spatial: int, dim: int, num_heads: int, nodes: int, steps: int,
                 dropout: float, position: str | None) -> None:
        super().__init__()
        self.nodes, self.steps, self.dim = nodes, steps, dim
        inside = {"position": position, "max_len": steps, "max_relative_position": max(1, steps - 1)} \
            if position in IN_ATTENTION else {}
        self.temporal = ModuleList(*[Block(dim, num_heads, dropout, **inside) for _ in range(temporal)])
        self.spatial = ModuleList(*[Block(dim, num_heads, dropout) for _ in range(spatial)])
        self.order = []
        for i in range(max(temporal, spatial)):
            self.order += ([("t", i)] if i < temporal else []) + ([("s", i)] if i < spatial else [])

    def forward(self, h):
        F = self.F
        n, t, d = self.nodes, self.steps, self.dim
        for kind, i in self.order:
            if kind == "t":   # attention over time, per node
                h = F.reshape(self.temporal[i](F.reshape(h, (-1, t, d))), (-1, n, t, d))
            else:             # attention over nodes, per time step
                s = F.reshape(F.permute(h, (0, 2, 1, 3)), (-1, n, d))
                h = F.permute(F.reshape(self.spatial[i](s), (-1, t, n, d)), (0, 2, 1, 3))
        return h


def _depth(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ConfigError(f"model.{key}={value!r} is not allowed; allowed: an integer >= 0")
    return value


def _positive(key: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"model.{key}={value!r} is not allowed; allowed: an integer >= 1")
    return value


class Forecaster(Module):
    """Two-stage spatio-temporal transformer forecaster (see the module docstring)."""

    def __init__(self, nodes: int = 207, input_len: int = 12, output_len: int = 12, in_features: int = 2,
                 embed_dim: int = 96, num_heads: int = 4, temporal_depth_1: int = 2, spatial_depth_1: int = 2,
                 temporal_depth_2: int = 2, spatial_depth_2: int = 2, fusion_type: str = "gated",
                 positional_encoding_type: str = "sinusoidal", dropout: float = 0.0) -> None:
        super().__init__()
        for key, v in (("nodes", nodes), ("input_len", input_len), ("output_len", output_len),
                       ("in_features", in_features), ("embed_dim", embed_dim)):
            _positive(key, v)
        depths = [_depth(k, v) for k, v in (("temporal_depth_1", temporal_depth_1), ("spatial_depth_1",
                  spatial_depth_1), ("temporal_depth_2", temporal_depth_2), ("spatial_depth_2", spatial_depth_2))]
        check_heads(embed_dim, num_heads, "model.num_heads")
        if fusion_type not in FUSIONS:
            raise ConfigError(not_allowed("model.fusion_type", fusion_type, FUSIONS))
        if positional_encoding_type not in ENCODINGS:
            raise ConfigError(not_allowed("model.positional_encoding_type", positional_encoding_type, ENCODINGS))
        if positional_encoding_type == "rotary" and (embed_dim // num_heads) % 2:
            raise ConfigError(f"model.positional_encoding_type=rotary with model.embed_dim={embed_dim} and "
                              f"model.num_heads={num_heads} is not allowed: the head size {embed_dim // num_heads} "
                              "must be even")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"model.dropout={dropout!r} is not allowed; allowed: a number in [0, 1)")
        self.nodes, self.input_len, self.output_len, self.in_features = nodes, input_len, output_len, in_features
        self.embed_dim = embed_dim
        self.embed = L.Linear(in_features, embed_dim)
        self.additive = positional_encoding_type not in IN_ATTENTION
        if self.additive:
            self.pos = positional_encoding(positional_encoding_type, embed_dim, max_len=input_len)
        inside = None if self.additive else positional_encoding_type
        common = (embed_dim, num_heads, nodes, input_len, float(dropout), inside)
        self.stage1 = Stage(depths[0], depths[1], *common)
        self.stage2 = Stage(depths[2], depths[3], *common)
        extra = {"fusion_heads": num_heads} if fusion_type == "cross_attn" else {}
        self.fusion = fusion(fusion_type, embed_dim, **extra)
        self.head = L.Linear(input_len * embed_dim, output_len)

    def forward(self, x):
        F = self.F
        n, t, d = self.nodes, self.input_len, self.embed_dim
        h = self.embed(F.permute(x, (0, 2, 1, 3)))            # (batch, nodes, time, dim)
        if self.additive:
            h = F.reshape(self.pos(F.reshape(h, (-1, t, d))), (-1, n, t, d))
        h1 = self.stage1(h)
        h2 = self.stage2(h1)
        fused = self.fusion(F.reshape(h2, (-1, t, d)), F.reshape(h1, (-1, t, d)))   # per node, over time
        out = self.head(F.reshape(fused, (-1, n, t * d)))      # (batch, nodes, output_len)
        return F.permute(out, (0, 2, 1))

    def input_spec(self, batch: int = 2) -> list[InputSpec]:
        return [InputSpec((batch, self.input_len, self.nodes, self.in_features))]
