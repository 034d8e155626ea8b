"""Pruning on the neutral model and its canonical weights, so both backends get the same result.

Three kinds, all pure functions of (model, canonical weights):

- **Structured filter pruning** (:func:`prune_channels`) removes conv filters *physically*: the
  conv's ``out_channels``, the BatchNorm that normalises them and the input channels of the layer
  that consumes them all shrink, so parameters and FLOPs really fall. Which filters go is chosen by
  L1 norm, L2 norm or FPGM, either by the neutral numpy code here or by the framework's own tool
  (torch.nn.utils.prune / PaddleSlim, behind the adapters' ``select_filters``); the removal itself is
  always done here, so both backends build the identical pruned architecture.
- **Unstructured magnitude pruning** (:func:`magnitude_masks`, :func:`gradual_ratio`,
  :func:`apply_masks`): zero the smallest weights; shapes stay, only sparsity changes.
- **N:M sparsity** (:func:`nm_masks`): keep the n largest of every m consecutive weights.

Which layers consume a conv's channels is found automatically from one traced forward
(:func:`dualml.compress.measure.trace`), then checked numerically (see :func:`channel_dependents`).
"""
from __future__ import annotations

import copy
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import layers as L
from ..build import check_weights
from ..errors import BackendError, ConfigError, DualmlError, did_you_mean, not_allowed
from ..layers import Layer
from ..module import Module, named_leaves
from .measure import Call, Trace, count_params, input_spec, trace

METHODS = ("l1", "l2", "fpgm")
CHAIN_HINT = "structured pruning supports chains (conv -> bn -> ... -> conv/linear)"

#: leaves that keep channel c at channel c (elementwise or spatial only) and hold no per-channel weights
_PASS = (L.ReLU, L.LeakyReLU, L.GELU, L.SiLU, L.Sigmoid, L.Tanh, L.Identity, L.Dropout, L._Pool, L._AdaptivePool)


# ----------------------------------------------------------------------------- ratios and selection
def check_ratio(ratio: Any, what: str = "prune ratio") -> float:
    """A pruning ratio must be a number strictly between 0 and 1 (0 prunes nothing, 1 everything)."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float, np.floating)) or not 0.0 < float(ratio) < 1.0:
        raise ConfigError(f"{what}={ratio!r} is not allowed; allowed: a number in (0, 1), exclusive")
    return float(ratio)


def check_method(method: str) -> str:
    if method not in METHODS:
        raise ConfigError(not_allowed("prune method", method, METHODS))
    return method


def removed_count(n: int, ratio: float) -> int:
    """Filters removed from ``n`` at ``ratio``: ``min(n - 1, round(n * ratio))``.

    This is PaddleSlim's rule (Python ``round``, half to even, and at least one filter kept), and
    torch.nn.utils.prune's ``round(amount * n)`` apart from the cap; using it everywhere is what
    makes the three selections remove the same *number* of filters. So 50% of 16 removes 8 and
    50% of 5 removes 2 (keeps 3).
    """
    return max(0, min(n - 1, round(n * ratio)))


def filter_scores(weight: np.ndarray, method: str) -> np.ndarray:
    """Importance of each filter (rows along axis 0), in float64; the lowest scores are removed.

    ``l1``: sum |w|; ``l2``: sqrt(sum w^2) (torch's ``ln_structured``; PaddleSlim's L1 uses the mean,
    the same order); ``fpgm``: the sum of Euclidean distances to all other filters. FPGM (He et al.
    2019) removes filters nearest the geometric median: those are the ones the others can stand in
    for, and a filter with the smallest distance sum is the usual approximation (PaddleSlim's and
    torch.ao's FPGM pruners do the same).
    """
    check_method(method)
    w = np.asarray(weight, dtype=np.float64).reshape(weight.shape[0], -1)
    if method == "l1":
        return np.abs(w).sum(axis=1)
    if method == "l2":
        return np.sqrt((w * w).sum(axis=1))
    return np.array([np.sqrt(((w - w[i]) ** 2).sum(axis=1)).sum() for i in range(w.shape[0])])


def select_filters(weight: np.ndarray, ratio: float, method: str = "l1") -> np.ndarray:
    """Indices (ascending) of the filters of ``weight`` [out, ...] that survive pruning by ``ratio``.

    The :func:`removed_count` lowest-scoring filters go; ties are broken by a stable sort, so among
    equal scores the lower index is removed first. The framework tools break exact ties (duplicate
    or all-zero filters) their own way (torch's ``topk``, PaddleSlim's unstable ``argsort``): they
    then remove filters of the same scores but maybe other indices (parity_tests/test_pruning_parity.py).
    """
    ratio = check_ratio(ratio)
    scores = filter_scores(weight, method)
    gone = np.argsort(scores, kind="stable")[:removed_count(len(scores), ratio)]
    return np.setdiff1d(np.arange(len(scores)), gone)


@dataclass(frozen=True)
class Selection:
    """What a backend's pruning tool chose for one conv: removed filter indices, the tool's name,
    and the layers the tool itself found coupled to it (PaddleSlim's pruning group; empty if the tool
    does no dependency analysis)."""

    removed: tuple[int, ...]
    tool: str
    group: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- who consumes the channels
@dataclass(frozen=True)
class Dependents:
    """The layers that follow a conv's output channels. ``channelwise``: (path, multiplicity) of
    per-channel layers (BatchNorm, PReLU) whose features are sliced along; ``consumers``: the convs
    and Linears whose input channels are removed. Multiplicity m > 1 means channel c arrives as
    features c*m .. c*m+m-1 (a Flatten of a spatial map)."""

    layer: str
    channelwise: tuple[tuple[str, int], ...]
    consumers: tuple[tuple[str, int], ...]

    def layers(self) -> list[str]:
        return [self.layer, *(p for p, _ in self.channelwise), *(p for p, _ in self.consumers)]


class _Refused(Exception):
    pass


def _is_conv(spec: Layer) -> bool:
    return isinstance(spec, L._ConvNd)


def _flatten_mult(spec: L.Flatten, shape: tuple[int, ...], mult: int, at: str) -> int:
    nd = len(shape)
    start, end = spec.start_dim % nd, spec.end_dim % nd
    if start == 0:
        raise _Refused(f"is flattened with the batch dimension at '{at}'; {CHAIN_HINT}")
    return mult * math.prod(shape[2:end + 1]) if start == 1 else mult


def _follow(tr: Trace, start: Call, uses: Counter) -> Dependents:
    """Walk the channels of ``start``'s output through the traced calls (see module docstring)."""
    spec = start.spec
    if spec.groups != 1:
        raise _Refused(f"is a grouped conv (groups={spec.groups}); {CHAIN_HINT}")
    chanwise: dict[str, int] = {}
    consumers: dict[str, int] = {}
    todo = [(start, 1)]
    while todo:
        call, mult = todo.pop()
        if call.is_model_output:
            raise _Refused(f"reaches the model output through '{call.path}'; its channels are outputs")
        if not call.consumers:
            raise _Refused(f"feeds a residual add or another self.F op after '{call.path}'; {CHAIN_HINT}")
        for ci in call.consumers:
            c = tr.calls[ci]
            kind = f"'{c.path}' ({c.spec.kind})"
            if c.sources.index(call.index) != 0:
                raise _Refused(f"feeds {kind} as a second input; {CHAIN_HINT}")
            if uses[c.path] > 1 and c.spec.params():
                raise _Refused(f"feeds {kind}, which forward calls {uses[c.path]} times; {CHAIN_HINT}")
            if isinstance(c.spec, _PASS) or (isinstance(c.spec, L.PReLU) and c.spec.num_parameters == 1):
                todo.append((c, mult))
            elif isinstance(c.spec, (L._BatchNorm, L.PReLU)):
                chanwise[c.path] = mult
                todo.append((c, mult))
            elif isinstance(c.spec, L.Flatten):
                todo.append((c, _flatten_mult(c.spec, c.inputs[0], mult, c.path)))
            elif _is_conv(c.spec) and c.spec.groups == 1 and mult == 1:
                consumers[c.path] = 1
            elif isinstance(c.spec, L.Linear) and len(c.inputs[0]) == 2:
                consumers[c.path] = mult
            else:
                raise _Refused(f"feeds {kind}, whose use of the channels cannot be followed; {CHAIN_HINT}")
    return Dependents(start.path, tuple(chanwise.items()), tuple(consumers.items()))


def _outputs(be: Any, out: Any) -> np.ndarray:
    from .measure import _tensors
    return np.concatenate([be.numpy(t).astype(np.float64).ravel() for t in _tensors(out, be)])


def _leaks(tr: Trace, deps: Dependents, weights: dict[str, np.ndarray]) -> bool:
    """True when the conv's channels reach the output other than through ``deps.consumers``.

    The hook trace sees leaf-to-leaf edges only: a tensor used by a consumer *and* by a ``self.F``
    op (resnet's stem output goes to layer1.0.conv1 and to the residual add) looks like a clean
    chain. So: zero the consumers' weights, then replace the conv's output with noise; if the model
    output moves, some other path carries the channels.
    """
    from ..backend import get_backend
    from ..build import native_leaves, set_weights

    be = get_backend(tr.backend)
    net = tr.net
    names = [f"{path}.weight" for path, _ in deps.consumers]
    set_weights(net, {n: np.zeros_like(weights[n]) for n in names}, strict=False)  # only these change
    noise: list[Any] = []

    def replace(path: str, output: Any) -> Any:
        noise.append(be.tensor(np.random.default_rng(1).standard_normal(tuple(output.shape)).astype("float32")))
        return noise[-1]

    try:
        with be.no_grad():
            base = _outputs(be, net(be.tensor(tr.sample)))
            with be.hooks({deps.layer: native_leaves(net)[deps.layer]}, post=replace):
                moved = _outputs(be, net(be.tensor(tr.sample)))
    finally:
        set_weights(net, {n: weights[n] for n in names}, strict=False)
    return not np.allclose(base, moved, rtol=1e-6, atol=1e-6 * (1.0 + np.abs(base).max()))


def channel_dependents(model: Module, weights: dict[str, np.ndarray] | None = None,
                       input_shape: Sequence[int] | None = None, backend: str | None = None,
                       layers: Iterable[str] | None = None) -> tuple[dict[str, Dependents], dict[str, str]]:
    """For every conv in ``layers`` (default: all convs): the layers that take its output channels,
    or why they cannot be followed. Returns (followable, refused {layer: reason}).

    One eval forward on ``backend`` with hooks records, per leaf call, which call produced its
    input (tensor identity). From the conv, channels pass through activations, pools and dropout,
    slice BatchNorm/PReLU along, map c -> features c*m.. at a Flatten, and end at a conv
    (groups=1) or a Linear taking them on its last dimension. A chain that ends anywhere else (an
    output no leaf takes, i.e. a residual add or a ``self.F`` op; the model output; attention,
    LayerNorm, ...) is refused; then each followable conv is probed numerically (:func:`_leaks`) for
    uses the hooks cannot see.
    """
    tr = trace(model, input_shape, backend, weights=weights)
    weights = weights if weights is not None else _net_weights(tr)
    uses = Counter(c.path for c in tr.calls)
    convs = [p for p, s in named_leaves(model) if _is_conv(s)]
    wanted = convs if layers is None else list(layers)
    ok: dict[str, Dependents] = {}
    refused: dict[str, str] = {}
    for path in wanted:
        calls = tr.calls_of(path)
        try:
            if not calls:
                raise _Refused("is never called by forward")
            if len(calls) > 1:
                raise _Refused(f"is called {len(calls)} times by forward; {CHAIN_HINT}")
            deps = _follow(tr, calls[0], uses)
            if _leaks(tr, deps, weights):
                raise _Refused("also reaches the output outside its consumers "
                               f"({', '.join(p for p, _ in deps.consumers)}), e.g. through a residual add "
                               f"(found by perturbing its output); {CHAIN_HINT}")
            ok[path] = deps
        except _Refused as why:
            refused[path] = str(why)
    return ok, refused


def _net_weights(tr: Trace) -> dict[str, np.ndarray]:
    from ..build import get_weights
    return get_weights(tr.net)


# ----------------------------------------------------------------------------- structured pruning
@dataclass
class PruneResult:
    """A pruned copy of the model and its canonical weights, with what was removed and why."""

    model: Module
    weights: dict[str, np.ndarray]
    removed: dict[str, list[int]]                 # conv path -> sorted removed filter indices
    dependents: dict[str, Dependents]
    selected_by: dict[str, str]                   # conv path -> the tool that chose the filters
    params_before: int
    params_after: int
    method: str
    ratios: dict[str, float]
    backend: str | None
    skipped: dict[str, str] = field(default_factory=dict)  # default mode: convs left alone, and why

    def summary(self) -> dict[str, Any]:
        """JSON-ready facts for a report."""
        return {"method": self.method, "backend": self.backend, "ratios": self.ratios,
                "params_before": self.params_before, "params_after": self.params_after,
                "removed": self.removed, "selected_by": self.selected_by, "skipped": self.skipped,
                "dependents": {k: d.layers()[1:] for k, d in self.dependents.items()}}


def _expand(idx: np.ndarray, mult: int) -> np.ndarray:
    return (np.asarray(idx)[:, None] * mult + np.arange(mult)[None, :]).ravel()


def _take(weights: dict[str, np.ndarray], name: str, idx: np.ndarray, axis: int) -> None:
    if name in weights:
        weights[name] = np.ascontiguousarray(np.take(weights[name], idx, axis=axis))


def remove_channels(model: Module, weights: dict[str, np.ndarray], kept: dict[str, np.ndarray],
                    dependents: dict[str, Dependents]) -> tuple[Module, dict[str, np.ndarray]]:
    """A deep copy of ``model`` with each conv in ``kept`` reduced to those filters, its per-channel
    layers and its consumers' inputs sliced to match, and the canonical weights cut the same way."""
    new = copy.deepcopy(model)
    leaves = dict(named_leaves(new))
    out = dict(weights)
    for path, keep in kept.items():
        keep = np.asarray(keep, dtype=np.int64)
        deps = dependents[path]
        conv = leaves[path]
        conv.out_channels = len(keep)
        _take(out, f"{path}.weight", keep, 0)
        _take(out, f"{path}.bias", keep, 0)
        for cw, mult in deps.channelwise:
            idx, spec = _expand(keep, mult), leaves[cw]
            if isinstance(spec, L._BatchNorm):
                spec.num_features = len(idx)
            else:
                spec.num_parameters = len(idx)
            for name in spec.params():
                _take(out, f"{cw}.{name}", idx, 0)
        for cons, mult in deps.consumers:
            idx, spec = _expand(keep, mult), leaves[cons]
            if isinstance(spec, L.Linear):
                spec.in_features = len(idx)
            else:
                spec.in_channels = len(idx)
            _take(out, f"{cons}.weight", idx, 1)
    rep = check_weights(new, out)
    if not rep.ok:  # a slicing rule that does not match a layer's layout: a bug here, say where
        raise DualmlError(f"pruned weights do not fit the pruned model: {rep.problems()}")
    return new, out


def _ratios(ratio: float | dict[str, float], layers: list[str]) -> dict[str, float]:
    if isinstance(ratio, dict):
        unknown = [k for k in ratio if k not in layers]
        if unknown:
            raise ConfigError(not_allowed("prune ratio layer", unknown[0], layers))
        return {k: check_ratio(v, f"prune ratio for '{k}'") for k, v in ratio.items()}
    r = check_ratio(ratio)
    return {k: r for k in layers}


def _select(model: Module, weights: dict[str, np.ndarray], ratios: dict[str, float], method: str,
            backend: str | None, spec: Any) -> dict[str, Selection]:
    if backend is None:
        out = {}
        for path, r in ratios.items():
            w = weights[f"{path}.weight"]
            keep = select_filters(w, r, method)
            out[path] = Selection(tuple(int(i) for i in np.setdiff1d(np.arange(w.shape[0]), keep)),
                                  f"dualml numpy {method}")
        return out
    from ..backend import get_backend
    from ..build import build

    be = get_backend(backend)
    chosen = be.select_filters(build(model, be.name, weights=weights), ratios, method, spec)
    for path, r in ratios.items():
        n = weights[f"{path}.weight"].shape[0]
        got = chosen.get(path)
        if got is None or len(got.removed) != removed_count(n, r):
            raise BackendError(f"backend={be.name} selection for '{path}' removed "
                               f"{'nothing' if got is None else len(got.removed)} filters, expected "
                               f"{removed_count(n, r)} of {n}")
    return chosen


def prune_channels(model: Module, weights: dict[str, np.ndarray], ratio: float | dict[str, float],
                   method: str = "l1", layers: Iterable[str] | None = None, backend: str | None = None,
                   input_shape: Sequence[int] | None = None, verify: bool = True,
                   trace_backend: str | None = None) -> PruneResult:
    """Structured filter pruning that physically removes channels; returns a new model and weights.

    ``ratio``: fraction of filters removed per layer, in (0, 1), or {layer: ratio}; the count is
    :func:`removed_count` (50% of 16 filters removes 8). ``method``: l1 | l2 | fpgm. ``layers``:
    conv paths to prune; default every conv whose channels can be followed (for ``cnn`` conv1 and
    conv2, for ``resnet18`` the first conv of every block; the others are listed in ``skipped``).
    A named layer that cannot be pruned is an error saying why. ``backend``: whose tool selects the
    filters (``torch``: torch.nn.utils.prune / torch.ao FPGM; ``paddle``: PaddleSlim); None: the
    numpy selection here. ``trace_backend``: where the dependency trace and the verification forward
    run (default: ``backend``, else :func:`dualml.backend.default_backend`; a pipeline passes its configured
    backend, so a paddle-only install never needs torch). Every layer is scored on
    its original weights (as PaddleSlim's prune_vars does), independently of the others.
    ``verify``: check that the pruned model computes what the original computes with the removed
    channels' consumer weights zeroed (one forward each).
    """
    method = check_method(method)
    if isinstance(ratio, dict):
        for k, v in ratio.items():
            check_ratio(v, f"prune ratio for '{k}'")
    else:
        check_ratio(ratio)
    convs = [p for p, s in named_leaves(model) if _is_conv(s)]
    all_leaves = dict(named_leaves(model))
    if layers is None and isinstance(ratio, dict):
        layers = list(ratio)
    if layers is not None:
        layers = list(layers)
        for name in layers:
            if name not in convs:
                what = f"is {all_leaves[name].kind}, not a conv" if name in all_leaves else "does not exist"
                raise ConfigError(f"prune layer '{name}' {what}; allowed: {', '.join(convs)}"
                                  f"{did_you_mean(name, convs)}")
    from ..backend import default_backend

    trace_backend = trace_backend or backend or default_backend()
    spec = input_spec(model, input_shape)
    deps, refused = channel_dependents(model, weights, spec.shape, trace_backend, layers)
    if layers is not None and refused:
        name = next(iter(refused))
        raise ConfigError(f"layer '{name}' {refused[name]}")
    if not deps:
        raise ConfigError(f"no conv of {type(model).__name__} can be pruned: "
                          + "; ".join(f"'{k}' {v}" for k, v in refused.items()))
    ratios = _ratios(ratio, list(deps))
    chosen = _select(model, weights, ratios, method, backend, spec)
    kept = {p: np.setdiff1d(np.arange(weights[f"{p}.weight"].shape[0]), chosen[p].removed) for p in ratios}
    new_model, new_weights = remove_channels(model, weights, kept, deps)
    if verify:
        _verify(model, weights, new_model, new_weights, kept, deps, spec, trace_backend)
    return PruneResult(new_model, new_weights, {p: sorted(int(i) for i in chosen[p].removed) for p in ratios},
                       {p: deps[p] for p in ratios}, {p: chosen[p].tool for p in ratios}, count_params(model),
                       count_params(new_model), method, ratios, backend, refused)


def _verify(model: Module, weights: dict[str, np.ndarray], new_model: Module, new_weights: dict[str, np.ndarray],
            kept: dict[str, np.ndarray], deps: dict[str, Dependents], spec: Any, backend: str) -> None:
    """Original model with the removed channels' consumer columns zeroed == pruned model."""
    from ..backend import get_backend
    from ..build import build

    be = get_backend(backend)
    masked = dict(weights)
    for path, keep in kept.items():
        n = weights[f"{path}.weight"].shape[0]
        gone = np.setdiff1d(np.arange(n), keep)
        for cons, mult in deps[path].consumers:
            w = masked[f"{cons}.weight"].copy()
            w[:, _expand(gone, mult)] = 0.0
            masked[f"{cons}.weight"] = w
    x = spec.sample(np.random.default_rng(2))
    with be.no_grad():
        a = _outputs(be, build(model, be.name, weights=masked)(be.tensor(x)))
        try:
            b = _outputs(be, build(new_model, be.name, weights=new_weights)(be.tensor(x)))
        except DualmlError as exc:
            raise DualmlError(f"the pruned model does not run: {exc}") from exc
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-5 * (1.0 + np.abs(a).max())):
        raise DualmlError("the pruned model differs from the original with those channels zeroed "
                          f"(max diff {np.abs(a - b).max() if a.shape == b.shape else 'shape'}); "
                          "a channel use the trace missed")


# ----------------------------------------------------------------------------- unstructured and N:M
def prunable_weights(weights: dict[str, np.ndarray], model: Module | None = None) -> list[str]:
    """Weight matrices unstructured and N:M pruning act on: Conv1d/Conv2d and Linear weights,
    including the Linear-layout projections inside MultiheadAttention and TransformerEncoderLayer.
    Biases and normalisation weights are never pruned (few values, large effect).

    Without ``model`` the names decide: every array whose name ends in ``weight`` with >= 2 dims
    (that also takes Embedding tables; pass ``model`` to be exact)."""
    if model is None:
        return [k for k, v in weights.items() if k.split(".")[-1] == "weight" and np.ndim(v) >= 2]
    out = []
    for path, spec in named_leaves(model):
        if isinstance(spec, (L._ConvNd, L.Linear)):
            out.append(f"{path}.weight" if path else "weight")
        elif isinstance(spec, (L.MultiheadAttention, L.TransformerEncoderLayer)):
            out += [f"{path}.{k}" if path else k for k, s in spec.params().items()
                    if k.endswith("weight") and len(s.shape) == 2]
    return [k for k in out if k in weights]


def _resolve(weights: dict[str, np.ndarray], layers: Iterable[str] | None, model: Module | None) -> list[str]:
    allowed = prunable_weights(weights, model)
    if layers is None:
        return allowed
    picked: list[str] = []
    for item in layers:
        hits = [n for n in allowed if n == item or n.startswith(f"{item}.")]
        if not hits:
            raise ConfigError(not_allowed("prune layer", item, allowed))
        picked += [h for h in hits if h not in picked]
    return picked


def magnitude_masks(weights: dict[str, np.ndarray], ratio: float, layers: Iterable[str] | None = None, *,
                    model: Module | None = None, scope: str = "layer") -> dict[str, np.ndarray]:
    """Boolean keep-masks zeroing the ``ratio`` smallest |w| of each prunable weight.

    ``scope="layer"`` (default): every tensor loses exactly ``round(ratio * size)`` entries, so no
    small layer is emptied by a global threshold set by large ones (a first conv with 144 weights
    would otherwise lose most of them). ``scope="global"``: one ranking over all selected tensors,
    ``round(ratio * total)`` entries. Ties (equal |w|, e.g. existing zeros) are broken by a stable
    sort: the lower flat index is pruned first. ``layers``: weight names or layer paths.
    """
    ratio = check_ratio(ratio)
    if scope not in ("layer", "global"):
        raise ConfigError(not_allowed("prune scope", scope, ("global", "layer")))
    names = _resolve(weights, layers, model)
    masks = {n: np.ones(np.shape(weights[n]), dtype=bool) for n in names}
    if scope == "layer":
        for n in names:
            mag = np.abs(np.asarray(weights[n], dtype=np.float64)).ravel()
            masks[n].ravel()[np.argsort(mag, kind="stable")[:round(ratio * mag.size)]] = False
        return masks
    mags = np.concatenate([np.abs(np.asarray(weights[n], dtype=np.float64)).ravel() for n in names])
    flat = np.ones(mags.size, dtype=bool)
    flat[np.argsort(mags, kind="stable")[:round(ratio * mags.size)]] = False
    offset = 0
    for n in names:
        size = masks[n].size
        masks[n] = flat[offset:offset + size].reshape(masks[n].shape)
        offset += size
    return masks


def gradual_ratio(step: int, total_steps: int, final_ratio: float, initial_ratio: float = 0.0, start: int = 0,
                  every: int = 1) -> float:
    """The sparsity at ``step`` of Zhu & Gupta's schedule (2017, "To prune, or not to prune"):
    ``s_t = s_f + (s_i - s_f) * (1 - (t - start) / total_steps) ** 3`` for start <= t <= start +
    total_steps, ``s_i`` before and ``s_f`` after. It prunes fast while many redundant weights remain
    and slowly near the end, which recovers accuracy better than one-shot pruning. ``every``: the
    ratio only changes every ``every`` steps (the paper's pruning frequency)."""
    final_ratio = check_ratio(final_ratio, "final prune ratio")
    if isinstance(initial_ratio, bool) or not 0.0 <= float(initial_ratio) <= final_ratio:
        raise ConfigError(f"initial prune ratio={initial_ratio!r} is not allowed; allowed: 0 <= initial <= "
                          f"final ({final_ratio})")
    for what, value, low in (("total_steps", total_steps, 1), ("start", start, 0), ("every", every, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ConfigError(f"prune schedule {what}={value!r} is not allowed; allowed: an integer >= {low}")
    if step <= start:
        return float(initial_ratio)
    if step >= start + total_steps:
        return final_ratio
    t = (step - start) // every * every
    return float(final_ratio + (initial_ratio - final_ratio) * (1.0 - t / total_steps) ** 3)


def apply_masks(weights: dict[str, np.ndarray], masks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """New weights with every masked tensor multiplied by its mask (others are the same objects)."""
    out = dict(weights)
    for name, mask in masks.items():
        if name not in weights:
            raise ConfigError(not_allowed("mask for weight", name, weights))
        if np.shape(mask) != np.shape(weights[name]):
            raise ConfigError(f"mask for '{name}' has shape {list(np.shape(mask))}, the weight "
                              f"{list(np.shape(weights[name]))}")
        w = np.asarray(weights[name])
        out[name] = (w * np.asarray(mask, dtype=w.dtype)).astype(w.dtype)
    return out


def nm_masks(weights: dict[str, np.ndarray], n: int = 2, m: int = 4, layers: Iterable[str] | None = None, *,
             model: Module | None = None) -> dict[str, np.ndarray]:
    """N:M keep-masks: in every group of ``m`` consecutive weights along the input dimension, the
    ``n`` largest |w| stay (2:4 is what sparse tensor cores run at full speed).

    Groups run along each output row: Linear [out, in] along ``in``; Conv [out, in, kh, kw] along
    the flattened ``in*kh*kw`` of each filter (canonical order; NVIDIA's ASP permutes conv weights
    to group along input channels instead). With ``layers=None`` every prunable weight whose row
    length divides by ``m`` is masked and the others are left out (cnn's conv1 has rows of 9);
    a named layer whose rows do not divide is an error. Ties keep the lower index.
    """
    for what, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ConfigError(f"N:M sparsity {what}={value!r} is not allowed; allowed: a positive integer")
    if n >= m:
        raise ConfigError(f"N:M sparsity n={n} is not allowed with m={m}; allowed: 1 <= n < m (e.g. 2:4)")
    names = _resolve(weights, layers, model)
    masks = {}
    for name in names:
        w = np.asarray(weights[name])
        row = w.size // w.shape[0]
        if row % m:
            if layers is None:
                continue
            raise ConfigError(f"N:M sparsity {n}:{m}: layer '{name}' has rows of {row} weights (shape "
                              f"{list(w.shape)}), not divisible by m={m}; leave it out of layers")
        groups = np.abs(w.astype(np.float64)).reshape(w.shape[0], row // m, m)
        order = np.argsort(-groups, axis=-1, kind="stable")
        keep = np.zeros(groups.shape, dtype=bool)
        np.put_along_axis(keep, order[..., :n], True, axis=-1)
        masks[name] = keep.reshape(w.shape)
    return masks
