"""Attention and positions written once (issue #17): positional encodings, attention variants,
fusion blocks, each a neutral composite (so every backend runs the same function from the same
canonical weights with no adapter code), selected by name with one-line errors for unknown names.

- ``positional_encoding(type, d_model, ...)``: sinusoidal | learnable | relative | rotary
- ``attention(variant, embed_dim, num_heads, ...)``: full | local | linear (self or cross)
- ``fusion(name, dim, other_dim=None, ...)``: gated | gated_residual | cross_attn | adaptive | concat
- ``attention_weights(model_or_layer, x, backend, png=...)``: the probabilities, and a heatmap
"""
from __future__ import annotations

from .fusion import (
    FUSIONS,
    AdaptiveFusion,
    ConcatFusion,
    CrossAttentionFusion,
    GatedFusion,
    GatedResidualFusion,
    fusion,
)
from .maps import AttentionMap, attention_layers, attention_weights, write_heatmap
from .positions import (
    ENCODINGS,
    LearnableEncoding,
    RelativePositionBias,
    RotaryEncoding,
    SinusoidalEncoding,
    positional_encoding,
)
from .variants import VARIANTS, LinearAttention, LocalAttention, MultiHeadAttention, attention

__all__ = ["ENCODINGS", "FUSIONS", "VARIANTS", "AdaptiveFusion", "AttentionMap", "ConcatFusion",
           "CrossAttentionFusion", "GatedFusion", "GatedResidualFusion", "LearnableEncoding", "LinearAttention",
           "LocalAttention", "MultiHeadAttention", "RelativePositionBias", "RotaryEncoding", "SinusoidalEncoding",
           "attention", "attention_layers", "attention_weights", "fusion", "positional_encoding", "write_heatmap"]
