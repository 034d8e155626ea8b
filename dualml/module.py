"""Neutral composite modules: what a user subclasses to write a model once.

A :class:`Module` is a plain Python object whose attributes are neutral layers, other modules,
:class:`Parameter` or :class:`Buffer`; its ``forward(self, ...)`` calls sub-layers and the ops in
``self.F``. ``dualml.build`` turns it into a native ``torch.nn.Module`` / ``paddle.nn.Layer`` of a
class generated from the user's class, with the same ``forward`` source, so the result is a model
the frameworks' own tools see as hand-written.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from .errors import DualmlError
from .layers import Init, Layer, ParamSpec, constant


class Parameter:
    """A trainable weight owned directly by a Module (e.g. a learned positional embedding)."""

    def __init__(self, shape: Iterable[int], init: Init | float = 0.0) -> None:
        self.spec = ParamSpec(tuple(int(s) for s in shape),
                              init if callable(init) else constant(float(init)))


class Buffer:
    """A constant, non-trainable array owned by a Module (e.g. a sinusoidal position table)."""

    def __init__(self, value: np.ndarray) -> None:
        value = np.ascontiguousarray(value)
        self.value = value
        self.spec = ParamSpec(value.shape, lambda rng, shape: value.copy(), trainable=False,
                              dtype=str(value.dtype))


class Module:
    """Base class for neutral models. Subclasses call ``super().__init__()`` then assign children.

    Inside ``forward``, ``self.F`` is the backend's op namespace (see ``dualml.ops.OPS``): it is
    only bound on the built native model, never on this neutral description.
    """

    def __init__(self) -> None:
        object.__setattr__(self, "_children", {})

    def __setattr__(self, name: str, value: Any) -> None:
        if "_children" not in self.__dict__:
            raise DualmlError(f"{type(self).__name__}.__init__ must call super().__init__() before "
                              f"assigning '{name}'")
        if isinstance(value, (Module, Layer, Parameter, Buffer)):
            self._children[name] = value
        elif name in self._children:
            del self._children[name]
        object.__setattr__(self, name, value)

    def children(self) -> dict[str, Module | Layer | Parameter | Buffer]:
        return dict(self._children)

    def forward(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - user code
        raise NotImplementedError(f"{type(self).__name__} must define forward(self, ...)")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise DualmlError(f"{type(self).__name__} is a neutral description: build it first with "
                          "dualml.build(model, backend='torch' | 'paddle')")


class Sequential(Module):
    """Calls its children in order; built as ``torch.nn.Sequential`` / ``paddle.nn.Sequential``."""

    def __init__(self, *layers: Module | Layer) -> None:
        super().__init__()
        for i, layer in enumerate(layers):
            setattr(self, str(i), layer)

    def __len__(self) -> int:
        return len(self._children)

    def __getitem__(self, i: int) -> Module | Layer:
        return list(self._children.values())[i]


class ModuleList(Sequential):
    """An indexable list of children; built as ``torch.nn.ModuleList`` / ``paddle.nn.LayerList``."""

    def __iter__(self) -> Iterator[Module | Layer]:
        return iter(list(self._children.values()))


def join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def named_nodes(model: Module | Layer, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every node of the neutral tree (pre-order), with its dotted path."""
    yield prefix, model
    if isinstance(model, Module):
        for name, child in model.children().items():
            yield from named_nodes(child, join(prefix, name))


def named_leaves(model: Module | Layer) -> Iterator[tuple[str, Layer]]:
    return ((p, n) for p, n in named_nodes(model) if isinstance(n, Layer))


def manifest(model: Module | Layer) -> dict[str, ParamSpec]:
    """The canonical weight layout of a model: every canonical name and its ParamSpec, in order."""
    out: dict[str, ParamSpec] = {}
    for path, node in named_nodes(model):
        if isinstance(node, Layer):
            out.update({join(path, k): v for k, v in node.params().items()})
        elif isinstance(node, (Parameter, Buffer)):
            out[path] = node.spec
    return out


def init_weights(model: Module | Layer, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded canonical initial weights: the same seed gives bit-identical starts on every backend."""
    rng = np.random.default_rng(seed)
    return {name: np.asarray(spec.init(rng, spec.shape), dtype=spec.dtype)
            for name, spec in manifest(model).items()}


def describe(model: Module | Layer) -> str:
    """A stable text form of the architecture, hashed into checkpoints to detect the wrong model."""
    lines = []
    for path, node in named_nodes(model):
        if isinstance(node, Layer):
            lines.append(f"{path}: {node!r}")
        elif isinstance(node, (Parameter, Buffer)):
            lines.append(f"{path}: {type(node).__name__}{node.spec.shape}")
    return "\n".join(lines)
