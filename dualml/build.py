"""Turn a neutral model into a native one, and move canonical weights in and out of it.

The native model is the framework's own module tree: leaves are the adapter's layers (the
framework's classes), composites are classes generated from the user's class with the same
``forward``. The neutral description and the backend ride along on the root as
``_dualml_model`` / ``_dualml_backend`` so weights can be read back in canonical form.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backend import Backend, from_canonical, get_backend, layer_impl, same, to_canonical
from .errors import BackendError, ConfigError, DualmlError, LayerInputError, UserCodeError, WeightsError, not_allowed
from .layers import Layer
from .module import Buffer, Module, ModuleList, Parameter, Sequential, init_weights, join, manifest

_SKIP = {"__init__", "__dict__", "__weakref__", "__setattr__", "__call__", "__getattr__"}
_CLASSES: dict[tuple[str, type, bool], type] = {}


def _native_class(be: Backend, cls: type, root: bool) -> type:
    """A subclass of the framework's module base carrying the user's methods (forward first)."""
    key = (be.name, cls, root)
    if key in _CLASSES:
        return _CLASSES[key]
    ns: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or klass is Module:
            continue
        ns.update({k: v for k, v in vars(klass).items() if k not in _SKIP})
    ns["F"] = be.ops
    if root:
        base_call = be.module_base.__call__

        def __call__(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return base_call(self, *args, **kwargs)
            except DualmlError:
                raise
            except Exception as exc:
                _diagnose(self, args, kwargs, exc)
                raise
        ns["__call__"] = __call__
    native = type(cls.__name__, (be.module_base,), ns)
    _CLASSES[key] = native
    return native


def _build_node(node: Module | Layer, be: Backend, root: bool = False) -> Any:
    if isinstance(node, Layer):
        impl = layer_impl(be.name, node)
        try:
            leaf = impl.build(node)
        except DualmlError:
            raise
        except Exception as exc:
            owner = getattr(impl.build, "__module__", "") or ""
            if owner.split(".")[0] in ("dualml", "dualml_torch", "dualml_paddle"):
                raise  # dualml's own builder failing is dualml's bug: the traceback is the report
            raise UserCodeError.wrap(f"the {be.name} builder of layer {node.kind} "
                                     f"({owner}.{getattr(impl.build, '__qualname__', impl.build)!s})", exc) from exc
        object.__setattr__(leaf, "_dualml_spec", node)
        return leaf
    if type(node) in (Sequential, ModuleList):
        kind = "sequential" if type(node) is Sequential else "list"
        return be.container(kind, [_build_node(c, be) for c in node.children().values()])
    if not isinstance(node, Module):
        raise DualmlError(f"cannot build {type(node).__name__}: expected a dualml Module or Layer")
    cls = _native_class(be, type(node), root)
    native = cls.__new__(cls)
    be.module_base.__init__(native)
    for name, value in vars(node).items():
        if name == "_children" or name in node.children():
            continue
        setattr(native, name, value)
    for name, child in node.children().items():
        if isinstance(child, (Parameter, Buffer)):
            value = child.value if isinstance(child, Buffer) else np.zeros(child.spec.shape, "float32")
            be.add_weight(native, name, value, trainable=isinstance(child, Parameter))
        else:
            setattr(native, name, _build_node(child, be))
    return native


#: floating dtypes a whole model can be built in: float32 (normal use) and float64, the reference
#: in which both backends must compute the same function to ~1e-10 (kernel choice no longer matters)
DTYPES = ("float32", "float64")


def check_dtype(key: str, value: Any) -> str:
    """``value`` as a model dtype name, or a one-line ConfigError naming ``key`` and what is allowed."""
    if value not in DTYPES:
        raise ConfigError(not_allowed(key, value, DTYPES))
    return str(value)


def model_dtype(native: Any) -> str:
    """The floating dtype a dualml-built native model computes in (``build(..., dtype=)``)."""
    return getattr(native, "_dualml_dtype", "float32")


def as_dtype(weights: dict[str, np.ndarray], dtype: str) -> dict[str, np.ndarray]:
    """Floating canonical arrays in ``dtype`` (float32 -> float64 is exact); others unchanged."""
    return {k: (np.asarray(v, dtype) if np.issubdtype(np.asarray(v).dtype, np.floating) else v)
            for k, v in weights.items()}


def build(model: Module | Layer, backend: str = "torch", seed: int = 0,
          weights: dict[str, np.ndarray] | None = None, dtype: str = "float32") -> Any:
    """Build ``model`` as a native module of ``backend`` with canonical ``weights`` (default: the
    seeded initial weights, identical on every backend). Returns ``torch.nn.Module`` or
    ``paddle.nn.Layer``.

    ``dtype='float64'`` casts every floating parameter and buffer before the weights are loaded, so
    float32 weights widen exactly and float64 ones (a float64 checkpoint) arrive unrounded."""
    check_dtype("dtype", dtype)
    be = get_backend(backend)
    native = _build_node(model, be, root=True)
    object.__setattr__(native, "_dualml_model", model)
    object.__setattr__(native, "_dualml_backend", be.name)
    object.__setattr__(native, "_dualml_dtype", dtype)
    if dtype not in be.dtypes:
        raise BackendError(f"dtype={dtype} is not allowed on backend={be.name}; it has: {', '.join(be.dtypes)}")
    if dtype != "float32":
        try:
            be.to_dtype(native, dtype)
        except Exception as exc:  # a layer whose native class cannot be cast: name it, in one line
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise BackendError(f"model {type(model).__name__} cannot run in {dtype} on backend={be.name}: "
                               f"{first}") from exc
    set_weights(native, as_dtype(init_weights(model, seed) if weights is None else weights, dtype))
    be.set_train(native, False)
    return native


def neutral_of(native: Any) -> tuple[Module | Layer, Backend]:
    try:
        return native._dualml_model, get_backend(native._dualml_backend)
    except AttributeError:
        raise DualmlError(f"{type(native).__name__} was not built by dualml.build; wrap a hand-written "
                          "model with dualml.import_native(model, native, backend)") from None


def _child(native: Any, name: str) -> Any:
    return getattr(native, name)


def native_nodes(native: Any) -> dict[str, tuple[Any, Any]]:
    """Canonical path -> (neutral node, native module) for every leaf and weight-owning composite."""
    model, _ = neutral_of(native)
    out: dict[str, tuple[Any, Any]] = {}

    def walk(node: Any, nat: Any, path: str) -> None:
        out[path] = (node, nat)
        if isinstance(node, Module):
            for name, child in node.children().items():
                if isinstance(child, (Module, Layer)):
                    walk(child, _child(nat, name), join(path, name))
    walk(model, native, "")
    return out


def native_leaves(native: Any) -> dict[str, Any]:
    """Canonical path -> native leaf layer, in definition order."""
    return {p: n for p, (node, n) in native_nodes(native).items() if isinstance(node, Layer)}


def _direct_weights(node: Module) -> list[str]:
    return [k for k, v in node.children().items() if isinstance(v, (Parameter, Buffer))]


def _collect(native: Any, read: str) -> dict[str, np.ndarray]:
    """Canonical arrays (``read='arrays'``) or gradients (``read='grads'``) of a native model."""
    _, be = neutral_of(native)
    out: dict[str, np.ndarray] = {}
    for path, (node, nat) in native_nodes(native).items():
        source = getattr(be, read)(nat)
        if isinstance(node, Layer):
            rules = layer_impl(be.name, node).rules_for(node)
            out.update({join(path, k): v for k, v in to_canonical(rules, source).items()})
        elif isinstance(node, Module):
            out.update({join(path, k): source[k] for k in _direct_weights(node) if k in source})
    return out


def get_weights(native: Any) -> dict[str, np.ndarray]:
    """The model's weights in canonical form (names and layouts of ``dualml.manifest``)."""
    model, be = neutral_of(native)
    out = _collect(native, "arrays")
    missing = [k for k in manifest(model) if k not in out]
    if missing:  # an adapter's rules do not cover the layout: a bug, say where
        raise BackendError(f"backend={be.name} produced no canonical value for: {', '.join(missing)}")
    return {k: out[k] for k in manifest(model)}


def get_grads(native: Any) -> dict[str, np.ndarray]:
    """Gradients of trainable weights in canonical layout (same rules as the weights)."""
    model, _ = neutral_of(native)
    out = _collect(native, "grads")
    return {k: out[k] for k, spec in manifest(model).items() if spec.trainable and k in out}


@dataclass
class LoadReport:
    """What a (non-strict) load did: every problem named, nothing silently skipped."""

    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing: {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected: {', '.join(self.unexpected)}")
        if self.mismatched:
            parts.append(f"mismatched: {'; '.join(self.mismatched)}")
        return " | ".join(parts)


def check_weights(model: Module | Layer, weights: dict[str, np.ndarray], dtype: str = "float32") -> LoadReport:
    """Compare weights with the model's canonical manifest without touching anything. ``dtype``:
    the floating dtype the model was built in (its float32 specs then expect that dtype)."""
    expected = manifest(model)
    rep = LoadReport()
    for name, spec in expected.items():
        if name not in weights:
            rep.missing.append(name)
            continue
        arr = np.asarray(weights[name])
        if tuple(arr.shape) != spec.shape:
            rep.mismatched.append(f"{name} shape {list(arr.shape)}, model expects {list(spec.shape)}")
        elif str(arr.dtype) != (want := dtype if spec.dtype == "float32" else spec.dtype):
            rep.mismatched.append(f"{name} dtype {arr.dtype}, model expects {want}")
        else:
            rep.loaded.append(name)
    rep.unexpected = [k for k in weights if k not in expected]
    return rep


def set_weights(native: Any, weights: dict[str, np.ndarray], strict: bool = True) -> LoadReport:
    """Load canonical weights. Strict (default): any missing, unexpected or mis-shaped entry raises
    one error listing all of them and nothing is loaded. ``strict=False`` loads what matches and
    returns the report of the rest."""
    model, be = neutral_of(native)
    dtype = model_dtype(native)
    if dtype != "float32":  # float32 weights widen exactly into a float64 model; narrowing stays refused
        weights = {k: (np.asarray(v, dtype) if np.asarray(v).dtype == np.float32 else v) for k, v in weights.items()}
    rep = check_weights(model, weights, dtype)
    if strict and not rep.ok:
        raise WeightsError(f"weights do not fit {type(model).__name__} ({be.name}): {rep.problems()}")
    ok = set(rep.loaded)
    for path, (node, nat) in native_nodes(native).items():
        if isinstance(node, Layer):
            rules = layer_impl(be.name, node).rules_for(node)
            sub = {k: np.asarray(weights[join(path, k)]) for k in node.params() if join(path, k) in ok}
            values = from_canonical(rules, sub)
        elif isinstance(node, Module):
            values = {k: np.asarray(weights[join(path, k)]) for k in _direct_weights(node)
                      if join(path, k) in ok}
        else:
            continue
        if values:
            be.assign(nat, values)
    return rep


def convert(native: Any, backend: str) -> Any:
    """The same model on another backend with bit-identical canonical weights."""
    model, be = neutral_of(native)
    out = build(model, backend, weights=get_weights(native), dtype=model_dtype(native))
    get_backend(backend).set_train(out, getattr(native, "training", False))
    return out


def _same_hparam(a: Any, b: Any) -> bool:
    """Equal, or the same value written as a scalar and as a tuple (kernel_size=2 vs (2, 2)), or
    left to its default on one side."""
    if a is None or b is None:  # "use the default" (paddle pools: stride=None = kernel size)
        return True
    if isinstance(a, float) and isinstance(b, float):
        # dualml hands torch the values paddle holds in float32: eps as f32(eps), BatchNorm momentum as
        # 1 - f32(1 - m) (0.10000002 for 0.1), so equal in float32 either way round is the same setting
        return bool(np.float32(a) == np.float32(b) or np.float32(1.0 - a) == np.float32(1.0 - b))
    if isinstance(a, tuple) != isinstance(b, tuple):
        scalar, seq = (b, a) if isinstance(a, tuple) else (a, b)
        return all(x == scalar for x in seq)
    return a == b


def export_native(model: Module | Layer, weights: dict[str, np.ndarray], backend: str) -> dict[str, np.ndarray]:
    """Canonical weights as a native state dict (numpy) that a hand-written twin can load."""
    be = get_backend(backend)
    return be.arrays(build(model, backend, weights=weights))


def _diagnose(native: Any, args: tuple, kwargs: dict, exc: Exception) -> None:
    """After a failed forward, re-run in eval mode with shape checks on every leaf and, if a leaf
    cannot take its input, raise an error naming the layer, the shape it got and what it expects."""
    try:
        leaves = native_leaves(native)
        _, be = neutral_of(native)
    except DualmlError:
        return
    last: list[tuple[str, tuple, str]] = []

    def pre(path: str, inputs: tuple) -> None:
        first = inputs[0] if inputs else None
        if first is None or not be.is_tensor(first):
            return
        shape, dtype = tuple(first.shape), be.dtype_name(first)
        last.append((path, shape, dtype))
        problem = leaves[path]._dualml_spec.check_input(shape, dtype) if hasattr(
            leaves[path], "_dualml_spec") else None
        if problem:
            raise LayerInputError(f"layer '{path}' ({leaves[path]._dualml_spec.kind}) got input of shape "
                                  f"{list(shape)} ({dtype}); it expects {problem}")

    was_training = getattr(native, "training", False)
    be.set_train(native, False)
    try:
        with be.no_grad(), be.hooks(leaves, pre=pre):
            be.module_base.__call__(native, *args, **kwargs)
    except LayerInputError as found:
        raise found from exc
    except Exception:
        if last:
            path, shape, dtype = last[-1]
            raise LayerInputError(f"layer '{path}' failed on input of shape {list(shape)} ({dtype}): "
                                  f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
    finally:
        be.set_train(native, was_training)


def _rules_by_node(native: Any) -> list[tuple[str, list]]:
    """(path, rules) for every leaf and weight-owning composite; composites map names 1:1."""
    model, be = neutral_of(native)
    out = []
    for path, (node, _) in native_nodes(native).items():
        if isinstance(node, Layer):
            out.append((path, layer_impl(be.name, node).rules_for(node)))
        elif isinstance(node, Module) and _direct_weights(node):
            out.append((path, same(*_direct_weights(node))))
    return out


def _strip(path: str, name: str) -> str | None:
    if not path:
        return name
    return name[len(path) + 1:] if name.startswith(path + ".") else None


def _convert_by_node(native: Any, arrays: dict[str, np.ndarray], to_canon: bool) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for path, rules in _rules_by_node(native):
        names = {r.native for r in rules} if to_canon else {c for r in rules for c in r.canonical}
        sub = {rel: v for name, v in arrays.items() if (rel := _strip(path, name)) is not None and rel in names}
        converted = to_canonical(rules, sub) if to_canon else from_canonical(rules, sub)
        out.update({join(path, k): v for k, v in converted.items()})
    return out


def canonical_from_native_names(native: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Arrays keyed by full native parameter name (e.g. optimizer moments) -> canonical layout."""
    return _convert_by_node(native, arrays, to_canon=True)


def native_names_from_canonical(native: Any, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`canonical_from_native_names`: canonical arrays -> full native names."""
    return _convert_by_node(native, arrays, to_canon=False)


def param_index(native: Any) -> dict[str, tuple[str, ...]]:
    """Native parameter full name -> the canonical names it holds (torch's packed in_proj_weight
    holds q, k and v). Buffers are not parameters and are left out."""
    _, be = neutral_of(native)
    params = set(be.parameter_names(native))
    out: dict[str, tuple[str, ...]] = {}
    for path, rules in _rules_by_node(native):
        for r in rules:
            full = join(path, r.native)
            if full in params:
                out[full] = tuple(join(path, c) for c in r.canonical)
    return out
