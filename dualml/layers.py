"""The backend-neutral layer set: specs that hold hyper-parameters and the canonical weight layout.

A layer spec knows nothing about torch or paddle. It declares, once, the names, shapes and
initialisers of its canonical weights (the layout every checkpoint and every backend agrees on),
which input it accepts, and small examples the parity suite builds on both backends. The adapters
turn a spec into the framework's own layer class and map canonical <-> native weights.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import ConfigError, not_allowed

Init = Callable[[np.random.Generator, tuple[int, ...]], np.ndarray]


# ----------------------------------------------------------------------------- initialisers
# Mirrors of PyTorch's default initialisers, drawn from a numpy generator so both backends start
# from bit-identical weights.
def uniform(bound: float) -> Init:
    return lambda rng, shape: rng.uniform(-bound, bound, size=shape).astype(np.float32)


def constant(value: float) -> Init:
    return lambda rng, shape: np.full(shape, value, dtype=np.float32)


def normal(std: float = 1.0) -> Init:
    return lambda rng, shape: (rng.standard_normal(size=shape) * std).astype(np.float32)


def xavier_uniform(fan_in: int, fan_out: int) -> Init:
    return uniform(math.sqrt(6.0 / (fan_in + fan_out)))


@dataclass(frozen=True)
class ParamSpec:
    """One canonical weight: its shape, how to initialise it, and whether the optimiser trains it."""

    shape: tuple[int, ...]
    init: Init
    trainable: bool = True
    positive: bool = False  # variances: parity randomisation keeps them > 0
    dtype: str = "float32"


@dataclass(frozen=True)
class InputSpec:
    """A sample input for examples and benchmarks: float uniform in [low, high) or int in [low, high)."""

    shape: tuple[int, ...]
    dtype: str = "float32"
    low: float = -1.0
    high: float = 1.0

    def sample(self, rng: np.random.Generator) -> np.ndarray:
        if self.dtype.startswith("int"):
            return rng.integers(int(self.low), int(self.high), size=self.shape).astype(self.dtype)
        if self.dtype == "bool":
            return rng.random(size=self.shape) < self.high
        return rng.uniform(self.low, self.high, size=self.shape).astype(self.dtype)


class Layer:
    """Base of every neutral leaf layer. Subclasses set attributes in ``__init__`` and describe weights.

    Registering a custom layer means subclassing this, declaring :meth:`params`, and giving each
    backend a builder and weight rules with ``dualml.register_layer``.
    """

    #: the hyper-parameters shown in repr and compared when checking a checkpoint's model
    def hparams(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if not k.startswith("_")}

    @property
    def kind(self) -> str:
        return type(self).__name__

    def params(self) -> dict[str, ParamSpec]:
        """Canonical weights of this layer (name -> spec). Layers without weights return {}."""
        return {}

    @property
    def draws_random(self) -> bool:
        """Whether train mode draws from the framework's RNG. The Trainer re-seeds that RNG from
        (seed, step) before each step only when some layer does (reproducible masks, exact resume),
        since seeding costs a few percent of a small model's step. Layers with a ``dropout`` rate are
        covered here; a custom layer that draws random numbers otherwise must override this."""
        return float(getattr(self, "dropout", 0.0)) > 0.0

    def check_input(self, shape: tuple[int, ...], dtype: str) -> str | None:
        """Return what this layer expects when ``shape``/``dtype`` cannot work, else None."""
        return None

    @classmethod
    def examples(cls) -> list[tuple[str, Layer, list[InputSpec]]]:
        """Small configurations the parity suite builds on every backend (label, layer, inputs)."""
        return []

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hparams().items())
        return f"{self.kind}({args})"


def _pos_int(name: str, value: Any, layer: str) -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"{layer}: {name}={value!r} is not allowed; allowed: a positive integer")
    return int(value)


def _tuple(v: int | Sequence[int], n: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * n


def _float_input(kind: str, shape: tuple[int, ...], dtype: str, ndims: Sequence[int], dim: int,
                 size: int, what: str) -> str | None:
    if not dtype.startswith(("float", "bfloat")):
        return "a floating-point tensor"
    if len(shape) not in ndims:
        return f"a {' or '.join(str(n) for n in ndims)}-d input {what}"
    if shape[dim] != size:
        return f"{what} with size {size} at dim {dim}"
    return None


# ----------------------------------------------------------------------------- dense
class Linear(Layer):
    """y = x W^T + b. Canonical ``weight`` is [out_features, in_features] (rows are output units)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True) -> None:
        self.in_features = _pos_int("in_features", in_features, "Linear")
        self.out_features = _pos_int("out_features", out_features, "Linear")
        self.bias = bool(bias)

    def params(self) -> dict[str, ParamSpec]:
        b = 1.0 / math.sqrt(self.in_features)
        p = {"weight": ParamSpec((self.out_features, self.in_features), uniform(b))}
        if self.bias:
            p["bias"] = ParamSpec((self.out_features,), uniform(b))
        return p

    def check_input(self, shape, dtype):
        if not shape or shape[-1] != self.in_features:
            return f"input [*, {self.in_features}]"
        return None

    @classmethod
    def examples(cls):
        return [("Linear", cls(6, 4), [InputSpec((3, 6))]),
                ("Linear-nobias-3d", cls(5, 7, bias=False), [InputSpec((2, 3, 5))])]


PADDING_MODES = ("same", "valid")


class _ConvNd(Layer):
    """``padding`` is an int per spatial dim, or torch's strings: ``'valid'`` (no padding) and
    ``'same'`` (output size = input size; stride 1 only, as in torch). For ``'same'`` the total
    padding ``dilation * (kernel - 1)`` is split as torch does, the odd extra pixel on the
    right/bottom: :meth:`pad_amounts` is that rule, in one place for every backend."""

    nd = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] | str = 0,
                 dilation: int | Sequence[int] = 1, groups: int = 1, bias: bool = True) -> None:
        name = self.kind
        self.in_channels = _pos_int("in_channels", in_channels, name)
        self.out_channels = _pos_int("out_channels", out_channels, name)
        self.kernel_size = _tuple(kernel_size, self.nd)
        self.stride = _tuple(stride, self.nd)
        self.padding = self._check_padding(padding)
        self.dilation = _tuple(dilation, self.nd)
        self.groups = _pos_int("groups", groups, name)
        self.bias = bool(bias)
        if in_channels % groups or out_channels % groups:
            raise ConfigError(f"{name}: groups={groups} is not allowed; it must divide in_channels="
                              f"{in_channels} and out_channels={out_channels}")

    def _check_padding(self, padding: Any) -> tuple[int, ...] | str:
        if isinstance(padding, str):
            if padding not in PADDING_MODES:
                hint = f" (did you mean '{padding.lower()}'?)" if padding.lower() in PADDING_MODES else ""
                raise ConfigError(f"{self.kind}: " + not_allowed("padding", repr(padding),
                                                                  [*PADDING_MODES, "an int per spatial dim"]) + hint)
            if padding == "same" and self.stride != (1,) * self.nd:
                raise ConfigError(f"{self.kind}: padding='same' is not allowed with stride={self.stride}; "
                                  "allowed: stride 1 (as in torch), or an explicit int padding")
            return padding
        try:
            pads = _tuple(padding, self.nd)
        except (TypeError, ValueError):
            pads = ()
        if len(pads) != self.nd or min(pads) < 0:
            raise ConfigError(f"{self.kind}: padding={padding!r} is not allowed; allowed: same, valid, or "
                              f"{self.nd} non-negative int(s)")
        return pads

    def pad_amounts(self) -> tuple[tuple[int, int], ...]:
        """(before, after) zero padding per spatial dim, as torch applies it for every ``padding``."""
        if self.padding == "valid":
            return ((0, 0),) * self.nd
        if self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            return tuple((t // 2, t - t // 2) for t in totals)
        return tuple((p, p) for p in self.padding)

    def params(self):
        fan_in = self.in_channels // self.groups * math.prod(self.kernel_size)
        b = 1.0 / math.sqrt(fan_in)
        shape = (self.out_channels, self.in_channels // self.groups, *self.kernel_size)
        p = {"weight": ParamSpec(shape, uniform(b))}
        if self.bias:
            p["bias"] = ParamSpec((self.out_channels,), uniform(b))
        return p

    def check_input(self, shape, dtype):
        return _float_input(self.kind, shape, dtype, (self.nd + 1, self.nd + 2), -self.nd - 1,
                            self.in_channels, f"with {self.in_channels} channels (N, C, ...)")


class Conv1d(_ConvNd):
    """Canonical ``weight`` is [out, in/groups, k] (NCL)."""

    nd = 1

    @classmethod
    def examples(cls):
        return [("Conv1d", cls(4, 6, 3, padding=1), [InputSpec((2, 4, 10))]),
                ("Conv1d-stride-dil-groups", cls(4, 8, 3, stride=2, dilation=2, groups=2),
                 [InputSpec((2, 4, 12))]),
                # even kernel: torch puts the odd padding pixel on the right
                ("Conv1d-same-even-kernel", cls(3, 4, 4, padding="same"), [InputSpec((2, 3, 9))]),
                ("Conv1d-same-dilated", cls(3, 4, 4, padding="same", dilation=3), [InputSpec((2, 3, 11))]),
                ("Conv1d-valid", cls(3, 4, 3, stride=2, padding="valid"), [InputSpec((2, 3, 10))])]


class Conv2d(_ConvNd):
    """Canonical ``weight`` is [out, in/groups, kh, kw] (NCHW)."""

    nd = 2

    @classmethod
    def examples(cls):
        return [("Conv2d", cls(3, 5, 3, padding=1), [InputSpec((2, 3, 8, 8))]),
                ("Conv2d-stride-pad-dil", cls(4, 6, (3, 2), stride=(2, 1), padding=(1, 2),
                                              dilation=(2, 1)), [InputSpec((2, 4, 9, 7))]),
                ("Conv2d-groups", cls(6, 9, 3, groups=3, bias=False), [InputSpec((2, 6, 7, 7))]),
                ("Conv2d-depthwise", cls(4, 4, 3, padding=1, groups=4), [InputSpec((1, 4, 6, 6))]),
                ("Conv2d-same-odd", cls(3, 4, 3, padding="same"), [InputSpec((2, 3, 7, 6))]),
                # even and mixed kernels, dilated: odd totals put the extra pixel right/bottom
                ("Conv2d-same-even-kernel-dilated", cls(3, 4, (4, 2), padding="same", dilation=(2, 3)),
                 [InputSpec((2, 3, 9, 8))]),
                ("Conv2d-same-even-kernel", cls(2, 3, 2, padding="same", bias=False), [InputSpec((2, 2, 5, 5))]),
                ("Conv2d-valid", cls(3, 4, 3, stride=2, padding="valid"), [InputSpec((2, 3, 7, 7))])]


class ConvTranspose2d(Layer):
    """Canonical ``weight`` is [in, out/groups, kh, kw], as both frameworks store it."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int | Sequence[int],
                 stride: int | Sequence[int] = 1, padding: int | Sequence[int] = 0,
                 output_padding: int | Sequence[int] = 0, groups: int = 1, bias: bool = True,
                 dilation: int | Sequence[int] = 1) -> None:
        self.in_channels = _pos_int("in_channels", in_channels, "ConvTranspose2d")
        self.out_channels = _pos_int("out_channels", out_channels, "ConvTranspose2d")
        self.kernel_size = _tuple(kernel_size, 2)
        self.stride = _tuple(stride, 2)
        self.padding = _tuple(padding, 2)
        self.output_padding = _tuple(output_padding, 2)
        self.groups = _pos_int("groups", groups, "ConvTranspose2d")
        self.bias = bool(bias)
        self.dilation = _tuple(dilation, 2)

    def params(self):
        fan_in = self.out_channels // self.groups * math.prod(self.kernel_size)
        b = 1.0 / math.sqrt(fan_in)
        shape = (self.in_channels, self.out_channels // self.groups, *self.kernel_size)
        p = {"weight": ParamSpec(shape, uniform(b))}
        if self.bias:
            p["bias"] = ParamSpec((self.out_channels,), uniform(b))
        return p

    def check_input(self, shape, dtype):
        return _float_input(self.kind, shape, dtype, (3, 4), -3, self.in_channels,
                            f"with {self.in_channels} channels (N, C, H, W)")

    @classmethod
    def examples(cls):
        return [("ConvTranspose2d", cls(4, 3, 3, stride=2, padding=1, output_padding=1),
                 [InputSpec((2, 4, 5, 5))]),
                ("ConvTranspose2d-groups", cls(4, 6, 2, stride=2, groups=2), [InputSpec((1, 4, 3, 3))])]


# ----------------------------------------------------------------------------- normalisation
class _BatchNorm(Layer):
    """``momentum`` follows the torch convention: weight of the new batch statistic (0.1).

    Canonical buffers: ``running_mean``, ``running_var`` (no ``num_batches_tracked``).
    """

    ndims: tuple[int, ...] = (4,)

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1,
                 affine: bool = True) -> None:
        self.num_features = _pos_int("num_features", num_features, self.kind)
        self.eps = float(eps)
        if not 0.0 < momentum < 1.0:
            raise ConfigError(f"{self.kind}: momentum={momentum} is not allowed; allowed: 0 < momentum < 1 "
                              "(torch convention: weight of the new batch statistic)")
        self.momentum = float(momentum)
        self.affine = bool(affine)

    def params(self):
        n = (self.num_features,)
        p = {}
        if self.affine:
            p = {"weight": ParamSpec(n, constant(1.0)), "bias": ParamSpec(n, constant(0.0))}
        p["running_mean"] = ParamSpec(n, constant(0.0), trainable=False)
        p["running_var"] = ParamSpec(n, constant(1.0), trainable=False, positive=True)
        return p

    def check_input(self, shape, dtype):
        return _float_input(self.kind, shape, dtype, self.ndims, 1, self.num_features,
                            f"with {self.num_features} features at dim 1")


class BatchNorm1d(_BatchNorm):
    ndims = (2, 3)

    @classmethod
    def examples(cls):
        return [("BatchNorm1d", cls(5), [InputSpec((4, 5))]),
                ("BatchNorm1d-3d", cls(3, momentum=0.2), [InputSpec((4, 3, 6))])]


class BatchNorm2d(_BatchNorm):
    ndims = (4,)

    @classmethod
    def examples(cls):
        return [("BatchNorm2d", cls(3), [InputSpec((4, 3, 5, 5))]),
                ("BatchNorm2d-noaffine", cls(2, eps=1e-3, affine=False), [InputSpec((3, 2, 4, 4))])]


class LayerNorm(Layer):
    def __init__(self, normalized_shape: int | Sequence[int], eps: float = 1e-5,
                 elementwise_affine: bool = True) -> None:
        self.normalized_shape = _tuple(normalized_shape, 1)
        self.eps = float(eps)
        self.elementwise_affine = bool(elementwise_affine)

    def params(self):
        if not self.elementwise_affine:
            return {}
        s = self.normalized_shape
        return {"weight": ParamSpec(s, constant(1.0)), "bias": ParamSpec(s, constant(0.0))}

    def check_input(self, shape, dtype):
        n = len(self.normalized_shape)
        if tuple(shape[-n:]) != self.normalized_shape:
            return f"input [*, {', '.join(map(str, self.normalized_shape))}]"
        return None

    @classmethod
    def examples(cls):
        return [("LayerNorm", cls(6), [InputSpec((2, 3, 6))]),
                ("LayerNorm-2d-eps", cls((3, 4), eps=1e-3), [InputSpec((2, 3, 4))])]


class GroupNorm(Layer):
    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True) -> None:
        self.num_groups = _pos_int("num_groups", num_groups, "GroupNorm")
        self.num_channels = _pos_int("num_channels", num_channels, "GroupNorm")
        if num_channels % num_groups:
            raise ConfigError(f"GroupNorm: num_groups={num_groups} is not allowed; it must divide "
                              f"num_channels={num_channels}")
        self.eps = float(eps)
        self.affine = bool(affine)

    def params(self):
        if not self.affine:
            return {}
        n = (self.num_channels,)
        return {"weight": ParamSpec(n, constant(1.0)), "bias": ParamSpec(n, constant(0.0))}

    def check_input(self, shape, dtype):
        return _float_input(self.kind, shape, dtype, (2, 3, 4, 5), 1, self.num_channels,
                            f"with {self.num_channels} channels at dim 1")

    @classmethod
    def examples(cls):
        return [("GroupNorm", cls(2, 6), [InputSpec((2, 6, 4, 4))])]


class Embedding(Layer):
    """Canonical ``weight`` is [num_embeddings, embedding_dim] in both frameworks.

    ``padding_idx`` has torch's meaning on every backend: the row is initialised to zero and gets no
    gradient, but it is *read* like any other row, so a checkpoint whose padding row is not zero
    gives its values (paddle's own Embedding outputs zeros for that index whatever the row holds).
    A negative index counts from the end and is stored as the non-negative one, as torch does."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None = None) -> None:
        self.num_embeddings = _pos_int("num_embeddings", num_embeddings, "Embedding")
        self.embedding_dim = _pos_int("embedding_dim", embedding_dim, "Embedding")
        if padding_idx is not None:
            n = self.num_embeddings
            if (not isinstance(padding_idx, (int, np.integer)) or isinstance(padding_idx, bool)
                    or not -n <= padding_idx < n):
                raise ConfigError(f"Embedding: padding_idx={padding_idx!r} is not allowed; allowed: None or an "
                                  f"int in [-{n}, {n}) (num_embeddings={n})")
            padding_idx = int(padding_idx) % n
        self.padding_idx = padding_idx

    def params(self):
        n, d = self.num_embeddings, self.embedding_dim
        init = normal(1.0)
        if self.padding_idx is not None:
            pad = self.padding_idx

            def init(rng, shape):  # noqa: F811 - torch zeroes the padding row
                w = normal(1.0)(rng, shape)
                w[pad] = 0.0
                return w
        return {"weight": ParamSpec((n, d), init)}

    def check_input(self, shape, dtype):
        if not dtype.startswith(("int", "uint")):
            return "integer token ids"
        return None

    @classmethod
    def examples(cls):
        # ids 1..3 around padding_idx=2 (the parity input holds it twice); parity's random
        # weights make that row non-zero, so the suite checks it is read and gets no gradient
        return [("Embedding", cls(11, 4), [InputSpec((2, 5), "int64", 0, 11)]),
                ("Embedding-padding_idx", cls(6, 4, padding_idx=2), [InputSpec((3, 4), "int64", 1, 4)])]


class Dropout(Layer):
    """Identity in eval mode. In train mode both frameworks zero with probability ``p`` and scale
    the rest by 1/(1-p) ("upscale in train"), but their random masks differ: train-mode outputs
    agree in distribution, not element by element."""

    def __init__(self, p: float = 0.5) -> None:
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"Dropout: p={p} is not allowed; allowed: 0 <= p < 1")
        self.p = float(p)

    @property
    def draws_random(self) -> bool:
        return self.p > 0.0

    @classmethod
    def examples(cls):
        return [("Dropout", cls(0.3), [InputSpec((3, 7))])]


class MultiheadAttention(Layer):
    """Batch-first attention: forward(query, key, value, attn_mask=None, key_padding_mask=None).

    Masks follow the torch convention on both backends: a boolean ``True`` means "may not attend";
    a float mask is added to the attention logits. Returns the output only (no weights).
    Canonical weights are separate ``q_proj``/``k_proj``/``v_proj``/``out_proj`` Linear layouts.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True) -> None:
        self.embed_dim = _pos_int("embed_dim", embed_dim, "MultiheadAttention")
        self.num_heads = _pos_int("num_heads", num_heads, "MultiheadAttention")
        if embed_dim % num_heads:
            raise ConfigError(f"MultiheadAttention: num_heads={num_heads} is not allowed; it must "
                              f"divide embed_dim={embed_dim}")
        self.dropout = float(dropout)
        self.bias = bool(bias)

    def params(self):
        e = self.embed_dim
        p = {}
        for proj in ("q_proj", "k_proj", "v_proj"):
            # torch initialises the packed [3E, E] matrix with xavier_uniform
            p[f"{proj}.weight"] = ParamSpec((e, e), xavier_uniform(e, 3 * e))
        p["out_proj.weight"] = ParamSpec((e, e), uniform(1.0 / math.sqrt(e)))
        if self.bias:
            for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
                p[f"{proj}.bias"] = ParamSpec((e,), constant(0.0))
        return p

    def check_input(self, shape, dtype):
        return _float_input(self.kind, shape, dtype, (3,), 2, self.embed_dim,
                            f"(batch, seq, {self.embed_dim})")

    @classmethod
    def examples(cls):
        e = [InputSpec((2, 5, 8))]
        cross = [InputSpec((2, 3, 8)), InputSpec((2, 6, 8)), InputSpec((2, 6, 8))]
        # per-head masks [batch*heads, L, S] (torch's 3-d attn_mask): boolean (True = may not attend;
        # ~25% blocked, no row fully blocked in the parity sample) and float (added to the logits)
        return [("MultiheadAttention-self", cls(8, 2), e * 3),
                ("MultiheadAttention-cross", cls(8, 4, bias=False), cross),
                ("MultiheadAttention-3d-bool-mask", cls(8, 2), [*cross, InputSpec((4, 3, 6), "bool", high=0.25)]),
                ("MultiheadAttention-3d-float-mask", cls(8, 2), [*cross, InputSpec((4, 3, 6), low=-2, high=2)])]


class _RNN(Layer):
    """Batch-first recurrent net: forward(x) -> (output, state). Canonical weights per layer ``l``
    and direction: ``weight_ih_l{l}[_reverse]`` [gates*hidden, in], ``weight_hh_l{l}`` [gates*hidden,
    hidden], ``bias_ih``/``bias_hh``, gate order as in torch (LSTM i,f,g,o; GRU r,z,n)."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bidirectional: bool = False, dropout: float = 0.0) -> None:
        self.input_size = _pos_int("input_size", input_size, self.kind)
        self.hidden_size = _pos_int("hidden_size", hidden_size, self.kind)
        self.num_layers = _pos_int("num_layers", num_layers, self.kind)
        self.bidirectional = bool(bidirectional)
        self.dropout = float(dropout)

    def params(self):
        h, g = self.hidden_size, self.gates * self.hidden_size
        dirs = 2 if self.bidirectional else 1
        init = uniform(1.0 / math.sqrt(h))
        p = {}
        for layer in range(self.num_layers):
            in_size = self.input_size if layer == 0 else h * dirs
            for suffix in ("", "_reverse")[:dirs]:
                p[f"weight_ih_l{layer}{suffix}"] = ParamSpec((g, in_size), init)
                p[f"weight_hh_l{layer}{suffix}"] = ParamSpec((g, h), init)
                p[f"bias_ih_l{layer}{suffix}"] = ParamSpec((g,), init)
                p[f"bias_hh_l{layer}{suffix}"] = ParamSpec((g,), init)
        return p

    def check_input(self, shape, dtype):
        return _float_input(self.kind, shape, dtype, (3,), 2, self.input_size,
                            f"(batch, seq, {self.input_size})")

    @classmethod
    def examples(cls):
        return [(cls.__name__, cls(4, 5), [InputSpec((2, 6, 4))]),
                (f"{cls.__name__}-2layer-bidirectional", cls(3, 4, num_layers=2, bidirectional=True),
                 [InputSpec((2, 5, 3))])]


class LSTM(_RNN):
    gates = 4


class GRU(_RNN):
    gates = 3


# ----------------------------------------------------------------------------- pooling
class _Pool(Layer):
    nd = 2

    def __init__(self, kernel_size: int | Sequence[int], stride: int | Sequence[int] | None = None,
                 padding: int | Sequence[int] = 0, ceil_mode: bool = False) -> None:
        self.kernel_size = _tuple(kernel_size, self.nd)
        self.stride = _tuple(stride if stride is not None else kernel_size, self.nd)
        self.padding = _tuple(padding, self.nd)
        self.ceil_mode = bool(ceil_mode)


class MaxPool1d(_Pool):
    nd = 1

    @classmethod
    def examples(cls):
        return [("MaxPool1d", cls(2), [InputSpec((2, 3, 8))])]


class MaxPool2d(_Pool):
    @classmethod
    def examples(cls):
        return [("MaxPool2d", cls(2), [InputSpec((2, 3, 6, 6))]),
                ("MaxPool2d-stride-pad-ceil", cls(3, stride=2, padding=1, ceil_mode=True),
                 [InputSpec((2, 2, 7, 7))])]


class AvgPool1d(_Pool):
    """Padding counts toward the average (torch's count_include_pad=True, paddle exclusive=False)."""

    nd = 1

    @classmethod
    def examples(cls):
        return [("AvgPool1d", cls(3, stride=2, padding=1), [InputSpec((2, 3, 9))])]


class AvgPool2d(_Pool):
    """Padding counts toward the average (torch's count_include_pad=True, paddle exclusive=False)."""

    @classmethod
    def examples(cls):
        return [("AvgPool2d", cls(2), [InputSpec((2, 3, 6, 6))]),
                ("AvgPool2d-pad", cls(3, stride=2, padding=1), [InputSpec((1, 2, 7, 7))])]


class _AdaptivePool(Layer):
    def __init__(self, output_size: int | Sequence[int]) -> None:
        self.output_size = output_size if isinstance(output_size, int) else tuple(output_size)


class AdaptiveAvgPool1d(_AdaptivePool):
    @classmethod
    def examples(cls):
        return [("AdaptiveAvgPool1d", cls(3), [InputSpec((2, 3, 10))])]


class AdaptiveAvgPool2d(_AdaptivePool):
    @classmethod
    def examples(cls):
        return [("AdaptiveAvgPool2d", cls((1, 1)), [InputSpec((2, 3, 5, 5))]),
                ("AdaptiveAvgPool2d-uneven", cls((3, 2)), [InputSpec((2, 2, 7, 5))])]


class AdaptiveMaxPool2d(_AdaptivePool):
    @classmethod
    def examples(cls):
        return [("AdaptiveMaxPool2d", cls((2, 3)), [InputSpec((2, 2, 7, 8))])]


# ----------------------------------------------------------------------------- activations & shape
class _Activation(Layer):
    @classmethod
    def examples(cls):
        return [(cls.__name__, cls(), [InputSpec((3, 5), low=-3, high=3)])]


class ReLU(_Activation):
    pass


class SiLU(_Activation):
    pass


class Sigmoid(_Activation):
    pass


class Tanh(_Activation):
    pass


class Identity(_Activation):
    pass


class GELU(Layer):
    def __init__(self, approximate: str = "none") -> None:
        if approximate not in ("none", "tanh"):
            raise ConfigError(f"GELU: approximate={approximate!r} is not allowed; allowed: none, tanh")
        self.approximate = approximate

    @classmethod
    def examples(cls):
        return [("GELU", cls(), [InputSpec((3, 5), low=-3, high=3)]),
                ("GELU-tanh", cls("tanh"), [InputSpec((3, 5), low=-3, high=3)])]


class Softmax(Layer):
    def __init__(self, dim: int = -1) -> None:
        self.dim = int(dim)

    @classmethod
    def examples(cls):
        return [("Softmax", cls(-1), [InputSpec((3, 5), low=-3, high=3)]),
                ("Softmax-dim1", cls(1), [InputSpec((2, 4, 3), low=-3, high=3)])]


class LeakyReLU(Layer):
    def __init__(self, negative_slope: float = 0.01) -> None:
        self.negative_slope = float(negative_slope)

    @classmethod
    def examples(cls):
        return [("LeakyReLU", cls(0.2), [InputSpec((3, 5), low=-3, high=3)])]


class PReLU(Layer):
    """Canonical ``weight`` is [num_parameters] (paddle names it ``_weight``)."""

    def __init__(self, num_parameters: int = 1, init: float = 0.25) -> None:
        self.num_parameters = _pos_int("num_parameters", num_parameters, "PReLU")
        self.init = float(init)

    def params(self):
        return {"weight": ParamSpec((self.num_parameters,), constant(self.init))}

    @classmethod
    def examples(cls):
        return [("PReLU", cls(), [InputSpec((3, 5), low=-3, high=3)]),
                ("PReLU-channels", cls(4), [InputSpec((2, 4, 3, 3), low=-3, high=3)])]


class Flatten(Layer):
    def __init__(self, start_dim: int = 1, end_dim: int = -1) -> None:
        self.start_dim = int(start_dim)
        self.end_dim = int(end_dim)

    @classmethod
    def examples(cls):
        return [("Flatten", cls(), [InputSpec((2, 3, 4, 5))])]


class GradReverse(Layer):
    """Gradient reversal (Ganin & Lempitsky 2015, the layer DANN puts between the features and the domain
    classifier): identity forward, ``-lambda_ * upstream`` gradient backward, so one backward pass trains the
    domain head to tell the domains apart and the features to make that impossible.

    Native leaves (torch ``autograd.Function``, paddle ``PyLayer``) read their ``lambda_`` attribute at every
    call, so a schedule can change it between steps (``dualml.train.dann.set_grl_lambda``) without a rebuild.
    When no gradient is being recorded (eval under no_grad, tracing, ONNX export, paddle's static graph) they
    return the input itself, so an export holds no custom op: the layer is an identity there."""

    def __init__(self, lambda_: float = 1.0) -> None:
        lam = float(lambda_)
        if not math.isfinite(lam) or lam < 0:
            raise ConfigError(f"GradReverse: lambda_={lambda_!r} is not allowed; allowed: a finite number >= 0")
        self.lambda_ = lam

    @classmethod
    def examples(cls):
        # lambda 0.7 is not a float32 value: both backends must scale the gradient in its own dtype alike
        return [("GradReverse", cls(0.7), [InputSpec((3, 5))]),
                ("GradReverse-4d", cls(2.0), [InputSpec((2, 3, 4, 4))])]


# ----------------------------------------------------------------------------- blocks
class TransformerEncoderLayer(Layer):
    """Batch-first encoder block built as each framework's own ``TransformerEncoderLayer``.

    forward(src, src_mask=None, src_key_padding_mask=None); masks as in :class:`MultiheadAttention`.
    ``norm_first`` is paddle's ``normalize_before``.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: str = "relu", norm_first: bool = False, layer_norm_eps: float = 1e-5) -> None:
        self.d_model = _pos_int("d_model", d_model, "TransformerEncoderLayer")
        self.nhead = _pos_int("nhead", nhead, "TransformerEncoderLayer")
        self.dim_feedforward = _pos_int("dim_feedforward", dim_feedforward, "TransformerEncoderLayer")
        self.dropout = float(dropout)
        if activation not in ("relu", "gelu"):
            raise ConfigError(f"TransformerEncoderLayer: activation={activation!r} is not allowed; "
                              "allowed: gelu, relu")
        self.activation = activation
        self.norm_first = bool(norm_first)
        self.layer_norm_eps = float(layer_norm_eps)

    def params(self):
        p = {f"self_attn.{k}": v for k, v in
             MultiheadAttention(self.d_model, self.nhead).params().items()}
        for name, lin in (("linear1", Linear(self.d_model, self.dim_feedforward)),
                          ("linear2", Linear(self.dim_feedforward, self.d_model))):
            p.update({f"{name}.{k}": v for k, v in lin.params().items()})
        for name in ("norm1", "norm2"):
            p.update({f"{name}.{k}": v for k, v in LayerNorm(self.d_model).params().items()})
        return p

    def check_input(self, shape, dtype):
        return _float_input(self.kind, shape, dtype, (3,), 2, self.d_model, f"(batch, seq, {self.d_model})")

    @classmethod
    def examples(cls):
        x = [InputSpec((2, 5, 8))]
        return [("TransformerEncoderLayer", cls(8, 2, 16, dropout=0.0), x),
                ("TransformerEncoderLayer-gelu-normfirst",
                 cls(8, 4, 12, dropout=0.0, activation="gelu", norm_first=True), x)]


BUILTIN_LAYERS: tuple[type[Layer], ...] = (
    Linear, Conv1d, Conv2d, ConvTranspose2d, BatchNorm1d, BatchNorm2d, LayerNorm, GroupNorm,
    Embedding, Dropout, MultiheadAttention, LSTM, GRU, MaxPool1d, MaxPool2d, AvgPool1d, AvgPool2d,
    AdaptiveAvgPool1d, AdaptiveAvgPool2d, AdaptiveMaxPool2d, ReLU, GELU, SiLU, Sigmoid, Tanh,
    Softmax, LeakyReLU, PReLU, Flatten, Identity, TransformerEncoderLayer, GradReverse,
)
