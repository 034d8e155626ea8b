"""The parity suite users run: every layer, op, mask convention and zoo model on torch and paddle
from the same canonical weights, compared at the three levels (see dualml.parity)."""

import pytest

from dualml.parity import Tolerance, default_cases, run_case
from dualml.testing import backend_pair

BACKENDS = backend_pair()  # skips the module, saying why, when DUALML_TEST_BACKENDS selects one
RUNS = [(case, mode) for case in default_cases(backends=BACKENDS) for mode in case.modes]


@pytest.mark.parametrize("case,mode", RUNS, ids=[f"{c.name}[{m}]" for c, m in RUNS])
def test_parity(case, mode):
    r = run_case(case, mode, BACKENDS, Tolerance())
    where = f" | first divergence: {r.first_divergence}" if r.first_divergence else ""
    assert r.passed, f"{r.message}{where}"
    assert r.param_layout and r.roundtrip and r.tensor_layout


def test_suite_covers_every_registered_layer_op_and_zoo_model():
    from dualml.backend import registered_layers
    from dualml.layers import BUILTIN_LAYERS
    from dualml.ops import OPS
    from dualml.zoo import ZOO

    names = " ".join(c.name for c, _ in RUNS)
    for klass in registered_layers():
        assert klass.examples(), f"{klass.__name__} has no parity examples"
    for klass in BUILTIN_LAYERS:
        assert f"layer:{klass.__name__}" in names
    for model in ZOO:
        assert f"model:{model}" in names
    from dualml.attention import ENCODINGS, FUSIONS, VARIANTS
    for name in [f"attention:{v}" for v in VARIANTS] + [f"position:{e}" for e in ENCODINGS if e in (
            "sinusoidal", "learnable")] + [f"attention:{e}" for e in ("relative", "rotary")] + [
            f"fusion:{f}" for f in FUSIONS]:
        assert name in names, f"{name} has no parity case"
    import inspect

    from dualml import op_cases
    src = inspect.getsource(op_cases)
    assert not [op for op in OPS if f"F.{op}(" not in src], "an op has no parity case"
