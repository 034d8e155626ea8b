"""dualml.testing: every installed adapter passes the conformance kit against every other, the kit
catches a broken adapter (a missing builder, a wrong weight rule) naming the layer, and the test
backends come from the installed adapters, narrowed by DUALML_TEST_BACKENDS."""
from __future__ import annotations

import numpy as np
import pytest

from dualml import nn
from dualml.backend import _IMPLS, LayerImpl, Rule, layer_impl
from dualml.errors import ConfigError
from dualml.layers import GELU, Linear
from dualml.testing import (
    ENV,
    ConformanceError,
    backend_pair,
    backend_pairs,
    check_adapter,
    check_parity,
    check_registry,
    check_rules,
    installed_backends,
    selected_backends,
)


@pytest.mark.parametrize("backend,reference", backend_pairs())
def test_installed_adapter_passes_the_kit(backend: str, reference: str) -> None:
    check_adapter(backend, reference)


class SquareLinear(Linear):
    """A Linear whose examples are square: a transposing rule that should not transpose round-trips
    exactly on one backend, so only the parity check can catch it."""

    @classmethod
    def examples(cls):
        return [("SquareLinear", cls(5, 5), [nn.InputSpec((3, 5))])]


def _flipped(impl: LayerImpl, spec: Linear) -> list[Rule]:
    """The backend's own rules with the weight's transpose toggled: the classic layout bug."""
    return [Rule(r.canonical, r.native, "same" if r.transform == "T" else "T") if r.native == "weight" else r
            for r in impl.rules_for(spec)]


@pytest.fixture
def broken_linear(monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """The backend under test gets Linear rules with the weight transposed wrongly; SquareLinear is
    registered on both sides with the same implementations as Linear (undone after the test)."""
    backend, reference = backend_pair()
    good = layer_impl(backend, Linear(2, 3))
    monkeypatch.setitem(_IMPLS, (backend, Linear), LayerImpl(good.build, lambda spec: _flipped(good, spec)))
    monkeypatch.setitem(_IMPLS, (backend, SquareLinear), _IMPLS[(backend, Linear)])
    monkeypatch.setitem(_IMPLS, (reference, SquareLinear), layer_impl(reference, Linear(2, 3)))
    return backend, reference


def test_kit_names_a_missing_layer_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    backend, reference = backend_pair()
    monkeypatch.delitem(_IMPLS, (backend, GELU))
    assert any(f"layer GELU has no implementation for backend={backend}" in p for p in check_registry(backend))
    expected = f"backend={backend} fails .* against {reference}:\nregistry: layer GELU"
    with pytest.raises(ConformanceError, match=expected):
        check_adapter(backend, reference, checks=("registry",))


def test_rules_check_catches_a_wrong_transpose_of_a_rectangular_weight(broken_linear) -> None:
    backend, _ = broken_linear
    problems = check_rules(backend, layers=[Linear])
    assert problems and all(p.startswith("rules: Linear") and f"on {backend}" in p for p in problems), problems


def test_parity_check_catches_a_wrong_transpose_that_round_trips(broken_linear) -> None:
    backend, reference = broken_linear
    assert check_rules(backend, layers=[SquareLinear]) == []  # T then T: exact, and still wrong
    problems = check_parity(backend, reference, layers=[SquareLinear])
    assert problems and all(p.startswith("parity: layer:SquareLinear") for p in problems), problems
    assert any("forward max abs diff" in p for p in problems), problems
    with pytest.raises(ConformanceError, match="parity: layer:SquareLinear"):
        check_adapter(backend, reference, checks=("rules", "parity"), layers=[SquareLinear])


def test_kit_refuses_bad_arguments_in_one_line() -> None:
    backend, reference = backend_pair()
    with pytest.raises(ConfigError,
                       match="check=parityy is not allowed; allowed: devices, export, parity, registry, rules"):
        check_adapter(backend, reference, checks=("parityy",))
    with pytest.raises(ConfigError, match=f"reference={backend} is the backend under test"):
        check_adapter(backend, backend)


def test_backends_come_from_the_installed_adapters(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = installed_backends()
    assert installed and len(set(installed)) == len(installed)
    monkeypatch.delenv(ENV, raising=False)
    assert selected_backends() == installed
    monkeypatch.setenv(ENV, f" {installed[0]} ,")
    assert selected_backends() == installed[:1]
    with pytest.raises(pytest.skip.Exception, match=f"needs two backends; {ENV}={installed[0]} narrowed"):
        backend_pair()
    assert [p.marks[0].kwargs["reason"] for p in backend_pairs()] == [
        f"needs two backends; {ENV}={installed[0]} narrowed the backends to {installed[0]}"]


def test_unknown_test_backend_is_a_one_line_error_listing_the_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "tensorflow")
    with pytest.raises(ConfigError) as info:
        selected_backends()
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith(f"{ENV}=tensorflow is not allowed; allowed: ")
    assert all(b in msg for b in installed_backends())


def test_rules_check_reads_canonical_arrays_bit_exactly() -> None:
    """The round trip compares bits, not values within a tolerance: one ulp is a failure."""
    from dualml.testing import _arrays_equal

    a = {"w": np.ones((2, 3), np.float32)}
    b = {"w": np.nextafter(a["w"], 2, dtype=np.float32)}
    assert _arrays_equal(a, b) == ["w changed in the round trip"]
    assert _arrays_equal(a, {"w": a["w"].T.copy()}) == ["w is float32[3, 2], expected float32[2, 3]"]
    assert _arrays_equal(a, {}) == ["w missing"]


@pytest.mark.parametrize("backend", selected_backends())
def test_device_check(backend, monkeypatch):
    """The kit's device check passes on the built-in adapters and names a broken device member."""
    from dualml.backend import get_backend
    from dualml.testing import check_devices

    assert check_devices(backend) == []
    be = get_backend(backend)
    monkeypatch.setattr(type(be), "device_count", lambda self: -1)
    assert check_devices(backend) == ["devices: device_count()=-1, local_rank()=0; both must be integers >= 0"]
