"""The neutral op set (``dualml.ops.OPS``) for paddle, with torch-style ``dim`` semantics."""
from __future__ import annotations

import math
from typing import Any

import paddle
import paddle.nn.functional as F

add, sub, mul, divide, matmul = paddle.add, paddle.subtract, paddle.multiply, paddle.divide, paddle.matmul
div = divide
unsqueeze, exp, sqrt = paddle.unsqueeze, paddle.exp, paddle.sqrt
relu, silu, sigmoid, tanh = F.relu, F.silu, F.sigmoid, paddle.tanh
zeros_like, ones_like = paddle.zeros_like, paddle.ones_like


def reshape(x: Any, shape: list[int] | tuple[int, ...]) -> Any:
    return paddle.reshape(x, list(shape))


def permute(x: Any, dims: list[int] | tuple[int, ...]) -> Any:
    return paddle.transpose(x, list(dims))


def transpose(x: Any, dim0: int, dim1: int) -> Any:
    perm = list(range(x.ndim))
    perm[dim0], perm[dim1] = perm[dim1], perm[dim0]
    return paddle.transpose(x, perm)


def flatten(x: Any, start_dim: int = 0, end_dim: int = -1) -> Any:
    return paddle.flatten(x, start_axis=start_dim, stop_axis=end_dim)


def squeeze(x: Any, dim: int) -> Any:
    return paddle.squeeze(x, axis=dim)


def concat(xs: list[Any], dim: int = 0) -> Any:
    return paddle.concat(list(xs), axis=dim)


def stack(xs: list[Any], dim: int = 0) -> Any:
    return paddle.stack(list(xs), axis=dim)


def split(x: Any, size_or_sizes: int | list[int], dim: int = 0) -> list[Any]:
    """torch semantics: an int is the chunk size (paddle's int means the number of chunks)."""
    if isinstance(size_or_sizes, int):
        n = x.shape[dim]
        sizes = [size_or_sizes] * (n // size_or_sizes) + ([n % size_or_sizes] if n % size_or_sizes else [])
    else:
        sizes = list(size_or_sizes)
    return list(paddle.split(x, sizes, axis=dim))


def mean(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:
    return paddle.mean(x, axis=dim, keepdim=keepdim)


def sum(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:  # noqa: A001
    return paddle.sum(x, axis=dim, keepdim=keepdim)


def max(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:  # noqa: A001
    return paddle.max(x, axis=dim, keepdim=keepdim)


def softmax(x: Any, dim: int = -1) -> Any:
    return F.softmax(x, axis=dim)


def log_softmax(x: Any, dim: int = -1) -> Any:
    return F.log_softmax(x, axis=dim)


def where(cond: Any, a: Any, b: Any) -> Any:
    return paddle.where(cond, a, b)


def masked_fill(x: Any, mask: Any, value: float) -> Any:
    """``where`` broadcasts the mask itself: a ``broadcast_to(mask, x.shape)`` breaks ``jit.save``
    when x has a dynamic (batch) dimension, which dy2static hands over as -1."""
    return paddle.where(mask, paddle.full_like(x, value), x)


def gelu(x: Any, approximate: str = "none") -> Any:
    return F.gelu(x, approximate=approximate == "tanh")


def scaled_dot_product_attention(q: Any, k: Any, v: Any, attn_mask: Any = None, is_causal: bool = False) -> Any:
    """torch's SDPA on [B, H, L, D] (paddle 2.6's own SDPA wants [B, L, H, D] and flash kernels)."""
    scores = paddle.matmul(q, k, transpose_y=True) * (1.0 / math.sqrt(q.shape[-1]))
    if is_causal:
        lq, lk = scores.shape[-2], scores.shape[-1]
        keep = paddle.tril(paddle.ones([lq, lk], dtype="bool"))
        scores = masked_fill(scores, paddle.logical_not(keep), float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == paddle.bool:
            scores = masked_fill(scores, paddle.logical_not(attn_mask), float("-inf"))
        else:
            scores = scores + attn_mask
    return paddle.matmul(F.softmax(scores, axis=-1), v)


def arange(n: int, dtype: str = "int64") -> Any:
    return paddle.arange(n, dtype=dtype)


def cast(x: Any, dtype: str) -> Any:
    return paddle.cast(x, dtype)


def shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)
