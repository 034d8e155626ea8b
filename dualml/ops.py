"""The neutral op set usable in ``forward`` as ``self.F.<op>``: one meaning on every backend.

Each adapter implements every name in :data:`OPS` with the semantics written here (torch-style
``dim`` arguments and permutations), hiding the frameworks' differences, e.g. paddle's
``transpose`` takes a full permutation and its ``max`` returns no indices. A test checks that every
adapter provides all of them, and the parity suite runs each one on both backends.
"""
from __future__ import annotations

OPS: dict[str, str] = {
    "add": "add(a, b): elementwise a + b with broadcasting",
    "sub": "sub(a, b): elementwise a - b",
    "mul": "mul(a, b): elementwise a * b",
    "div": "div(a, b): elementwise a / b",
    "matmul": "matmul(a, b): batched matrix product",
    "reshape": "reshape(x, shape): -1 infers one dimension",
    "permute": "permute(x, dims): reorder all dimensions",
    "transpose": "transpose(x, dim0, dim1): swap two dimensions",
    "concat": "concat(xs, dim=0)",
    "stack": "stack(xs, dim=0)",
    "split": "split(x, size_or_sizes, dim=0): an int is the chunk size (torch semantics), a list the sizes",
    "flatten": "flatten(x, start_dim=0, end_dim=-1)",
    "unsqueeze": "unsqueeze(x, dim)",
    "squeeze": "squeeze(x, dim)",
    "mean": "mean(x, dim=None, keepdim=False)",
    "sum": "sum(x, dim=None, keepdim=False)",
    "max": "max(x, dim=None, keepdim=False): values only",
    "softmax": "softmax(x, dim=-1)",
    "log_softmax": "log_softmax(x, dim=-1)",
    "where": "where(cond, a, b)",
    "masked_fill": "masked_fill(x, mask, value): x where mask is False, value where True",
    "scaled_dot_product_attention":
        "scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False): q/k/v [B, H, L, D]; "
        "a bool mask is True where attention is allowed (torch convention), a float mask is added",
    "relu": "relu(x)", "gelu": "gelu(x, approximate='none'|'tanh')", "silu": "silu(x)",
    "sigmoid": "sigmoid(x)", "tanh": "tanh(x)", "exp": "exp(x)", "sqrt": "sqrt(x)",
    "arange": "arange(n, dtype='int64'): 0..n-1 on the default device",
    "zeros_like": "zeros_like(x)", "ones_like": "ones_like(x)",
    "cast": "cast(x, dtype): dtype given as a string such as 'float32'",
    "shape": "shape(x): the shape as a tuple of ints",
}
