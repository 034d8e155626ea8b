"""Hand-written torch / paddle models <-> dualml canonical weights, across backends.

Why: ``import_native`` is how users bring existing checkpoints into dualml and ``export_native`` how
they take them back out. A layout rule that is wrong (a missed transpose, an unpacked q/k/v in the
wrong order, BatchNorm statistics under the wrong name) shows up only as wrong numbers, so every
test here compares outputs of real forward passes, at float32 round-off tolerance.

The hand-written models get framework-seeded init, then a seeded perturbation of every float array
(frameworks initialise biases and BatchNorm scales to constants, and a constant passes through a
wrong name mapping or transpose unnoticed), then BatchNorm statistics from one train-mode batch.
"""
from __future__ import annotations

import zlib  # noqa: F401  - before paddle (dualml_paddle imports it too; be explicit)
from typing import Any

import numpy as np
import pytest

import dualml
from dualml import zoo

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")
from dualml_paddle.handwritten import HANDWRITTEN as PADDLE_HW  # noqa: E402
from dualml_torch.handwritten import HANDWRITTEN as TORCH_HW  # noqa: E402

HANDWRITTEN = {"torch": TORCH_HW, "paddle": PADDLE_HW}
BACKENDS = ("torch", "paddle")
OTHER = {"torch": "paddle", "paddle": "torch"}
MODELS = tuple(zoo.ZOO)
RTOL = ATOL = 1e-5
# resnet18 at 64x64 (batch 2 from its input_spec) keeps the file fast; the graph is the full one
KWARGS: dict[str, dict[str, Any]] = {"resnet18": {"image_size": 64}}


def zoo_model(name: str) -> dualml.Module:
    return zoo.ZOO[name](**KWARGS.get(name, {}))


def seed_framework(backend: str, seed: int) -> None:
    (torch.manual_seed if backend == "torch" else paddle.seed)(seed)


def perturb(native: Any, backend: str, seed: int) -> None:
    """Add seeded noise, relative to each array's spread, to every float array so that constants
    (zero biases, unit BatchNorm scales) become distinct values a layout bug cannot hide behind."""
    be = dualml.get_backend(backend)
    rng = np.random.default_rng(seed)
    values = {}
    for k, v in be.arrays(native).items():
        if np.issubdtype(v.dtype, np.floating):
            scale = 0.1 * float(v.std()) or 0.05
            values[k] = (v + rng.normal(0.0, scale, v.shape)).astype(v.dtype)
    be.assign(native, values)


def calibrate_batchnorm(native: Any, backend: str, x: np.ndarray) -> None:
    """Set BatchNorm running statistics to those of one train-mode batch, like a trained checkpoint.

    Without this, eval-mode BatchNorm with init statistics (mean 0, var 1) does not normalise, and
    resnet18 activations grow through the depth (paddle's default init: |out| ~ 50), so that float32
    round-off alone exceeds atol=1e-5. Torch's momentum 1.0 and paddle's 0.0 both mean "replace".
    """
    be = dualml.get_backend(backend)
    if backend == "torch":
        norms = [m for m in native.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        attr, replace = "momentum", 1.0
    else:
        norms = [m for m in native.sublayers(include_self=True) if isinstance(m, paddle.nn.layer.norm._BatchNormBase)]
        attr, replace = "_momentum", 0.0
    if not norms:
        return
    saved = [getattr(m, attr) for m in norms]
    for m in norms:
        setattr(m, attr, replace)
    be.set_train(native, True)
    with be.no_grad():
        native(be.tensor(x))
    for m, old in zip(norms, saved, strict=True):
        setattr(m, attr, old)
    be.set_train(native, False)


def handwritten(name: str, backend: str, seed: int = 0, **kwargs: Any) -> Any:
    """A hand-written model: framework-seeded init, seeded perturbation, calibrated BatchNorm, eval mode."""
    seed_framework(backend, seed)
    native = HANDWRITTEN[backend][name](**{**KWARGS.get(name, {}), **kwargs})
    perturb(native, backend, seed)
    calibrate_batchnorm(native, backend, sample_input(zoo_model(name), seed=100 + seed))
    dualml.get_backend(backend).set_train(native, False)
    return native


def sample_input(model: dualml.Module, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    (spec,) = model.input_spec()
    return spec.sample(rng)


def run(native: Any, backend: str, x: np.ndarray) -> np.ndarray:
    """Eval-mode, no-grad forward on a numpy input, output back as numpy."""
    be = dualml.get_backend(backend)
    be.set_train(native, False)
    with be.no_grad():
        return be.numpy(native(be.tensor(x))).copy()


def max_diff(a: np.ndarray, b: np.ndarray) -> str:
    return f"max abs diff {np.abs(a - b).max():.3g}, max |out| {np.abs(b).max():.3g}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_handwritten_keys_equal_built(name: str, backend: str) -> None:
    """The hand-written twins only make sense as references if their state dicts line up key for key."""
    be = dualml.get_backend(backend)
    built = be.arrays(dualml.build(zoo_model(name), backend))
    mine = be.arrays(handwritten(name, backend))
    assert list(mine) == list(built)
    assert {k: v.shape for k, v in mine.items()} == {k: v.shape for k, v in built.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_import_native_same_backend(name: str, backend: str) -> None:
    """Imported weights rebuilt on the same backend reproduce the hand-written model (isolates import
    bugs from cross-framework numerics)."""
    model, native = zoo_model(name), handwritten(name, backend)
    x = sample_input(model)
    w = dualml.import_native(model, native, backend)
    built = dualml.build(model, backend, weights=w)
    ref, out = run(native, backend, x), run(built, backend, x)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=max_diff(out, ref))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_import_native_runs_on_other_backend(name: str, backend: str) -> None:
    """A hand-written checkpoint of one framework, imported and built on the other, gives the same outputs."""
    model, native = zoo_model(name), handwritten(name, backend)
    x = sample_input(model)
    w = dualml.import_native(model, native, backend)
    other = OTHER[backend]
    built = dualml.build(model, other, weights=w)
    if name == "resnet18":
        # With paddle's default init, resnet18's fp32 outputs reach ~6 and float32 round-off over 20
        # layers alone gives 1.8e-5 (each framework is ~1.3e-5 off a float64 reference), so the
        # mapping is checked on the same weights in float64, where round-off is ~1e-12.
        for net, be in ((native, backend), (built, other)):
            dualml.get_backend(be).to_dtype(net, "float64")
        x = x.astype("float64")
    ref, out = run(native, backend, x), run(built, other, x)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=max_diff(out, ref))


def _load_state(native: Any, backend: str, state: dict[str, np.ndarray]) -> None:
    if backend == "torch":
        native.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()},
                               strict=True)
    else:
        missing, unexpected = native.set_state_dict(state)
        assert not missing and not unexpected, (missing, unexpected)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", MODELS)
def test_export_native_round_trip(name: str, backend: str) -> None:
    """import -> export gives a state dict a fresh hand-written model loads strictly, bit for bit."""
    model, native = zoo_model(name), handwritten(name, backend, seed=0)
    x = sample_input(model)
    w = dualml.import_native(model, native, backend)
    state = dualml.export_native(model, w, backend)
    fresh = handwritten(name, backend, seed=1)  # different weights, so loading has to do the work
    _load_state(fresh, backend, state)
    be = dualml.get_backend(backend)
    original = be.arrays(native)
    for k, v in be.arrays(fresh).items():
        if not k.endswith("num_batches_tracked"):  # a step counter, not a weight: canonical form has none
            np.testing.assert_array_equal(v, original[k], err_msg=k)
    ref, out = run(native, backend, x), run(fresh, backend, x)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=max_diff(out, ref))


def _native_encoder_layer(backend: str) -> Any:
    seed_framework(backend, 0)
    if backend == "torch":
        layer = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
    else:
        layer = paddle.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    perturb(layer, backend, 0)
    dualml.get_backend(backend).set_train(layer, False)
    return layer


@pytest.mark.parametrize("backend", BACKENDS)
def test_single_encoder_layer_crosses_backends(backend: str) -> None:
    """A framework's own TransformerEncoderLayer (torch: packed in_proj; paddle: [in, out] Linears) as a
    single neutral layer, run on the other framework."""
    spec = dualml.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0)
    native = _native_encoder_layer(backend)
    x = np.random.default_rng(0).uniform(-1, 1, (2, 5, 8)).astype("float32")
    w = dualml.import_native(spec, native, backend)
    other = OTHER[backend]
    built = dualml.build(spec, other, weights=w)
    ref, out = run(native, backend, x), run(built, other, x)
    np.testing.assert_allclose(out, ref, rtol=RTOL, atol=ATOL, err_msg=max_diff(out, ref))


@pytest.mark.parametrize("backend", BACKENDS)
def test_wrong_shape_names_the_key(backend: str) -> None:
    """A checkpoint of a differently sized model must fail loudly, naming where it does not fit: the
    layers ``body.2`` / ``head`` (configuration check) or their weights ``body.2.weight`` / ``head.weight``
    (shape check), whichever import_native reports first."""
    native = handwritten("mlp", backend, hidden=(128, 32))  # body.2 is 128->32, head 32->10
    with pytest.raises(dualml.WeightsError) as info:
        dualml.import_native(zoo_model("mlp"), native, backend)
    message = str(info.value)
    assert "body.2" in message, message
    assert "head" in message, message
