"""Size and compute measures of a neutral model: parameters, MACs/FLOPs, sparsity, and the leaf trace.

Parameters come from the canonical ParamSpecs (no framework needed). FLOPs need the shape of every
leaf's input and output, which depends on ``forward``; those are read from one forward pass of a
dualml-built net with forward hooks on its native leaves (:func:`trace`), so any model written
against the neutral layers is measured the same way on either backend. The same trace records which
leaf call produced each leaf's input (by tensor identity), which is what structured pruning uses
to find the layers that consume a conv's output channels.

Conventions (the counts differ between tools mainly here, so they are fixed and written down):

- MAC = one multiply-accumulate; **FLOPs = 2 * MACs**. Counts are for the given input (batch
  included): pass batch 1 for per-sample figures (the default input is ``model.input_spec(1)``).
- Conv (1d/2d): ``out elements * in_channels / groups * prod(kernel)``; bias adds are not counted.
- ConvTranspose2d: ``in elements * out_channels / groups * kh * kw``.
- Linear: ``out elements * in_features``.
- BatchNorm / LayerNorm / GroupNorm: 1 MAC per output element (the per-element scale and shift of
  inference; computing batch statistics is not counted).
- MultiheadAttention (q [N, Lq, E], k/v [N, Lk, E]): the four projections
  ``N*(2*Lq + 2*Lk)*E*E`` plus ``QK^T`` and ``attn*V``, ``2*N*Lq*Lk*E``; softmax not counted.
- TransformerEncoderLayer: its attention as above + ``2*N*L*d*dim_feedforward`` + two norms.
- LSTM / GRU: per step, layer and direction ``gates*hidden*(input + hidden)``; gate nonlinearities
  and elementwise products not counted.
- Activations, pooling, dropout, flatten, embedding lookups: 0 (comparisons, adds or copies).
- Ops called through ``self.F`` in a forward (``matmul``, ``add``, ...) are not leaves and are not
  counted: a model doing heavy work there is under-counted (the row list shows what was counted).
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from .. import layers as L
from ..errors import ConfigError
from ..layers import InputSpec, Layer
from ..module import Module, manifest, named_leaves


# ----------------------------------------------------------------------------- parameters & sparsity
def count_params(model: Module | Layer, trainable_only: bool = True) -> int:
    """Number of scalar weights from the canonical layout.

    Counts what the optimizer trains (``ParamSpec.trainable``): weights and biases of every layer
    and ``Parameter``s. BatchNorm running statistics and ``Buffer``s (e.g. a position table) are
    state, not parameters, and are left out unless ``trainable_only=False``.
    """
    return int(sum(math.prod(s.shape) for s in manifest(model).values() if s.trainable or not trainable_only))


def _names(weights: dict[str, np.ndarray], names: Iterable[str] | None) -> list[str]:
    if names is None:
        return [k for k, v in weights.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]
    names = list(names)
    missing = [n for n in names if n not in weights]
    if missing:
        raise ConfigError(f"weights have no {', '.join(repr(n) for n in missing)}; "
                          f"they hold: {', '.join(weights)}")
    return names


def nonzero_params(weights: dict[str, np.ndarray], names: Iterable[str] | None = None) -> int:
    """Number of non-zero entries in ``names`` (default: every floating array)."""
    return int(sum(np.count_nonzero(weights[n]) for n in _names(weights, names)))


def sparsity(weights: dict[str, np.ndarray], names: Iterable[str] | None = None) -> float:
    """Fraction of zero entries over ``names`` (default: every floating array), in [0, 1]."""
    names = _names(weights, names)
    total = sum(np.asarray(weights[n]).size for n in names)
    return 0.0 if total == 0 else 1.0 - nonzero_params(weights, names) / total


# ----------------------------------------------------------------------------- the leaf trace
@dataclass
class Call:
    """One call of a leaf during the traced forward (a leaf used twice appears twice)."""

    index: int
    path: str
    spec: Layer
    inputs: list[tuple[int, ...]]            # shapes of the positional tensor inputs
    sources: list[int | None]                 # per input: the Call that produced it, None if not a leaf
    output: tuple[int, ...] | None = None     # shape of the (first) tensor output
    consumers: list[int] = field(default_factory=list)  # calls that took this call's output as input
    is_model_output: bool = False
    input_ids: list[int] = field(default_factory=list)   # identity of each input tensor (unique within the trace)
    output_id: int | None = None                          # identity of the (first) output tensor


@dataclass
class Trace:
    calls: list[Call]
    input: InputSpec
    backend: str
    sample: np.ndarray | None = field(default=None, repr=False)   # the traced input
    net: Any = field(default=None, repr=False)                     # the built net it ran on
    input_id: int | None = None                                    # identity of the traced input tensor

    def calls_of(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]


def input_spec(model: Module | Layer, input_shape: Sequence[int] | None = None) -> InputSpec:
    """The traced input: ``model.input_spec(1)[0]`` (zoo models say what they take), with its shape
    replaced by ``input_shape`` when given; models without ``input_spec`` need ``input_shape``."""
    base = model.input_spec(1)[0] if hasattr(model, "input_spec") else None
    if input_shape is None:
        if base is None:
            raise ConfigError(f"{type(model).__name__} has no input_spec(); pass input_shape=(batch, ...)")
        return base
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s <= 0 for s in shape):
        raise ConfigError(f"input_shape={list(shape)} is not allowed; allowed: positive sizes, batch first")
    return replace(base, shape=shape) if base is not None else InputSpec(shape)


def _tensors(value: Any, be: Any) -> list[Any]:
    if be.is_tensor(value):
        return [value]
    if isinstance(value, (tuple, list)):
        return [t for v in value for t in _tensors(v, be)]
    return []


def trace(model: Module | Layer, input_shape: Sequence[int] | None = None, backend: str | None = None,
          weights: dict[str, np.ndarray] | None = None, seed: int = 0) -> Trace:
    """Run one eval-mode forward of ``model`` built on ``backend`` and record every leaf call.

    ``backend``: the configured backend; None: :func:`dualml.backend.default_backend` (any installed
    framework gives the same shapes and edges, so a paddle-only install traces on paddle).

    Each call's inputs are matched to the call that produced them by tensor *identity*: a tensor
    that came out of a ``self.F`` op (``x + identity``, ``F.relu``) matches no leaf (source None).
    Every output is kept alive until the trace ends so no id is reused.
    """
    from ..backend import default_backend, get_backend
    from ..build import build, native_leaves

    be = get_backend(backend or default_backend())
    spec = input_spec(model, input_shape)
    net = build(model, be.name, seed=seed, weights=weights)
    leaves = native_leaves(net)
    specs = dict(named_leaves(model))
    calls: list[Call] = []
    producer: dict[int, int] = {}
    alive: list[Any] = []

    def pre(path: str, inputs: tuple) -> None:
        ts = _tensors(inputs, be)
        calls.append(Call(len(calls), path, specs[path], [tuple(t.shape) for t in ts],
                          [producer.get(id(t)) for t in ts], input_ids=[id(t) for t in ts]))
        alive.extend(ts)

    def post(path: str, output: Any) -> None:
        call = calls[-1]
        ts = _tensors(output, be)
        call.output = tuple(ts[0].shape) if ts else None
        call.output_id = id(ts[0]) if ts else None
        for t in ts:
            producer[id(t)] = call.index
        alive.extend(ts)

    sample = spec.sample(np.random.default_rng(seed))
    x = be.tensor(sample)
    with be.no_grad(), be.hooks(leaves, pre=pre, post=post):
        out = net(x)
    for t in _tensors(out, be):
        if id(t) in producer:
            calls[producer[id(t)]].is_model_output = True
    for c in calls:
        for s in c.sources:
            if s is not None and c.index not in calls[s].consumers:
                calls[s].consumers.append(c.index)
    return Trace(calls, spec, be.name, sample, net, input_id=id(x))


# ----------------------------------------------------------------------------- FLOPs
_ZERO = (L.ReLU, L.GELU, L.SiLU, L.Sigmoid, L.Tanh, L.Identity, L.GradReverse, L.Softmax, L.LeakyReLU, L.PReLU,
         L.Flatten, L.Dropout, L.Embedding, L._Pool, L._AdaptivePool)


def _attention_macs(q: Sequence[int], k: Sequence[int], e: int) -> int:
    n, lq, lk = q[0], q[1], k[1]
    return n * (2 * lq + 2 * lk) * e * e + 2 * n * lq * lk * e


def layer_macs(spec: Layer, inputs: Sequence[tuple[int, ...]], output: tuple[int, ...] | None) -> int | None:
    """MACs of one leaf call from its shapes (module docstring), None for a layer type with no rule."""
    out = math.prod(output) if output is not None else 0
    if isinstance(spec, L._ConvNd):
        return out * spec.in_channels // spec.groups * math.prod(spec.kernel_size)
    if isinstance(spec, L.ConvTranspose2d):
        return math.prod(inputs[0]) * spec.out_channels // spec.groups * math.prod(spec.kernel_size)
    if isinstance(spec, L.Linear):
        return out * spec.in_features
    if isinstance(spec, (L._BatchNorm, L.LayerNorm, L.GroupNorm)):
        return out
    if isinstance(spec, L.MultiheadAttention):
        q = inputs[0]
        return _attention_macs(q, inputs[1] if len(inputs) > 1 else q, spec.embed_dim)
    if isinstance(spec, L.TransformerEncoderLayer):
        n, seq, d = inputs[0]
        return _attention_macs(inputs[0], inputs[0], d) + 2 * n * seq * d * spec.dim_feedforward + 2 * n * seq * d
    if isinstance(spec, L._RNN):
        n, steps, _ = inputs[0]
        h, dirs = spec.hidden_size, 2 if spec.bidirectional else 1
        total = 0
        for layer in range(spec.num_layers):
            size_in = spec.input_size if layer == 0 else h * dirs
            total += dirs * n * steps * spec.gates * h * (size_in + h)
        return total
    if isinstance(spec, _ZERO):
        return 0
    return None


def flops(model: Module | Layer, input_shape: Sequence[int] | None = None,
          backend: str | None = None) -> dict[str, Any]:
    """MACs and FLOPs (= 2 * MACs) of one forward on ``input_shape`` (default ``model.input_spec(1)``),
    traced on ``backend`` (None: :func:`dualml.backend.default_backend`).

    Returns ``{"macs", "flops", "params", "input_shape", "layers": [row, ...], "uncounted": [...]}``;
    a row is one leaf call: layer path, kind, input/output shapes, macs, flops. ``uncounted`` names
    leaves of a type with no counting rule (custom layers); they contribute 0.
    """
    tr = trace(model, input_shape, backend)
    rows, uncounted = [], []
    for c in tr.calls:
        macs = layer_macs(c.spec, c.inputs, c.output)
        if macs is None:
            uncounted.append(c.path)
            macs = 0
        rows.append({"layer": c.path, "kind": c.spec.kind, "input_shape": [list(s) for s in c.inputs],
                     "output_shape": list(c.output) if c.output is not None else None,
                     "macs": int(macs), "flops": 2 * int(macs)})
    total = sum(r["macs"] for r in rows)
    return {"macs": total, "flops": 2 * total, "params": count_params(model), "input_shape": list(tr.input.shape),
            "layers": rows, "uncounted": sorted(set(uncounted))}
