"""Built-in neutral layers as ``paddle.nn`` classes, with their canonical weight rules.

Paddle's layout differences live here as data: Linear weights are [in, out] (transposed),
BatchNorm buffers are ``_mean``/``_variance`` and its momentum is the weight of the *old*
statistic, PReLU's weight is ``_weight``; attention masks use the opposite boolean meaning and
there is no key-padding mask, fixed by thin subclasses that remain paddle classes.
"""
from __future__ import annotations

import math
from typing import Any

import paddle
from paddle import nn

from dualml import layers as L
from dualml.backend import Rule, implements, prefixed, rename, same
from dualml.backend import float32_held as f32
from dualml.errors import LayerInputError

from .lane import PADDLE3

P = "paddle"


def _bias(flag: bool) -> Any:
    return None if flag else False


def linear_rules(s: Any = None) -> list[Rule]:
    return [Rule(("weight",), "weight", "T"), *same("bias")]


implements(L.Linear, P, rules=linear_rules)(
    lambda s: nn.Linear(s.in_features, s.out_features, bias_attr=_bias(s.bias)))
def conv_padding(s: Any) -> Any:
    """Explicit zero padding from the neutral rule (torch's, ``pad_amounts``): paddle's own 'SAME'
    ignores dilation, so strings are never passed. Symmetric pads as one int per dim (what a
    hand-written paddle conv holds), otherwise [before, after] per dim."""
    pads = s.pad_amounts()
    if all(a == b for a, b in pads):
        return tuple(a for a, _ in pads)
    return [p for pair in pads for p in pair]


for _cls, _native in ((L.Conv1d, nn.Conv1D), (L.Conv2d, nn.Conv2D)):
    implements(_cls, P)(lambda s, n=_native: n(s.in_channels, s.out_channels, s.kernel_size, s.stride,
                                               conv_padding(s), s.dilation, s.groups, bias_attr=_bias(s.bias)))
implements(L.ConvTranspose2d, P)(lambda s: nn.Conv2DTranspose(
    s.in_channels, s.out_channels, s.kernel_size, s.stride, s.padding, s.output_padding,
    dilation=s.dilation, groups=s.groups, bias_attr=_bias(s.bias)))


def bn_rules(s: Any) -> list[Rule]:
    return [*same("weight", "bias"), *rename({"running_mean": "_mean", "running_var": "_variance"})]


def _bn_train_forward(base: type, layer: Any, x: Any) -> Any:
    """Paddle updates ``_variance`` with the biased batch variance, torch (canonical) with the
    unbiased one. The batch variance is recovered from paddle's own update, new = m*old + (1-m)*var_b,
    and (1-m)*var_b/(n-1) = (new - m*old)/(n-1) is added, a per-channel step instead of a second
    reduction over the batch. ``set_value``, not ``add_``: the op saved ``_variance`` for backward."""
    n = math.prod(x.shape) // x.shape[1]
    if n <= 1:
        return base.forward(layer, x)
    old = layer._variance.clone()
    out = base.forward(layer, x)
    with paddle.no_grad():
        new = layer._variance
        layer._variance.set_value(new + (new - old * layer._momentum) * (1.0 / (n - 1)))
    return out


# Subclasses call their parent explicitly: paddle's dy2static (jit.save, paddle2onnx) rewrites
# forward and loses the __class__ cell that a zero-argument super call needs; the correction
# lives outside forward so dy2static (eval export) never converts it.
class BatchNorm1D(nn.BatchNorm1D):
    def forward(self, x: Any) -> Any:
        if self.training:
            return _bn_train_forward(nn.BatchNorm1D, self, x)
        return nn.BatchNorm1D.forward(self, x)


class BatchNorm2D(nn.BatchNorm2D):
    def forward(self, x: Any) -> Any:
        if self.training:
            return _bn_train_forward(nn.BatchNorm2D, self, x)
        return nn.BatchNorm2D.forward(self, x)


for _cls, _native in ((L.BatchNorm1d, BatchNorm1D), (L.BatchNorm2d, BatchNorm2D)):
    implements(_cls, P, rules=bn_rules)(lambda s, n=_native: n(
        s.num_features, momentum=f32(1.0 - s.momentum), epsilon=s.eps,  # the kernel's float32 value, for the correction
        weight_attr=None if s.affine else False, bias_attr=None if s.affine else False))
def flat_rules(s: Any) -> list[Rule]:
    """paddle's LayerNorm stores weight/bias flattened to [prod(normalized_shape)]."""
    return [Rule((k,), k, "flat", spec.shape) for k, spec in s.params().items()]


implements(L.LayerNorm, P, rules=flat_rules)(lambda s: nn.LayerNorm(
    list(s.normalized_shape), s.eps, weight_attr=_bias(s.elementwise_affine), bias_attr=_bias(s.elementwise_affine)))
implements(L.GroupNorm, P)(lambda s: nn.GroupNorm(
    s.num_groups, s.num_channels, s.eps, weight_attr=_bias(s.affine), bias_attr=_bias(s.affine)))
class Embedding(nn.Embedding):
    """paddle's Embedding with torch's ``padding_idx`` meaning: the padding row is read (paddle's
    lookup outputs zeros there whatever the row holds) and, as in both frameworks, gets no gradient:
    the lookup skips the row in backward and the value put back is detached."""

    def forward(self, x: Any) -> Any:
        out = nn.Embedding.forward(self, x)
        if self._padding_idx is None:
            return out
        row = self.weight[self._padding_idx].detach()
        return paddle.where((x == self._padding_idx).unsqueeze(-1), row.expand_as(out), out)


implements(L.Embedding, P)(lambda s: Embedding(s.num_embeddings, s.embedding_dim, s.padding_idx))
implements(L.Dropout, P)(lambda s: nn.Dropout(s.p))
def _rnn_forward(base: type, layer: Any, inputs: Any, initial_states: Any, sequence_length: Any) -> Any:
    """Paddle's CPU rnn kernel keeps no state for backward when ``is_test`` (eval mode), so a
    gradient through an eval-mode LSTM/GRU fails ("Tensor holds no memory"); torch allows it.
    Without dropout the train kernel computes the same function, so run it when grads are on."""
    if layer.training or layer.dropout or not paddle.in_dynamic_mode() or not paddle.is_grad_enabled():
        return base.forward(layer, inputs, initial_states, sequence_length)
    layer.training = True
    try:
        return base.forward(layer, inputs, initial_states, sequence_length)
    finally:
        layer.training = False


class LSTM(nn.LSTM):
    def forward(self, inputs: Any, initial_states: Any = None, sequence_length: Any = None) -> Any:
        return _rnn_forward(nn.LSTM, self, inputs, initial_states, sequence_length)


class GRU(nn.GRU):
    def forward(self, inputs: Any, initial_states: Any = None, sequence_length: Any = None) -> Any:
        return _rnn_forward(nn.GRU, self, inputs, initial_states, sequence_length)


for _cls, _native in ((L.LSTM, LSTM), (L.GRU, GRU)):
    implements(_cls, P)(lambda s, n=_native: n(s.input_size, s.hidden_size, s.num_layers,
                                               "bidirect" if s.bidirectional else "forward", dropout=s.dropout))
implements(L.MaxPool1d, P)(lambda s: nn.MaxPool1D(s.kernel_size, s.stride, s.padding, ceil_mode=s.ceil_mode))
implements(L.MaxPool2d, P)(lambda s: nn.MaxPool2D(s.kernel_size, s.stride, s.padding, ceil_mode=s.ceil_mode))
implements(L.AvgPool1d, P)(lambda s: nn.AvgPool1D(s.kernel_size, s.stride, s.padding, exclusive=False,
                                                  ceil_mode=s.ceil_mode))
implements(L.AvgPool2d, P)(lambda s: nn.AvgPool2D(s.kernel_size, s.stride, s.padding, ceil_mode=s.ceil_mode,
                                                  exclusive=False))
implements(L.AdaptiveAvgPool1d, P)(lambda s: nn.AdaptiveAvgPool1D(s.output_size))
implements(L.AdaptiveAvgPool2d, P)(lambda s: nn.AdaptiveAvgPool2D(s.output_size))

#: measured in float64 against torch (dualml parity parity.dtype=float64): paddle 2.6's average-pool
#: backward scales by 1/window held in float32, so a float64 input gradient is off by up to 2^-24
#: relative per window (3e-8 measured; exact when the window size is a power of two, as in the zoo)
FLOAT32_CONSTANTS = {k: "average-pool backward multiplies by 1/window held in float32 (relative error <= 2^-24)"
                     for k in (L.AvgPool1d, L.AvgPool2d, L.AdaptiveAvgPool1d, L.AdaptiveAvgPool2d)}
implements(L.AdaptiveMaxPool2d, P)(lambda s: nn.AdaptiveMaxPool2D(s.output_size))
for _cls, _native in ((L.ReLU, nn.ReLU), (L.SiLU, nn.Silu), (L.Sigmoid, nn.Sigmoid), (L.Tanh, nn.Tanh),
                      (L.Identity, nn.Identity)):
    implements(_cls, P)(lambda s, n=_native: n())
implements(L.GELU, P)(lambda s: nn.GELU(approximate=s.approximate == "tanh"))
implements(L.Softmax, P)(lambda s: nn.Softmax(axis=s.dim))
# Paddle 2.6's leaky_relu holds its slope as a float32 attribute (in float64, -1 -> -0.009999999776); torch is
# given that float32 value (dualml_torch: float32_held), the one meaning of the slope on both. Paddle 3 keeps
# the slope in double (measured on 3.3.1: -1 -> -0.01; float64 parity off by 8.9e-9), so on lane 3 paddle is
# given the float32 value too: float64 runs compute one function, float32 runs are unchanged.
implements(L.LeakyReLU, P)(lambda s: nn.LeakyReLU(f32(s.negative_slope) if PADDLE3 else s.negative_slope))
implements(L.PReLU, P, rules=lambda s: rename({"weight": "_weight"}))(lambda s: nn.PReLU(s.num_parameters, s.init))
implements(L.Flatten, P)(lambda s: nn.Flatten(s.start_dim, s.end_dim))


class _Reverse(paddle.autograd.PyLayer):
    @staticmethod
    def forward(ctx: Any, x: Any, lambda_: float) -> Any:
        ctx.lambda_ = lambda_
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: Any) -> Any:
        # a tensor in the gradient's dtype, not a Python float: paddle's scalar multiply holds the factor
        # as a float32 attribute, which would round lambda in a float64 run
        return grad * paddle.full([], -ctx.lambda_, grad.dtype)


class GradReverse(nn.Layer):
    """Identity forward, ``-lambda_ * grad`` backward (dualml.layers.GradReverse); ``lambda_`` is read per call."""

    def __init__(self, lambda_: float) -> None:
        nn.Layer.__init__(self)
        self.lambda_ = lambda_

    def forward(self, x: Any) -> Any:
        if not paddle.in_dynamic_mode() or not paddle.is_grad_enabled() or x.stop_gradient:
            return x  # static graph (jit.save, paddle2onnx) and no-grad evaluation: a plain identity
        return _Reverse.apply(x, float(self.lambda_))


implements(L.GradReverse, P)(lambda s: GradReverse(s.lambda_))


# --------------------------------------------------------------------------- attention
def additive_mask(attn_mask: Any = None, key_padding_mask: Any = None, query: Any = None,
                  num_heads: int = 1) -> Any:
    """torch-convention masks (bool True = blocked, float = added) -> paddle's additive float mask,
    broadcastable to [batch, heads, L, S]. A 3-d ``attn_mask`` is torch's per-head form
    [batch*heads, L, S] (row b*heads + h), reshaped to [batch, heads, L, S]."""
    mask = None
    if attn_mask is not None:
        mask = (paddle.where(attn_mask, paddle.full(attn_mask.shape, float("-inf")),
                             paddle.zeros(attn_mask.shape)) if attn_mask.dtype == paddle.bool else attn_mask)
        if mask.ndim == 3:
            batch = query.shape[0]
            if mask.shape[0] != batch * num_heads:
                raise LayerInputError(f"MultiheadAttention: attn_mask of shape {list(mask.shape)} is not allowed "
                                      f"for batch={batch}, num_heads={num_heads}; allowed: [L, S] or "
                                      f"[{batch * num_heads}, L, S] (batch*num_heads, as in torch)")
            mask = mask.reshape([batch, num_heads, *mask.shape[1:]])
    if key_padding_mask is not None:
        kpm = key_padding_mask
        kpm = (paddle.where(kpm, paddle.full(kpm.shape, float("-inf")), paddle.zeros(kpm.shape))
               if kpm.dtype == paddle.bool else kpm)
        kpm = kpm.unsqueeze([1, 2])  # [B, 1, 1, S]
        mask = kpm if mask is None else mask + kpm
    return mask


class MultiHeadAttention(nn.MultiHeadAttention):
    """paddle's MultiHeadAttention with torch's mask convention and a key-padding mask."""

    def forward(self, query: Any, key: Any = None, value: Any = None, attn_mask: Any = None,
                key_padding_mask: Any = None) -> Any:
        mask = additive_mask(attn_mask, key_padding_mask, query, self.num_heads)
        return nn.MultiHeadAttention.forward(self, query, key, value, attn_mask=mask)


def mha_rules(s: Any) -> list[Rule]:
    return [r for proj in ("q_proj", "k_proj", "v_proj", "out_proj") for r in prefixed(proj, linear_rules())]


@implements(L.MultiheadAttention, P, rules=mha_rules)
def _mha(s: L.MultiheadAttention) -> nn.Layer:
    return MultiHeadAttention(s.embed_dim, s.num_heads, dropout=s.dropout, bias_attr=_bias(s.bias))


class TransformerEncoderLayer(nn.TransformerEncoderLayer):
    """paddle's encoder layer with torch's mask convention and a key-padding mask."""

    def forward(self, src: Any, src_mask: Any = None, src_key_padding_mask: Any = None) -> Any:
        mask = additive_mask(src_mask, src_key_padding_mask, src, self.self_attn.num_heads)
        return nn.TransformerEncoderLayer.forward(self, src, mask)


def encoder_rules(s: Any) -> list[Rule]:
    return [*prefixed("self_attn", mha_rules(s)), *prefixed("linear1", linear_rules()),
            *prefixed("linear2", linear_rules()),
            *same(*(f"{m}.{p}" for m in ("norm1", "norm2") for p in ("weight", "bias")))]


@implements(L.TransformerEncoderLayer, P, rules=encoder_rules)
def _encoder(s: L.TransformerEncoderLayer) -> nn.Layer:
    layer = TransformerEncoderLayer(s.d_model, s.nhead, s.dim_feedforward, s.dropout, s.activation,
                                    normalize_before=s.norm_first)
    layer.norm1._epsilon = layer.norm2._epsilon = s.layer_norm_eps
    return layer
