"""The memory estimate's "activations" term, from what one training step really keeps alive.

Why not "every layer's output" (the textbook reading, and this module's first version): a framework
frees an output that no backward reads as soon as the next layer has consumed it (a BatchNorm output
feeding a ReLU: ReLU's backward reads its own output, the convolution after it reads that same
tensor), and views (Flatten) share their input's memory. Counting every leaf output put resnet18 at
224 px and batch 64 at 1.86 GiB of activations, more than the whole measured rise of the process.

The rule, per leaf kind (both frameworks' autograd keep the same tensors for these ops):

- **backward reads the input**: Linear, Conv1d/2d, ConvTranspose2d, BatchNorm, LayerNorm, GroupNorm,
  GELU, SiLU, LeakyReLU, PReLU, max pooling (plus the argmax indices, int64 per output element as
  torch keeps them), Embedding (its int64 indices);
- **backward reads the output**: ReLU, Sigmoid, Tanh, Softmax;
- **nothing**: average pooling (only shapes); **views**: Flatten, Identity, Dropout(p=0);
  Dropout(p>0) keeps a one-byte mask and its output is a new tensor;
- **composite layers keep their insides**: MultiheadAttention the q/k/v projections, the attention
  probabilities and the pre-projection output; TransformerEncoderLayer that plus both norms'
  inputs, the feed-forward hidden state (twice with GELU, which reads its input) and dropout masks;
  LSTM/GRU the gates, cell and hidden state of every step, layer and direction;
- a tensor kept by several layers is counted once (tensor identity from the trace), the input
  batch once (the loop holds it all step), a layer of unknown kind as keeping its input.

The peak: the kept set is complete at the end of the forward, plus the largest output that nothing
keeps (it exists until its consumer has run). Backward then walks the layers in reverse, freeing
what only that layer needed while it holds the gradient of the layer's output and of its inputs. The
term is the larger of the two peaks, plus the logits. Results of ``self.F`` ops are seen only where
a leaf reads them (a residual sum read by a ReLU is transient and not counted).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import layers as L

F32, I64 = 4, 8

_VIEWS = (L.Flatten, L.Identity, L.GradReverse)
_READS_OUTPUT = (L.ReLU, L.Sigmoid, L.Tanh, L.Softmax)
_READS_NOTHING = (L.AvgPool1d, L.AvgPool2d, L.AdaptiveAvgPool1d, L.AdaptiveAvgPool2d)
_MAX_POOLS = (L.MaxPool1d, L.MaxPool2d, L.AdaptiveMaxPool2d)


@dataclass
class ActivationEstimate:
    """Bytes of the activations term and how they split; ``rows`` has one entry per leaf call."""

    total: int
    kept: int          # tensors backward reads (inputs/outputs of leaves, the batch), each once
    internal: int      # tensors inside composite layers, masks and pooling indices
    transient: int     # the peak's extra: an unkept output in the forward or gradients in backward
    logits: int
    peak_at: str       # "forward" or "backward (<layer>)"
    rows: list[dict[str, Any]] = field(default_factory=list)


def _at_batch(s1: Sequence[int], s2: Sequence[int], batch: int) -> tuple[int, ...]:
    """A call's shape at ``batch`` from its shapes at batch 1 and 2 (linear in the batch)."""
    return tuple(a + (b - a) * (batch - 1) for a, b in zip(s1, s2, strict=True))


def _n(shape: Sequence[int] | None) -> int:
    return int(math.prod(shape)) if shape is not None else 0


def _inside(spec: L.Layer, inputs: list[tuple[int, ...]], output: tuple[int, ...] | None) -> int:
    """Bytes a composite layer (or a mask/index-keeping one) holds beyond its inputs and output."""
    if isinstance(spec, L.Dropout):
        return _n(output) if spec.p > 0 else 0                      # bool mask
    if isinstance(spec, _MAX_POOLS):
        return _n(output) * I64                                     # argmax indices
    if isinstance(spec, L.MultiheadAttention):
        (n, lq, e), lk = inputs[0], (inputs[1][1] if len(inputs) > 1 else inputs[0][1])
        probs = n * spec.num_heads * lq * lk
        floats = n * lq * e + 2 * n * lk * e + probs + n * lq * e   # q, k, v projections, probabilities, attn out
        return floats * F32 + (probs if spec.dropout > 0 else 0)
    if isinstance(spec, L.TransformerEncoderLayer):
        n, seq, d = inputs[0]
        ff, probs = spec.dim_feedforward, n * spec.nhead * seq * seq
        hidden = n * seq * ff * (2 if spec.activation == "gelu" else 1)
        # q, k, v + probabilities + attention output; the first norm's input and output, the second's input
        floats = 3 * n * seq * d + probs + n * seq * d + 3 * n * seq * d + hidden
        masks = (probs + 2 * n * seq * d + n * seq * ff) if spec.dropout > 0 else 0
        extra_copies = (probs + n * seq * ff) * F32 if spec.dropout > 0 else 0  # dropped copies kept by matmuls
        return floats * F32 + masks + extra_copies
    if isinstance(spec, L._RNN):
        n, steps = inputs[0][0], inputs[0][1]
        dirs = 2 if spec.bidirectional else 1
        return spec.num_layers * dirs * n * steps * (spec.gates + 2) * spec.hidden_size * F32
    return 0


def activation_estimate(t1: Any, t2: Any, batch: int, input_bytes: int) -> ActivationEstimate:
    """The activations term at ``batch`` from leaf traces at batch 1 and 2 (``compress.measure.trace``).

    ``input_bytes``: the input batch at ``batch`` (its own dtype), held by the loop all step."""
    alias: dict[int, int] = {}

    def key(tensor_id: int) -> int:
        while tensor_id in alias:
            tensor_id = alias[tensor_id]
        return tensor_id

    kept: dict[int, tuple[int, int]] = {}    # tensor -> (bytes, index of the first call that keeps it)
    if t1.input_id is not None:
        kept[t1.input_id] = (input_bytes, -1)

    def keep(tensor_id: int, nbytes: int, call: int) -> int:
        """Record a kept tensor once; the bytes it adds (0 if already kept)."""
        if key(tensor_id) in kept:
            return 0
        kept[key(tensor_id)] = (nbytes, call)
        return nbytes

    inside: list[int] = []
    calls = []
    for c1, c2 in zip(t1.calls, t2.calls, strict=True):
        ins = [_at_batch(a, b, batch) for a, b in zip(c1.inputs, c2.inputs, strict=True)]
        out = _at_batch(c1.output, c2.output, batch) if c1.output is not None else None
        spec, i = c1.spec, c1.index
        new = 0
        view = isinstance(spec, _VIEWS) or (isinstance(spec, L.Dropout) and spec.p == 0)
        if view and c1.output_id is not None and c1.input_ids:
            source = key(c1.input_ids[0])
            if source != c1.output_id:  # a view may be its input itself (flatten of a flat tensor)
                alias[c1.output_id] = source
        elif isinstance(spec, _READS_OUTPUT):
            if c1.output_id is not None:
                new = keep(c1.output_id, _n(out) * F32, i)
        elif not isinstance(spec, (*_READS_NOTHING, L.Dropout)):
            size = I64 if isinstance(spec, L.Embedding) else F32
            new = sum(keep(tid, _n(shape) * size, i) for tid, shape in zip(c1.input_ids, ins, strict=True))
        inside.append(_inside(spec, ins, out))
        calls.append((c1, ins, out, new))
    kept_total, inside_total = sum(b for b, _ in kept.values()), sum(inside)
    last = calls[-1] if calls else None
    logits = _n(last[2]) * F32 if last is not None and last[0].output_id is not None and key(
        last[0].output_id) not in kept else 0
    # forward: everything kept + the largest output nobody keeps (alive until its consumer has run)
    unkept = [_n(out) * F32 for c, _, out, _ in calls
              if out is not None and c.output_id is not None and key(c.output_id) not in kept]
    forward_extra = max(unkept, default=0)
    peak, peak_at, extra = kept_total + inside_total + forward_extra, "forward", forward_extra
    # backward, last layer first: what layers <= i still need + the gradients of call i's output and inputs
    for c, ins, out, _ in reversed(calls):
        still = sum(b for b, j in kept.values() if j <= c.index) + sum(inside[: c.index + 1])
        grads = (_n(out) + sum(_n(s) for s in ins)) * F32
        if still + grads > peak:
            peak, peak_at, extra = still + grads, f"backward ({c.path})", grads
    rows = [{"layer": c.path, "kind": c.spec.kind, "output_shape": list(out) if out is not None else None,
             "kept_bytes": new, "inside_bytes": inside[k]} for k, (c, _, out, new) in enumerate(calls)]
    return ActivationEstimate(peak + logits, kept_total, inside_total, extra, logits, peak_at, rows)
