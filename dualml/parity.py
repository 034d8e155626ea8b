"""The parity harness: the same canonical weights and inputs on two backends, compared on three levels.

1. parameter layout: canonical names, shapes, dtypes identical; canonical -> native -> canonical
   bit-exact on each side, and model conversion exact in both directions;
2. tensor layout: every output's shape, dtype and memory order identical;
3. values: forward (fp32) within atol/rtol, input and parameter gradients within the gradient
   tolerance, and in train mode the updated state (BatchNorm running statistics) as well.

On a value failure the harness re-runs both models with hooks on every leaf and names the first
layer (in execution order) whose outputs diverge. Cases come from every registered layer's
``examples()`` (so registered custom layers are picked up), every op in ``dualml.ops`` and the zoo.
"""
from __future__ import annotations

import platform
import time
import traceback
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .attention.cases import attention_cases
from .backend import get_backend, registered_layers
from .build import build, convert, get_grads, get_weights, model_dtype, native_leaves
from .cpu import describe_cpu
from .layers import Dropout, InputSpec, Layer, MultiheadAttention, TransformerEncoderLayer
from .module import Module, init_weights, manifest, named_leaves
from .op_cases import op_models
from .version import __version__
from .zoo import ZOO, create_model


@dataclass(frozen=True)
class Tolerance:
    atol: float = 1e-5
    rtol: float = 1e-5
    grad_atol: float = 1e-4
    grad_rtol: float = 1e-4

    @classmethod
    def float64(cls, rtol: float = 1e-10) -> Tolerance:
        """The reference criterion: in float64 both backends must compute the same function, so
        ``rtol`` (1e-10, a million float64 ulps) for forward and gradients, and an absolute floor a
        hundred times smaller for values that cancel to about zero."""
        return cls(rtol / 100, rtol, rtol / 100, rtol)


#: a float32-held constant perturbs each affected value by at most one float32 rounding (2^-24
#: relative); twice that, of the tensor's largest magnitude, bounds it after the float64 arithmetic
FLOAT32_CONSTANT_BOUND = 2.0 ** -23


@dataclass
class Case:
    name: str
    group: str
    model: Module | Layer
    inputs: list[InputSpec]
    modes: tuple[str, ...] = ("eval", "train")
    kwargs: dict[str, InputSpec] = field(default_factory=dict)


@dataclass
class CaseResult:
    name: str
    group: str
    mode: str
    passed: bool = False
    param_layout: bool = False
    roundtrip: bool = False
    tensor_layout: bool = False
    outputs: list[str] = field(default_factory=list)
    forward_max_abs: float = float("nan")
    forward_max_rel: float = float("nan")
    grad_max_abs: float = float("nan")
    state_max_abs: float = 0.0
    first_divergence: str | None = None
    message: str = ""
    seconds: float = 0.0
    dtype: str = "float32"
    #: float32-held constants of the frameworks that apply to this case (float64 runs), with their size
    float32_constants: list[str] = field(default_factory=list)
    #: float32 gradient outliers explained by a kink (ReLU input / max-pool near-tie within rounding),
    #: accepted only because the same case agrees in float64, the authority
    kinks: list[str] = field(default_factory=list)


class MaskedAttention(Module):
    """Attention with both mask kinds, to check the boolean/float mask conventions agree."""

    def __init__(self, causal: bool) -> None:
        super().__init__()
        self.causal = causal
        self.attn = MultiheadAttention(8, 2)

    def forward(self, x, key_padding):
        F = self.F
        mask = None
        if self.causal:
            i = F.arange(F.shape(x)[1])
            mask = F.unsqueeze(i, 0) > F.unsqueeze(i, 1)  # True above the diagonal: may not attend
        return self.attn(x, x, x, attn_mask=mask, key_padding_mask=None if self.causal else key_padding)


class MaskedEncoder(Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = TransformerEncoderLayer(8, 2, 16, dropout=0.0)

    def forward(self, x, key_padding):
        return self.enc(x, src_key_padding_mask=key_padding)


#: the forecaster at a size the suite runs in well under a second (the full graph: 2 stages, both kinds)
TINY_FORECASTER = {"nodes": 5, "embed_dim": 8, "num_heads": 2, "temporal_depth_1": 1, "spatial_depth_1": 1,
                   "temporal_depth_2": 1, "spatial_depth_2": 1}


def checked_model(name: str) -> Module:
    """The zoo model ``name`` as the parity and ONNX checks build it: the defaults, except the forecaster
    at :data:`TINY_FORECASTER` (its full size is 207 sensors; the graph checked is the same)."""
    return create_model(name, **(TINY_FORECASTER if name == "forecaster" else {}))


def _padding_mask() -> InputSpec:
    # the last two of six keys padded at most: a row is never fully masked (which is NaN in both)
    return InputSpec((2, 6), "bool", high=0.0)


def default_cases(zoo: bool = True, backends: Iterable[str] = ("torch", "paddle")) -> list[Case]:
    """Every registered layer's examples, every op, mask conventions and (optionally) the zoo."""
    out: list[Case] = []
    for name in backends:
        get_backend(name)  # importing an adapter registers its layers
    for klass in registered_layers():
        for label, spec, inputs in klass.examples():
            modes = ("eval",) if isinstance(spec, Dropout) else ("eval", "train")
            out.append(Case(f"layer:{label}", "layer", spec, inputs, modes))
    kp = InputSpec((2, 6), "bool", low=0, high=0.35)
    out += [Case("layer:MultiheadAttention-causal-mask", "layer", MaskedAttention(True), [InputSpec((2, 6, 8)), kp]),
            Case("layer:MultiheadAttention-key-padding", "layer", MaskedAttention(False),
                 [InputSpec((2, 6, 8)), kp]),
            Case("layer:TransformerEncoderLayer-key-padding", "layer", MaskedEncoder(), [InputSpec((2, 6, 8)), kp])]
    out += [Case(name, "op", m, inputs, ("eval",)) for name, m, inputs in op_models()]
    # composites of neutral ops have no train-mode behaviour of their own (no dropout in the cases):
    # eval only, except the encoder model, which checks train mode through every piece once
    out += [Case(name, "attention", m, inputs, ("eval", "train") if name.startswith("model:") else ("eval",))
            for name, m, inputs in attention_cases()]
    if zoo:
        for name, factory in ZOO.items():
            model = factory(image_size=64) if name == "resnet18" else checked_model(name)
            # resnet18 in train mode runs in float64: through 20 train-mode BatchNorms at batch 2 the fp32
            # gradients differ by ~1e-5 of their scale from summation order alone (measured, seeds 0-2: up
            # to 1.2e-3 abs on |grad| 92, beyond the elementwise 1e-4), and a pre-activation within ~1e-6 of
            # 0 can flip a ReLU; float64 checks the same function with no such noise
            modes = ("eval", "train-float64") if name == "resnet18" else ("eval", "train")
            out.append(Case(f"model:{name}", "model", model, model.input_spec(2), modes))
    return out


def random_weights(model: Module | Layer, seed: int) -> dict[str, np.ndarray]:
    """Initial weights plus seeded noise scaled to each array's own spread (0.2 for constants), so
    no mapping bug hides behind ones/zeros (e.g. a swapped BatchNorm mean and variance) while deep
    models keep activations of order one; variances stay positive."""
    rng = np.random.default_rng(seed + 1)
    specs = manifest(model)
    out = {}
    for name, w in init_weights(model, seed).items():
        if not np.issubdtype(w.dtype, np.floating):
            out[name] = w
            continue
        scale = float(w.std()) * 0.5 if w.size > 1 and w.std() > 0 else 0.2
        noise = rng.uniform(-scale, scale, size=w.shape).astype(w.dtype)
        out[name] = (np.abs(w + noise) + 0.1).astype(w.dtype) if specs[name].positive else w + noise
    return out


def _flatten(out: Any) -> list[Any]:
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _flatten(o)]
    return [] if out is None else [out]


def _diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    if a.size == 0:
        return 0.0, 0.0
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(b64)
    d = np.where(both_nan, 0.0, np.abs(a64 - b64))
    d = np.where(np.isnan(d), np.inf, d)
    rel = d / np.maximum(np.abs(b64), 1e-12)
    return float(d.max()), float(np.where(both_nan, 0.0, rel).max())


def _close(a: np.ndarray, b: np.ndarray, atol: float, rtol: float) -> bool:
    if a.shape != b.shape:
        return False
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return bool(np.all((np.abs(a64 - b64) <= atol + rtol * np.abs(b64)) | (np.isnan(a64) & np.isnan(b64))))


class _Side:
    """One backend's run of a case: outputs, their layout, gradients and state after the forward."""

    def __init__(self, backend: str, model: Module | Layer, weights: dict[str, np.ndarray], train: bool,
                 dtype: str = "float32") -> None:
        self.be = get_backend(backend)
        # built on the host, then moved to the adapter's current device (``parity.device``; cpu by default)
        self.net = self.be.to_device(build(model, backend, weights=weights, dtype=dtype))
        self.be.set_train(self.net, train)
        self.dtype = dtype

    def run(self, inputs: list[np.ndarray], grad_seed: int) -> None:
        be = self.be
        inputs = [x.astype(self.dtype) if x.dtype == np.float32 else x for x in inputs]
        self.tensors = [be.tensor(x, requires_grad=np.issubdtype(x.dtype, np.floating)) for x in inputs]
        be.seed(0)
        outs = _flatten(self.net(*self.tensors))
        self.layout = [(tuple(int(s) for s in o.shape), be.dtype_name(o), be.memory_order(o)) for o in outs]
        self.values = [be.numpy(o).copy() for o in outs]
        rng = np.random.default_rng(grad_seed)
        diff_outs = [(o, np.asarray(rng.standard_normal(size=v.shape), dtype=v.dtype))
                     for o, v in zip(outs, self.values) if np.issubdtype(v.dtype, np.floating)]
        trainable = any(spec.trainable for spec in manifest(self.net._dualml_model).values())
        needs = [o for o, _ in diff_outs if not getattr(o, "stop_gradient", False) and
                 getattr(o, "requires_grad", True)]
        if diff_outs and (trainable or any(np.issubdtype(x.dtype, np.floating) for x in inputs)) and needs:
            be.backward([o for o, _ in diff_outs], [g for _, g in diff_outs])
        self.input_grads = [be.input_grad(t) if np.issubdtype(x.dtype, np.floating) else None
                            for t, x in zip(self.tensors, inputs)]
        self.param_grads = get_grads(self.net)
        self.state = get_weights(self.net)

    def leaf_outputs(self, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
        captured: dict[str, np.ndarray] = {}

        def post(path: str, out: Any) -> None:
            first = _flatten(out)
            if first and path not in captured:
                captured[path] = self.be.numpy(first[0]).copy()
        leaves = native_leaves(self.net)
        self.be.seed(0)
        with self.be.no_grad(), self.be.hooks(leaves, post=post):
            self.net(*[self.be.tensor(x.astype(self.dtype) if x.dtype == np.float32 else x) for x in inputs])
        return captured


def first_divergence(a: _Side, b: _Side, inputs: list[np.ndarray], tol: Tolerance) -> str | None:
    """The first leaf, in the execution order of side ``a``, whose output differs beyond tolerance."""
    ours, theirs = a.leaf_outputs(inputs), b.leaf_outputs(inputs)
    for path, value in ours.items():
        other = theirs.get(path)
        if other is None or not _close(value, other, tol.atol, tol.rtol):
            mx = _diff(value, other)[0] if other is not None and other.shape == value.shape else float("nan")
            shapes = "" if other is None or other.shape == value.shape else f" shapes {value.shape} vs {other.shape}"
            return f"{path or '<root>'} (max abs diff {mx:.3g}{shapes})"
    return None


def check_param_layout(model: Module | Layer, weights: dict[str, np.ndarray], a: Any, b: Any) -> list[str]:
    """Level 1: names/shapes/dtypes and bit-exact values on both sides and through conversion."""
    problems = []
    expected = manifest(model)
    dtype = model_dtype(a)
    for label, net in (("a", a), ("b", b), ("a->b", convert(a, b._dualml_backend)),
                       ("b->a", convert(b, a._dualml_backend))):
        got = get_weights(net)
        if list(got) != list(expected):
            problems.append(f"{label}: names differ from the canonical manifest")
            continue
        for name, spec in expected.items():
            want = dtype if spec.dtype == "float32" else spec.dtype
            if got[name].shape != spec.shape or str(got[name].dtype) != want:
                problems.append(f"{label}: {name} is {got[name].dtype}{list(got[name].shape)}, canonical "
                                f"{want}{list(spec.shape)}")
            elif not np.array_equal(got[name], weights[name]):
                problems.append(f"{label}: {name} changed in the round trip")
    return problems


def float32_constants(model: Module | Layer, backends: Iterable[str]) -> list[str]:
    """What each backend keeps in float32 inside the layers of ``model`` (``Backend.float32_constants``)."""
    kinds = {type(leaf) for _, leaf in named_leaves(model)}
    out = []
    for name in backends:
        table = get_backend(name).float32_constants
        out += [f"{name} {k.__name__}: {table[k]}" for k in sorted(kinds & set(table), key=lambda k: k.__name__)]
    return out


def _grad_atol(tol: Tolerance, ref: np.ndarray | None, named: list[str]) -> float:
    """The gradient's absolute floor; where a float32-held constant applies (``named``), the bound
    that one float32 rounding implies, scaled by the gradient's largest magnitude."""
    if not named or ref is None or not ref.size:
        return tol.grad_atol
    return tol.grad_atol + FLOAT32_CONSTANT_BOUND * float(np.abs(ref).max())


def _kink_excuse(case: Case, mode: str, a: _Side, inputs: list[np.ndarray], backends: tuple[str, str],
                 seed: int) -> list[str]:
    """Why fp32 gradients may differ although the function is the same: kinks found in the float32
    forward, and the same case passing in float64. Empty when either is missing (a real failure)."""
    from .kinks import kinks

    found = kinks(a.net, inputs, train=mode.startswith("train"))
    if not found:
        return []
    reference = run_case(case, mode, backends, Tolerance.float64(), seed, dtype="float64")
    if not reference.passed:
        return []
    return [*found, f"float64 agrees: gradients within {reference.grad_max_abs:.1e}"]


def run_case(case: Case, mode: str, backends: tuple[str, str] = ("torch", "paddle"),
             tol: Tolerance = Tolerance(), seed: int = 0, dtype: str = "float32") -> CaseResult:
    """One case in one mode; ``dtype='float64'`` runs every mode in float64 (a ``-float64`` mode
    always does)."""
    res = CaseResult(case.name, case.group, mode)
    t0 = time.perf_counter()
    try:
        weights = random_weights(case.model, seed)
        rng = np.random.default_rng(seed + 7)
        inputs = [spec.sample(rng) for spec in case.inputs]
        train, dtype = mode.startswith("train"), "float64" if mode.endswith("float64") else dtype
        res.dtype = dtype
        named = float32_constants(case.model, backends) if dtype == "float64" else []
        a = _Side(backends[0], case.model, weights, train, dtype)
        b = _Side(backends[1], case.model, weights, train, dtype)
        problems = check_param_layout(case.model, weights, a.net, b.net)
        res.param_layout = res.roundtrip = not problems
        a.run(inputs, seed + 11)
        b.run(inputs, seed + 11)
        res.outputs = [f"{list(s)} {d} {m}" for s, d, m in a.layout]
        res.tensor_layout = a.layout == b.layout
        if not res.tensor_layout:
            problems.append(f"output layout {a.layout} vs {b.layout}")
        fwd = [_diff(x, y) for x, y in zip(a.values, b.values) if x.shape == y.shape]
        res.forward_max_abs = max((d[0] for d in fwd), default=0.0)
        res.forward_max_rel = max((d[1] for d in fwd), default=0.0)
        fwd_ok = res.tensor_layout and all(_close(x, y, tol.atol, tol.rtol) for x, y in zip(a.values, b.values))
        if not fwd_ok:
            problems.append(f"forward max abs diff {res.forward_max_abs:.3g} > atol {tol.atol} + rtol {tol.rtol}")
        grads = [(x, y) for x, y in zip(a.input_grads, b.input_grads) if x is not None or y is not None]
        grads += [(a.param_grads[k], b.param_grads.get(k)) for k in a.param_grads]
        bad = [i for i, (x, y) in enumerate(grads)
               if x is None or y is None or not _close(x, y, _grad_atol(tol, y, named), tol.grad_rtol)]
        res.grad_max_abs = max((_diff(x, y)[0] for x, y in grads if x is not None and y is not None
                                and x.shape == y.shape), default=0.0)
        if bad and not problems and dtype == "float32" and all(x is not None and y is not None for x, y in grads):
            res.kinks = _kink_excuse(case, mode, a, inputs, backends, seed)
            bad = [] if res.kinks else bad
        if bad:
            names = ([f"input{i}" for i in range(len(a.input_grads)) if a.input_grads[i] is not None or
                      b.input_grads[i] is not None] + list(a.param_grads))
            x, y = grads[bad[0]]
            detail = "missing on one side" if x is None or y is None else (
                f"max abs diff {_diff(x, y)[0]:.3g}, max |grad| {np.abs(y).max():.3g}")
            problems.append(f"gradient of {names[bad[0]]} differs beyond atol {tol.grad_atol} + rtol "
                            f"{tol.grad_rtol} ({detail}; {len(bad)} tensors off)")
        res.state_max_abs = max((_diff(a.state[k], b.state[k])[0] for k in a.state), default=0.0)
        if not all(_close(a.state[k], b.state[k], tol.atol, tol.rtol) for k in a.state):
            worst = max(a.state, key=lambda k: _diff(a.state[k], b.state[k])[0])
            problems.append(f"state after forward differs at {worst} (max abs {res.state_max_abs:.3g})")
        if named:
            worst = max((_diff(x, y)[0] / max(float(np.abs(y).max()), 1e-300) for x, y in grads
                         if x is not None and y is not None and x.shape == y.shape and y.size), default=0.0)
            res.float32_constants = [f"{n} (measured here: {worst:.1e} of the largest gradient; bound "
                                     f"{FLOAT32_CONSTANT_BOUND:.1e})" for n in named]
        if not fwd_ok or bad:
            res.first_divergence = first_divergence(a, b, inputs, tol)
        res.passed = not problems
        res.message = "; ".join(problems)
    except Exception as exc:  # a crash in one case is a failure of that case, not of the suite
        res.message = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        res.first_divergence = traceback.extract_tb(exc.__traceback__)[-1].name if exc.__traceback__ else None
    res.seconds = time.perf_counter() - t0
    return res


def run_suite(cases: Iterable[Case], backends: tuple[str, str] = ("torch", "paddle"),
              tol: Tolerance = Tolerance(), seed: int = 0, progress: bool = True,
              dtype: str = "float32") -> dict[str, Any]:
    """Run every case in each of its modes; returns the JSON-ready report."""
    from .quiet import progress_bar

    jobs = [(c, m) for c in cases for m in c.modes]
    results = [run_case(c, m, backends, tol, seed, dtype)
               for c, m in progress_bar(jobs, desc="parity", unit="case", enabled=progress)]
    versions = {b: getattr(get_backend(b), "version", "?") for b in backends}
    failed = [r for r in results if not r.passed]
    return {
        "dualml": __version__, "backends": list(backends), "versions": versions,
        "python": platform.python_version(), "tolerance": asdict(tol), "seed": seed, "dtype": dtype,
        "machine": describe_cpu(),
        "float32_constants": sorted({c.split(" (measured")[0] for r in results for c in r.float32_constants}),
        "summary": {"cases": len(results), "passed": len(results) - len(failed), "failed": len(failed),
                    "max_forward_abs": max((r.forward_max_abs for r in results if r.passed), default=0.0),
                    "max_grad_abs": max((r.grad_max_abs for r in results if r.passed and not r.kinks), default=0.0),
                    "kink_excused": [f"{r.name} [{r.mode}]" for r in results if r.kinks]},
        "results": [asdict(r) for r in results],
    }


def markdown(report: dict[str, Any]) -> str:
    s = report["summary"]
    a, b = report["backends"]
    lines = [f"# dualml parity: {a} {report['versions'][a]} vs {b} {report['versions'][b]}", "",
             f"{s['passed']}/{s['cases']} passed in {report.get('dtype', 'float32')}; tolerance "
             f"{report['tolerance']}; CPU {report.get('machine', {}).get('cpu_flags', '?')}", ""]
    if report.get("float32_constants"):
        lines += ["Constants a framework keeps in float32 in these cases (named, bounded, not compensable):", ""]
        lines += [f"- {c}" for c in report["float32_constants"]] + [""]
    lines += ["| case | mode | result | fwd max abs | grad max abs | layout | first divergence / message |",
              "|---|---|---|---|---|---|---|"]
    for r in report["results"]:
        layout = "ok" if r["param_layout"] and r["tensor_layout"] else "DIFF"
        note = " ".join(x for x in (r["first_divergence"] or "", r["message"]) if x)
        lines.append(f"| {r['name']} | {r['mode']} | {'pass' if r['passed'] else 'FAIL'} | "
                     f"{r['forward_max_abs']:.2e} | {r['grad_max_abs']:.2e} | {layout} | {note} |")
    return "\n".join(lines) + "\n"
