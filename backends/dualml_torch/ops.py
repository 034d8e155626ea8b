"""The neutral op set (``dualml.ops.OPS``) for torch: mostly torch's own functions."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

add, sub, mul, div, matmul = torch.add, torch.sub, torch.mul, torch.div, torch.matmul
reshape, permute, transpose, flatten = torch.reshape, torch.permute, torch.transpose, torch.flatten
unsqueeze, squeeze, where, exp, sqrt = torch.unsqueeze, torch.squeeze, torch.where, torch.exp, torch.sqrt
relu, silu, sigmoid, tanh = F.relu, F.silu, torch.sigmoid, torch.tanh
zeros_like, ones_like = torch.zeros_like, torch.ones_like
scaled_dot_product_attention = F.scaled_dot_product_attention


def concat(xs: list[Any], dim: int = 0) -> Any:
    return torch.cat(list(xs), dim=dim)


def stack(xs: list[Any], dim: int = 0) -> Any:
    return torch.stack(list(xs), dim=dim)


def split(x: Any, size_or_sizes: int | list[int], dim: int = 0) -> list[Any]:
    return list(torch.split(x, size_or_sizes, dim=dim))


def mean(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:
    return x.mean() if dim is None else x.mean(dim=dim, keepdim=keepdim)


def sum(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:  # noqa: A001
    return x.sum() if dim is None else x.sum(dim=dim, keepdim=keepdim)


def max(x: Any, dim: int | None = None, keepdim: bool = False) -> Any:  # noqa: A001
    return x.max() if dim is None else torch.amax(x, dim=dim, keepdim=keepdim)


def softmax(x: Any, dim: int = -1) -> Any:
    return F.softmax(x, dim=dim)


def log_softmax(x: Any, dim: int = -1) -> Any:
    return F.log_softmax(x, dim=dim)


def masked_fill(x: Any, mask: Any, value: float) -> Any:
    return x.masked_fill(mask, value)


def gelu(x: Any, approximate: str = "none") -> Any:
    return F.gelu(x, approximate=approximate)


def arange(n: int, dtype: str = "int64") -> Any:
    return torch.arange(n, dtype=getattr(torch, dtype))


def cast(x: Any, dtype: str) -> Any:
    return x.to(getattr(torch, dtype))


def shape(x: Any) -> tuple[int, ...]:
    return tuple(x.shape)
