"""Built-in neutral layers as ``torch.nn`` classes, with their canonical weight rules.

Torch's own layout is close to canonical; the differences are the packed attention projection
(``in_proj_weight`` = q, k, v stacked) and a few calling conventions, fixed by thin subclasses
that stay ``torch.nn`` classes (so torch.ao and the exporters still recognise them).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from dualml import layers as L
from dualml.backend import Rule, implements, prefixed, same
from dualml.backend import float32_held as f32

T = "torch"


def _simple(layer: type[L.Layer], make) -> None:
    implements(layer, T)(make)


_simple(L.Linear, lambda s: nn.Linear(s.in_features, s.out_features, bias=s.bias))
for _cls, _native in ((L.Conv1d, nn.Conv1d), (L.Conv2d, nn.Conv2d)):
    _simple(_cls, lambda s, n=_native: n(s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding,
                                         s.dilation, s.groups, bias=s.bias))
_simple(L.ConvTranspose2d, lambda s: nn.ConvTranspose2d(
    s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, s.output_padding, s.groups,
    bias=s.bias, dilation=s.dilation))
# paddle keeps these attributes in float32 (BatchNorm its momentum as 1 - m): torch gets the same values
def _bn_momentum(m: float) -> float:
    return 1.0 - f32(1.0 - m)


_simple(L.BatchNorm1d, lambda s: nn.BatchNorm1d(s.num_features, f32(s.eps), _bn_momentum(s.momentum), s.affine))
_simple(L.BatchNorm2d, lambda s: nn.BatchNorm2d(s.num_features, f32(s.eps), _bn_momentum(s.momentum), s.affine))
_simple(L.LayerNorm, lambda s: nn.LayerNorm(s.normalized_shape, f32(s.eps), s.elementwise_affine))
_simple(L.GroupNorm, lambda s: nn.GroupNorm(s.num_groups, s.num_channels, f32(s.eps), s.affine))
_simple(L.Embedding, lambda s: nn.Embedding(s.num_embeddings, s.embedding_dim, s.padding_idx))
_simple(L.Dropout, lambda s: nn.Dropout(s.p))
_simple(L.LSTM, lambda s: nn.LSTM(s.input_size, s.hidden_size, s.num_layers, batch_first=True,
                                  dropout=s.dropout, bidirectional=s.bidirectional))
_simple(L.GRU, lambda s: nn.GRU(s.input_size, s.hidden_size, s.num_layers, batch_first=True,
                                dropout=s.dropout, bidirectional=s.bidirectional))
_simple(L.MaxPool1d, lambda s: nn.MaxPool1d(s.kernel_size, s.stride, s.padding, ceil_mode=s.ceil_mode))
_simple(L.MaxPool2d, lambda s: nn.MaxPool2d(s.kernel_size, s.stride, s.padding, ceil_mode=s.ceil_mode))
_simple(L.AvgPool1d, lambda s: nn.AvgPool1d(s.kernel_size, s.stride, s.padding, s.ceil_mode, True))
_simple(L.AvgPool2d, lambda s: nn.AvgPool2d(s.kernel_size, s.stride, s.padding, s.ceil_mode, True))
_simple(L.AdaptiveAvgPool1d, lambda s: nn.AdaptiveAvgPool1d(s.output_size))
_simple(L.AdaptiveAvgPool2d, lambda s: nn.AdaptiveAvgPool2d(s.output_size))
_simple(L.AdaptiveMaxPool2d, lambda s: nn.AdaptiveMaxPool2d(s.output_size))
for _cls, _native in ((L.ReLU, nn.ReLU), (L.SiLU, nn.SiLU), (L.Sigmoid, nn.Sigmoid), (L.Tanh, nn.Tanh),
                      (L.Identity, nn.Identity)):
    _simple(_cls, lambda s, n=_native: n())
_simple(L.GELU, lambda s: nn.GELU(approximate=s.approximate))
_simple(L.Softmax, lambda s: nn.Softmax(dim=s.dim))
_simple(L.LeakyReLU, lambda s: nn.LeakyReLU(f32(s.negative_slope)))
_simple(L.PReLU, lambda s: nn.PReLU(s.num_parameters, s.init))
_simple(L.Flatten, lambda s: nn.Flatten(s.start_dim, s.end_dim))


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, lambda_: float) -> torch.Tensor:
        ctx.lambda_ = lambda_
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * -ctx.lambda_, None


class GradReverse(nn.Module):
    """Identity forward, ``-lambda_ * grad`` backward (dualml.layers.GradReverse); ``lambda_`` is read per call."""

    def __init__(self, lambda_: float) -> None:
        super().__init__()
        self.lambda_ = lambda_

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return x  # nothing to reverse: exports and no-grad evaluation see a plain identity
        return _Reverse.apply(x, float(self.lambda_))


_simple(L.GradReverse, lambda s: GradReverse(s.lambda_))


# --------------------------------------------------------------------------- attention
def mha_rules(s: Any) -> list[Rule]:
    rules = [Rule(("q_proj.weight", "k_proj.weight", "v_proj.weight"), "in_proj_weight", "stack0"),
             *same("out_proj.weight")]
    if getattr(s, "bias", True):
        rules += [Rule(("q_proj.bias", "k_proj.bias", "v_proj.bias"), "in_proj_bias", "stack0"),
                  *same("out_proj.bias")]
    return rules


class MultiheadAttention(nn.MultiheadAttention):
    """torch's MultiheadAttention, batch-first, returning the output only (no weights)."""

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
        key = query if key is None else key
        value = key if value is None else value
        return super().forward(query, key, value, key_padding_mask=key_padding_mask, need_weights=False,
                               attn_mask=attn_mask)[0]


@implements(L.MultiheadAttention, T, rules=mha_rules)
def _mha(s: L.MultiheadAttention) -> nn.Module:
    return MultiheadAttention(s.embed_dim, s.num_heads, dropout=s.dropout, bias=s.bias, batch_first=True)


def encoder_rules(s: Any) -> list[Rule]:
    return [*prefixed("self_attn", mha_rules(s)),
            *same(*(f"{m}.{p}" for m in ("linear1", "linear2", "norm1", "norm2") for p in ("weight", "bias")))]


@implements(L.TransformerEncoderLayer, T, rules=encoder_rules)
def _encoder(s: L.TransformerEncoderLayer) -> nn.Module:
    return nn.TransformerEncoderLayer(s.d_model, s.nhead, s.dim_feedforward, s.dropout, s.activation,
                                      f32(s.layer_norm_eps), batch_first=True, norm_first=s.norm_first)
