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

from typing import Any

import numpy as np
import pytest

import dualml
from dualml import zoo

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")
from fixtures.handwritten_paddle import HANDWRITTEN as PADDLE_HW  # noqa: E402
from fixtures.handwritten_torch import HANDWRITTEN as TORCH_HW  # noqa: E402

HANDWRITTEN = {"torch": TORCH_HW, "paddle": PADDLE_HW}
#: the frameworks with hand-written twins (tests/fixtures); the module runs both by name
BACKENDS = tuple(HANDWRITTEN)
OTHER = {"torch": "paddle", "paddle": "torch"}
pytestmark = pytest.mark.backends(*BACKENDS)
# the zoo models with hand-written twins (the forecaster is a composite of neutral attention: no native twin)
MODELS = tuple(n for n in zoo.ZOO if n in TORCH_HW and n in PADDLE_HW)
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


# ------------------------------------------------------------------------- real model definitions
class TVBasicBlock(torch.nn.Module):
    """torchvision.models.resnet.BasicBlock as written there (torchvision itself cannot be imported
    here: its only wheel for this torch is a CUDA build). In-place ReLU, ``downsample`` None or a
    Sequential(conv1x1, BatchNorm2d), ``stride`` kept as an attribute."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: torch.nn.Module | None = None) -> None:
        super().__init__()
        nn = torch.nn
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=3, stride=stride, padding=1, groups=1, bias=False,
                               dilation=1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=1, padding=1, groups=1, bias=False, dilation=1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Any) -> Any:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class TVResNet18(torch.nn.Module):
    """torchvision.models.resnet18() structure, names and init (kaiming-normal fan-out convs, BatchNorm
    1/0), with torchvision's functional ``torch.flatten(x, 1)`` where dualml's zoo has a Flatten layer."""

    def __init__(self, num_classes: int = 1000) -> None:
        super().__init__()
        nn = torch.nn
        self.inplanes = 64
        self.dilation = 1
        self.groups, self.base_width = 1, 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, 2)
        self.layer2 = self._make_layer(128, 2, stride=2)
        self.layer3 = self._make_layer(256, 2, stride=2)
        self.layer4 = self._make_layer(512, 2, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * TVBasicBlock.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> Any:
        nn = torch.nn
        downsample = None
        if stride != 1 or self.inplanes != planes * TVBasicBlock.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, kernel_size=1, stride=stride, bias=False),
                                       nn.BatchNorm2d(planes))
        layers = [TVBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * TVBasicBlock.expansion
        layers += [TVBasicBlock(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Any) -> Any:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.fc(x)


def real_resnet18(backend: str) -> Any:
    """A real ResNet-18 definition with its own random init (no download), in eval mode:
    ``paddle.vision.models.resnet18()`` or the torchvision copy above."""
    seed_framework(backend, 0)
    native = TVResNet18() if backend == "torch" else paddle.vision.models.resnet18()
    dualml.get_backend(backend).set_train(native, False)
    return native


# Tolerances for two computations of the same ResNet-18 that differ only in rounding (another
# backend's kernels, or another summation order): each of the DEPTH weight layers on the longest
# path (17 convolutions + fc) rounds its output at a relative ~eps of the working dtype, and those
# relative errors add up through the depth at worst; two independent computations double it:
# 2 * DEPTH * eps * max|logit|. In float64 one more term: paddle holds BatchNorm's epsilon in float32
# (1e-5 -> 1e-5 - 2.5e-13), torch in float64, so each BatchNorm's 1/sqrt(var + eps) may differ by a
# relative |d eps| / (2 (var + eps)); summed over its BatchNorms. Stated before measuring (the figures
# are in the assertion messages); a layout bug (a transposed or misnamed weight) is off by O(max|logit|).
RESNET18_DEPTH = 18
EPS32_ROUNDING = abs(1e-5 - float(np.float32(1e-5)))


def rounding_tol(ref: np.ndarray, weights: dict[str, np.ndarray]) -> float:
    scale = float(np.abs(ref).max())
    tol = 2 * RESNET18_DEPTH * float(np.finfo(ref.dtype).eps) * scale
    if ref.dtype == np.float64:
        variances = [v for k, v in weights.items() if k.endswith("running_var")]
        min_var = min(float(v.min()) for v in variances)
        tol += len(variances) * EPS32_ROUNDING / (2 * (min_var + 1e-5)) * scale
    return tol


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_real_resnet18_imports_strictly(backend: str, dtype: str) -> None:
    """paddle.vision's resnet18 and torchvision's (structure copied verbatim) import with strict
    checking: in-place ReLU and the functional flatten are not mismatches. Rebuilt from the imported
    weights, on the same backend and on the other, dualml's zoo resnet18 gives the native outputs."""
    model = zoo_model("resnet18")
    native = real_resnet18(backend)
    w, rep = dualml.import_native(model, native, backend, report=True)
    assert rep.ok and rep.absent == ["flatten"], rep.problems()
    x = sample_input(model)
    if dtype == "float64":
        dualml.get_backend(backend).to_dtype(native, "float64")
        x = x.astype("float64")
    ref = run(native, backend, x)
    for target in (backend, OTHER[backend]):
        built = dualml.build(model, target, weights=w)
        dualml.get_backend(target).to_dtype(built, dtype)
        out = run(built, target, x)
        assert out.dtype == ref.dtype == np.dtype(dtype)
        tol = rounding_tol(ref, w)
        print(f"{backend} -> {target} {dtype}: {max_diff(out, ref)}, tol {tol:.3g}")
        assert np.abs(out - ref).max() <= tol, f"{backend} -> {target} {dtype}: {max_diff(out, ref)}, tol {tol:.3g}"


def test_real_resnet18_layer_with_weights_missing_is_an_error() -> None:
    """Only weightless layers may be absent: a missing ``fc`` is an error in strict mode, and with
    ``strict=False`` a warning naming ``fc.weight``/``fc.bias``, reported as kept at their initial value."""
    model, native = zoo_model("resnet18"), real_resnet18("torch")
    del native.fc
    with pytest.raises(dualml.WeightsError, match=r"layer 'fc' is missing \(it holds weights"):
        dualml.import_native(model, native, "torch")
    with pytest.warns(dualml.WeightsWarning, match="fc.weight, fc.bias"):
        w, rep = dualml.import_native(model, native, "torch", strict=False, report=True)
    assert rep.missing == ["fc.weight", "fc.bias"] and not rep.ok
    np.testing.assert_array_equal(w["fc.weight"], dualml.init_weights(model)["fc.weight"])


@pytest.mark.parametrize("attr,kwargs,expect", [
    ("conv1", {"stride": 1}, "stride=(1, 1) (dualml: (2, 2))"),
    ("bn1", {"eps": 1e-3}, "eps=0.001"),
    ("bn1", {"momentum": 0.01}, "momentum=0.01")])
def test_settings_that_change_numbers_stay_errors(attr: str, kwargs: dict[str, Any], expect: str) -> None:
    """inplace is ignored, but a stride, an epsilon or a momentum that differs is refused strictly."""
    model, native = zoo_model("resnet18"), real_resnet18("torch")
    nn = torch.nn
    if attr == "conv1":
        native.conv1 = nn.Conv2d(3, 64, kernel_size=7, padding=3, bias=False, **kwargs)
    else:
        native.bn1 = nn.BatchNorm2d(64, **kwargs)
    with pytest.raises(dualml.WeightsError, match=f"layer '{attr}'") as info:
        dualml.import_native(model, native, "torch")
    assert expect in str(info.value), str(info.value)


def test_non_strict_lstm_without_bias_warns_and_reports() -> None:
    """The issue's case: a torch LSTM with bias=False into a dualml LSTM (with bias). strict refuses;
    strict=False warns naming the two biases it left at their initial value and reports them; with
    those set to zero the dualml LSTM computes the native one exactly, so nothing else was missed."""
    torch.manual_seed(0)
    native = torch.nn.LSTM(4, 5, batch_first=True, bias=False).eval()
    spec = dualml.nn.LSTM(4, 5)
    with pytest.raises(dualml.WeightsError, match="bias=False"):
        dualml.import_native(spec, native, "torch")
    with pytest.warns(dualml.WeightsWarning, match="bias_ih_l0, bias_hh_l0"):
        w, rep = dualml.import_native(spec, native, "torch", strict=False, report=True)
    assert rep.missing == ["bias_ih_l0", "bias_hh_l0"]
    assert rep.loaded == ["weight_ih_l0", "weight_hh_l0"]
    assert any("bias=False" in c for c in rep.config), rep.config
    x = np.random.default_rng(0).uniform(-1, 1, (2, 6, 4)).astype("float32")
    with torch.no_grad():
        ref = native(torch.from_numpy(x))[0].numpy()
    init = dualml.build(spec, "torch", weights=w)
    with torch.no_grad():
        off = np.abs(init(torch.from_numpy(x))[0].numpy() - ref).max()
    assert off > 1e-2  # the initial biases do change the output: why the report exists
    zeroed = {**w, **{k: np.zeros_like(w[k]) for k in rep.missing}}
    built = dualml.build(spec, "torch", weights=zeroed)
    with torch.no_grad():
        out = built(torch.from_numpy(x))[0].numpy()
    np.testing.assert_array_equal(out, ref)  # same torch kernel, same weights: bit-identical


def test_non_strict_report_on_paddle_and_default_return() -> None:
    """Same on paddle (a Linear with bias_attr=False); without ``report=True`` the weights dict alone
    comes back, as existing callers expect, and the warning still names what is missing."""
    paddle.seed(0)
    native = paddle.nn.Linear(6, 3, bias_attr=False)
    with pytest.warns(dualml.WeightsWarning, match="bias"):
        w = dualml.import_native(dualml.nn.Linear(6, 3), native, "paddle", strict=False)
    assert isinstance(w, dict) and set(w) == {"weight", "bias"}
    np.testing.assert_array_equal(w["weight"], native.weight.numpy().T)


def test_strict_import_is_silent() -> None:
    """A clean import warns about nothing (the functional flatten is reported as absent, not a problem)."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error", dualml.WeightsWarning)
        dualml.import_native(zoo_model("resnet18"), real_resnet18("paddle"), "paddle", strict=False)
