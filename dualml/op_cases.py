"""One tiny model per neutral op, so the parity suite runs every op of ``dualml.ops.OPS`` on
every backend. Each case applies ``fn(F, *inputs)`` inside a built model's ``forward``."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .layers import InputSpec
from .module import Module


class OpModel(Module):
    """A weightless model whose forward is one op expression over its inputs."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(self.F, *xs)


def _x(*shape: int, low: float = -1.0, high: float = 1.0) -> InputSpec:
    return InputSpec(tuple(shape), low=low, high=high)


OP_CASES: dict[str, tuple[Callable[..., Any], list[InputSpec]]] = {
    "add": (lambda F, a, b: F.add(a, b), [_x(2, 3, 4), _x(3, 4)]),
    "sub": (lambda F, a, b: F.sub(a, b), [_x(2, 3), _x(2, 3)]),
    "mul": (lambda F, a, b: F.mul(a, b), [_x(2, 3, 4), _x(1, 4)]),
    "div": (lambda F, a, b: F.div(a, b), [_x(2, 3), _x(2, 3, low=0.5, high=2.0)]),
    "matmul": (lambda F, a, b: F.matmul(a, b), [_x(2, 3, 4), _x(2, 4, 5)]),
    "reshape": (lambda F, x: F.reshape(x, (2, -1, 2)), [_x(2, 3, 4)]),
    "permute": (lambda F, x: F.permute(x, (2, 0, 1)), [_x(2, 3, 4)]),
    "transpose": (lambda F, x: F.transpose(x, 1, 2), [_x(2, 3, 4)]),
    "concat": (lambda F, a, b: F.concat([a, b], dim=1), [_x(2, 3), _x(2, 5)]),
    "stack": (lambda F, a, b: F.stack([a, b], dim=1), [_x(2, 3), _x(2, 3)]),
    "split-size": (lambda F, x: F.split(x, 2, dim=1), [_x(2, 5)]),
    "split-sizes": (lambda F, x: F.split(x, [1, 3, 2], dim=-1), [_x(2, 6)]),
    "flatten": (lambda F, x: F.flatten(x, 1, 2), [_x(2, 3, 4, 5)]),
    "unsqueeze-squeeze": (lambda F, x: F.squeeze(F.unsqueeze(x, 1), 2), [_x(2, 1, 4)]),
    "mean": (lambda F, x: (F.mean(x), F.mean(x, dim=1), F.mean(x, dim=-1, keepdim=True)), [_x(2, 3, 4)]),
    "sum": (lambda F, x: (F.sum(x), F.sum(x, dim=0), F.sum(x, dim=2, keepdim=True)), [_x(2, 3, 4)]),
    "max": (lambda F, x: (F.max(x), F.max(x, dim=1), F.max(x, dim=0, keepdim=True)), [_x(2, 3, 4)]),
    "softmax": (lambda F, x: F.softmax(x, dim=1), [_x(2, 5, 3, low=-3, high=3)]),
    "log_softmax": (lambda F, x: F.log_softmax(x, dim=-1), [_x(2, 5, low=-3, high=3)]),
    "where": (lambda F, x, y: F.where(x > 0, x, y), [_x(3, 4), _x(3, 4)]),
    "masked_fill": (lambda F, x, m: F.masked_fill(x, m, 0.0), [_x(3, 4), InputSpec((3, 4), "bool", high=0.5)]),
    "masked_fill-broadcast": (lambda F, x, m: F.masked_fill(x, m, -1.5),
                              [_x(2, 3, 4), InputSpec((1, 4), "bool", high=0.5)]),
    "scaled_dot_product_attention": (lambda F, q, k, v: F.scaled_dot_product_attention(q, k, v),
                                     [_x(2, 2, 5, 4), _x(2, 2, 6, 4), _x(2, 2, 6, 4)]),
    "scaled_dot_product_attention-causal": (
        lambda F, q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True),
        [_x(2, 2, 5, 4), _x(2, 2, 5, 4), _x(2, 2, 5, 4)]),
    "scaled_dot_product_attention-mask": (
        lambda F, q, k, v, b: F.scaled_dot_product_attention(q, k, v, attn_mask=b),
        [_x(1, 2, 4, 4), _x(1, 2, 6, 4), _x(1, 2, 6, 4), _x(4, 6)]),
    "activations": (lambda F, x: (F.relu(x), F.gelu(x), F.gelu(x, approximate="tanh"), F.silu(x),
                                  F.sigmoid(x), F.tanh(x), F.exp(x)), [_x(3, 4, low=-3, high=3)]),
    "sqrt": (lambda F, x: F.sqrt(x), [_x(3, 4, low=0.1, high=4.0)]),
    "arange-cast-shape": (lambda F, x: F.add(x, F.cast(F.arange(F.shape(x)[-1]), "float32")), [_x(2, 5)]),
    "zeros-ones-like": (lambda F, x: F.add(F.mul(F.zeros_like(x), x), F.ones_like(x)), [_x(2, 3)]),
}


def op_models() -> list[tuple[str, OpModel, list[InputSpec]]]:
    return [(f"op:{name}", OpModel(fn), inputs) for name, (fn, inputs) in OP_CASES.items()]
