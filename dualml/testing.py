"""The conformance kit an adapter package runs to prove itself, and which backends a test run uses.

An adapter for a third framework is one package registered under the ``dualml.backends`` entry
point group (see :mod:`dualml.backend`). Its own test suite calls::

    from dualml.testing import check_adapter
    check_adapter("mybackend", reference="torch")

which raises :class:`ConformanceError` listing every problem, one line each, from five checks:

1. ``registry``: every neutral layer in ``dualml.layers.BUILTIN_LAYERS`` has a native builder for
   the backend and every op of ``dualml.ops.OPS`` is in its op namespace;
2. ``rules``: for every layer example, canonical -> native -> canonical is bit-exact with the
   canonical manifest's names, shapes and dtypes, and native -> canonical -> native likewise;
3. ``parity``: every layer and op case of :func:`dualml.parity.default_cases` agrees with the
   reference backend at the parity suite's three levels (it calls :func:`dualml.parity.run_case`);
4. ``export``: a small model exports to ONNX on both backends, ONNX Runtime matches each eager model
   and the two files agree (it calls :func:`dualml.onnx.export.onnx_parity`).
5. ``devices``: ``device_count``/``local_rank`` are integers >= 0, the CPU device changes nothing, and
   where the adapter sees a GPU a small model moved there (full float32 math) gives the CPU's outputs
   within the parity tolerance and its weights back bit for bit (the contract's defaults: CPU only).

The checks also run one by one (``check_registry`` ...), each returning its problems, so a suite can
parametrize over them. Nothing here imports a framework: everything goes through the adapters.

dualml's own suites take their backends from here too (:func:`selected_backends`): the installed
adapters, narrowed by ``DUALML_TEST_BACKENDS=torch,paddle``, rather than a list written in each test.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .backend import available_backends, get_backend, layer_impl
from .build import build, get_weights
from .errors import BackendError, ConfigError, not_allowed
from .layers import BUILTIN_LAYERS, Layer
from .module import Module, manifest
from .ops import OPS
from .parity import Tolerance, default_cases, random_weights, run_case

#: the environment variable that narrows the backends dualml's test suites run (comma-separated)
ENV = "DUALML_TEST_BACKENDS"

#: the checks :func:`check_adapter` runs, in order
CHECKS = ("registry", "rules", "parity", "export", "devices")


class ConformanceError(AssertionError):
    """An adapter failed the kit. An AssertionError so that pytest reports it as a test failure
    (with the message) rather than as an error in the test's setup."""


# ---------------------------------------------------------------- which backends a test run uses

def _framework_missing(exc: BackendError, adapter: str) -> bool:
    """True when ``get_backend`` failed only because the adapter's framework is not installed
    (a ModuleNotFoundError for a module outside dualml and the adapter): such a backend is not
    installed. Any other import failure is a bug in the adapter and must not hide as a skip."""
    cause = exc.__cause__
    if not isinstance(cause, ModuleNotFoundError) or not cause.name:
        return False
    return cause.name.split(".")[0] not in {"dualml", adapter.split(".")[0]}


@functools.cache
def installed_backends() -> tuple[str, ...]:
    """Registered adapters (built-in and ``dualml.backends`` entry points) whose framework imports
    here, in registry order. Imports each adapter: a registered one that fails to import for any
    reason but a missing framework raises, so a broken adapter is a failure, not a silent skip."""
    out = []
    for name, module in available_backends().items():
        try:
            get_backend(name)
        except BackendError as exc:
            if _framework_missing(exc, module):
                continue
            raise
        out.append(name)
    return tuple(out)


def requested_backends(value: str | None = None) -> tuple[str, ...]:
    """The names in ``DUALML_TEST_BACKENDS`` (or ``value``), checked against the registered adapters
    without importing any; empty when unset. An unknown name is a one-line error listing them."""
    raw = os.environ.get(ENV, "") if value is None else value
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    known = available_backends()
    for name in names:
        if name not in known:
            raise ConfigError(not_allowed(ENV, name, known))
    return names


def selected_backends(value: str | None = None) -> tuple[str, ...]:
    """The backends a test run uses: those ``DUALML_TEST_BACKENDS`` (or ``value``) names when set,
    else every installed adapter. Narrowing imports only the named adapters, so a machine without
    paddle runs ``DUALML_TEST_BACKENDS=torch`` without ever importing it; a named backend whose
    framework is missing is an error, not a skip."""
    names = requested_backends(value)
    if not names:
        return installed_backends()
    for name in names:
        get_backend(name)
    return names


def _why_fewer(needed: str) -> str:
    """The skip reason when the selection lacks what a test needs: names the narrowing when
    ``DUALML_TEST_BACKENDS`` did it, else what is installed."""
    chosen = ", ".join(selected_backends()) or "none"
    if requested_backends():
        return f"needs {needed}; {ENV}={','.join(requested_backends())} narrowed the backends to {chosen}"
    return f"needs {needed}; installed backends: {chosen}"


def _skip(reason: str) -> None:
    import pytest  # only the suites call this: dualml itself does not depend on pytest

    pytest.skip(reason, allow_module_level=True)


def backend_pair() -> tuple[str, str]:
    """The first two selected backends, for a cross-backend comparison; skips the test (or the
    module, at module level) when fewer than two are selected."""
    chosen = selected_backends()
    if len(chosen) < 2:
        _skip(_why_fewer("two backends"))
    return chosen[0], chosen[1]


def backend_pairs() -> list[Any]:
    """Every ordered pair of selected backends as pytest parameters (``first, second``); one
    skipped parameter saying why when fewer than two are selected, so the skip shows its reason."""
    import pytest

    chosen = selected_backends()
    if len(chosen) < 2:
        return [pytest.param(None, None, marks=pytest.mark.skip(reason=_why_fewer("two backends")))]
    return [(a, b) for a in chosen for b in chosen if a != b]


def unselected_reason(names: Iterable[str]) -> str | None:
    """Why a test that runs the frameworks ``names`` by name (PaddleSlim, torch autocast, the
    hand-written twins) cannot run in this selection, or None when it can. The suites' root
    ``conftest.py`` turns ``@pytest.mark.backends("torch", "paddle")`` into this skip."""
    names = list(names)
    if all(n in selected_backends() for n in names):
        return None
    return _why_fewer(" and ".join(names))


def skip_if_refused(why: str | None, attempt: Any, *expected: str) -> None:
    """For a test of a feature that a backend refuses in this install (a framework line without the
    tool, e.g. PaddleSlim's filter pruners on lane 3; the adapter says so through
    ``Backend.filter_selection_support`` / ``quantization_support``): when ``why`` is None, return and let
    the test run. Otherwise the refusal is what is tested: ``attempt()`` must raise a :class:`DualmlError`
    whose message carries ``why`` and every string of ``expected``; then the test is skipped, saying why."""
    import pytest

    from .errors import DualmlError

    if why is None:
        return
    with pytest.raises(DualmlError) as info:
        attempt()
    for text in (why, *expected):
        assert text in str(info.value), (text, str(info.value))
    pytest.skip(f"refused on this framework line (the refusal was asserted): {why}")


# ---------------------------------------------------------------- the conformance kit

def _examples(layers: Iterable[type[Layer]] | None) -> list[tuple[str, Layer]]:
    """(label, spec) for every example of ``layers`` (default: every built-in layer)."""
    return [(label, spec) for klass in (layers or BUILTIN_LAYERS) for label, spec, _ in klass.examples()]


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]


def check_registry(backend: str, layers: Iterable[type[Layer]] | None = None) -> list[str]:
    """Every layer in ``layers`` (default ``BUILTIN_LAYERS``) has a builder on ``backend`` that
    builds each of its examples, and the op namespace holds every op of ``dualml.ops.OPS``."""
    be = get_backend(backend)
    problems = [f"registry: op F.{op} is missing from {backend}'s op namespace ({type(be).__name__}.ops)"
                for op in OPS if not hasattr(be.ops, op)] if layers is None else []
    for label, spec in _examples(layers):
        try:
            layer_impl(backend, spec).build(spec)
        except BackendError as exc:  # no builder: layer_impl's message says how to register one
            problems.append(f"registry: {exc}")
        except Exception as exc:  # the builder exists but fails on a documented example
            problems.append(f"registry: {label}: the {backend} builder fails: {_first_line(exc)}")
    return problems


def _arrays_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Names present on one side only, or whose arrays differ in shape, dtype or any bit."""
    out = [f"{n} missing" for n in a if n not in b] + [f"{n} unexpected" for n in b if n not in a]
    out += [f"{n} is {b[n].dtype}{list(b[n].shape)}, expected {a[n].dtype}{list(a[n].shape)}" for n in a
            if n in b and (a[n].shape != b[n].shape or a[n].dtype != b[n].dtype)]
    out += [f"{n} changed in the round trip" for n in a
            if n in b and a[n].shape == b[n].shape and a[n].dtype == b[n].dtype and not np.array_equal(a[n], b[n])]
    return out


def check_rules(backend: str, layers: Iterable[type[Layer]] | None = None, seed: int = 0) -> list[str]:
    """Canonical <-> native round trips of every layer example through the backend's ``Rule``s.

    canonical -> native -> canonical must give the manifest's names, shapes, dtypes and the same
    bits; native -> canonical -> native must give the same native arrays. A rule that is its own
    inverse but wrong (a transpose of a square weight) passes here and fails ``check_parity``."""
    be = get_backend(backend)
    problems = []
    for label, spec in _examples(layers):
        if not manifest(spec):
            continue
        weights = random_weights(spec, seed)
        try:
            net = build(spec, backend, weights=weights)
            bad = _arrays_equal(weights, get_weights(net))
            if not bad:  # the native side: a fresh build from the read-back weights holds the same arrays
                ruled = {r.native for r in layer_impl(backend, spec).rules_for(spec)}
                again = build(spec, backend, weights=get_weights(net))
                bad = [f"native {m}" for m in _arrays_equal(*({k: v for k, v in be.arrays(n).items() if k in ruled}
                                                              for n in (net, again)))]
        except Exception as exc:
            bad = [_first_line(exc)]
        if bad:
            problems.append(f"rules: {label} on {backend}: {'; '.join(bad[:3])}"
                            f"{f' (+{len(bad) - 3} more)' if len(bad) > 3 else ''}")
    return problems


def _chosen(model: Module | Layer, layers: Sequence[type[Layer]] | None) -> bool:
    return layers is None or isinstance(model, tuple(layers))


def check_parity(backend: str, reference: str, layers: Sequence[type[Layer]] | None = None,
                 tol: Tolerance | None = None, seed: int = 0) -> list[str]:
    """Every layer and op case of the parity suite against ``reference`` (``layers`` narrows it to
    those layers' cases), in every mode, at the suite's tolerances and three levels."""
    problems = []
    for case in default_cases(zoo=False, backends=(reference, backend)):
        if case.group == "op" and layers is not None or not _chosen(case.model, layers):
            continue
        for mode in case.modes:
            r = run_case(case, mode, (reference, backend), tol or Tolerance(), seed)
            if not r.passed:
                where = f" (first divergence: {r.first_divergence})" if r.first_divergence else ""
                problems.append(f"parity: {case.name} [{mode}] {backend} vs {reference}: {r.message}{where}")
    return problems


def check_export(backend: str, reference: str, models: dict[str, Module] | None = None) -> list[str]:
    """Each model (default: the zoo's small cnn, Conv/BatchNorm/ReLU/pool/Linear) exports to ONNX on
    ``backend`` and ``reference``; ONNX Runtime must match each eager model and the two files agree."""
    from .onnx.export import onnx_parity
    from .zoo import CNN

    report = onnx_parity(models or {"cnn": CNN()}, (reference, backend), seed=0, batch=2)
    return [f"export: {r['model']} {backend} vs {reference}: " + (r.get("message") or
            f"ONNX Runtime outputs differ by {r['max_abs']:.3g} (atol {report['atol']})")
            for r in report["results"] if not r["passed"]]


def check_devices(backend: str) -> list[str]:
    """The device members of the contract: counts, the CPU as a no-op, and (with a GPU) the same model there."""
    from .devices import CPU, Device
    from .zoo import CNN

    be = get_backend(backend)
    problems = []
    n, r = be.device_count(), be.local_rank()
    if not isinstance(n, int) or n < 0 or not isinstance(r, int) or r < 0:
        return [f"devices: device_count()={n!r}, local_rank()={r!r}; both must be integers >= 0"]
    previous = be.device
    model = CNN()
    weights = random_weights(model, seed=0)
    x = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    try:
        be.set_device(CPU)
        net = be.to_device(build(model, backend, weights=weights))
        be.set_train(net, False)
        with be.no_grad():
            ref = be.numpy(net(be.tensor(x))).copy()
        if n > 0:
            be.set_device(Device("cuda", 0, exact=True))
            gnet = be.to_device(build(model, backend, weights=weights))
            be.set_train(gnet, False)
            with be.no_grad():
                out = be.numpy(gnet(be.tensor(x)))
            if not np.allclose(out, ref, atol=1e-5, rtol=1e-5):
                problems.append(f"devices: cnn on cuda:0 differs from cpu by {float(np.abs(out - ref).max()):.3g} "
                                "(atol 1e-5, rtol 1e-5)")
            bad = [k for k, v in get_weights(gnet).items() if not np.array_equal(v, weights[k])]
            if bad:
                problems.append(f"devices: weights read back from cuda:0 differ: {', '.join(bad[:5])}")
    except Exception as exc:  # an adapter bug: report it as a problem, like the other checks
        problems.append(f"devices: {type(exc).__name__}: {_first_line(exc)}")
    finally:
        be.set_device(previous)
    return problems


def check_adapter(backend: str, reference: str, checks: Sequence[str] = CHECKS,
                  layers: Sequence[type[Layer]] | None = None) -> None:
    """Run the kit's ``checks`` on ``backend`` against ``reference`` (an adapter known to be right,
    e.g. ``"torch"``); raise :class:`ConformanceError` listing every problem, one line each.
    ``layers`` narrows registry, rules and parity to some layer types while an adapter grows."""
    for name in checks:
        if name not in CHECKS:
            raise ConfigError(not_allowed("check", name, CHECKS))
    if backend == reference:
        raise ConfigError(f"reference={reference} is the backend under test; name another installed backend "
                          f"({', '.join(b for b in available_backends() if b != backend)})")
    run = {"registry": lambda: check_registry(backend, layers),
           "rules": lambda: check_rules(backend, layers),
           "parity": lambda: check_parity(backend, reference, layers),
           "export": lambda: check_export(backend, reference),
           "devices": lambda: check_devices(backend)}
    problems = [p for name in checks for p in run[name]()]
    if problems:
        raise ConformanceError(f"backend={backend} fails {len(problems)} conformance check(s) against "
                               f"{reference}:\n" + "\n".join(problems))
