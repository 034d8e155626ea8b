"""Framework quantization passes (dualml.compress.quantization) on both backends.

Why these checks: an int8 model can run and still compute something else (weights quantized twice,
int8 kernels saturating, a converter dropping the QDQ of some layers), so for every backend x mode
the native quantized model's accuracy is held against fp32, the exported file must contain int8
weights and the quantization ops, and ONNX Runtime (with its graph optimizations, i.e. the fused
int8 kernels) must reproduce the native model's accuracy within one test sample.

Bounds were measured on the cnn trained below (60 Adam steps, test accuracy ~0.95): the largest
|int8 - fp32| accuracy change was 0.3 points (paddle qat; torch qat +0.0), native vs ORT differed by
0 samples everywhere. The asserted bounds (2 points, 1 sample) leave room for other CPUs' kernels.
"""
from __future__ import annotations

import onnx
import pytest

import dualml
from dualml import get_backend, zoo
from dualml.compress import quantization as Q
from dualml.config import load_config
from dualml.errors import BackendError, ConfigError
from dualml.onnx.int8 import calibration_batches, evaluate_onnx
from dualml.testing import skip_if_refused
from dualml.train.trainer import Trainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

torch = pytest.importorskip("torch")

#: int8 ops whose presence proves the exported arithmetic changed, per mode
EXPECTED_OPS = {"static": {"QuantizeLinear", "DequantizeLinear"}, "qat": {"QuantizeLinear", "DequantizeLinear"},
                "dynamic": {"DequantizeLinear"}}
ACC_DROP = 0.02  # measured <= 0.003 on this model
QAT_LR = 1e-3


@pytest.fixture(scope="module")
def trained():
    """A cnn trained 60 Adam steps on digits (canonical weights), its data and fp32 test accuracy."""
    t = Trainer(load_config(["model=cnn", "trainer.max_steps=60"]), write=False, progress=False)
    t.fit()
    return {"weights": dualml.get_weights(t.net), "data": t.data, "model": t.model}


def _fp32(trained, backend):
    net = dualml.build(zoo.create_model("cnn"), backend, weights=trained["weights"])
    return net, Q.evaluate_native(net, backend, trained["data"].test.x, trained["data"].test.y)


@pytest.mark.parametrize("mode", ["static", "qat", "dynamic"])
def test_pass_native_and_onnx(trained, backend, mode, tmp_path):
    ds = trained["data"]
    x, y = ds.test.x, ds.test.y
    net, fp32 = _fp32(trained, backend)
    calib = calibration_batches(ds.train.x, 4, 64, 0) if mode == "static" else None

    def make():
        if mode == "qat":
            return Q.qat_train(net, backend, ds, epochs=1, lr=QAT_LR, batch_size=64, seed=0)
        return Q.quantize(net, backend, mode, calib)

    skip_if_refused(get_backend(backend).quantization_support(mode), make, f"quantize mode={mode}", "export.quantize")
    qnet = make()
    native = Q.evaluate_native(qnet, backend, x, y)
    assert abs(native - fp32) <= ACC_DROP, f"{backend} {mode}: fp32 {fp32:.4f} -> int8 {native:.4f}"

    path = tmp_path / f"{backend}-{mode}.onnx"
    info = get_backend(backend).export_quantized_onnx(qnet, x[:8], str(path), {"model": "cnn"})
    assert info["quantization"] == mode and path.is_file()
    assert EXPECTED_OPS[mode] <= set(info["ops"]), info["ops"]
    if backend == "torch" and mode == "dynamic":
        assert "DynamicQuantizeLinear" in info["ops"]
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == ["input"] and [o.name for o in model.graph.output] == ["output"]
    tensors = [*model.graph.initializer, *(n.attribute[0].t for n in model.graph.node if n.op_type == "Constant")]
    assert any(t.data_type == onnx.TensorProto.INT8 and len(t.dims) >= 2 for t in tensors), "no int8 weights"
    assert {p.key: p.value for p in model.metadata_props}["quantization"] == mode

    ort = evaluate_onnx(path, x, y)["accuracy"]  # ORT's default optimizations: fused int8 kernels
    assert abs(round(ort * len(y)) - round(native * len(y))) <= 1, f"ORT {ort:.4f} vs native {native:.4f}"


def test_static_int8_weights_are_smaller(trained, tmp_path):
    """The int8 file's weight bytes fall to about a quarter (the graph around them is fixed overhead)."""
    from dualml.onnx.export import export_model
    from dualml.onnx.int8 import initializer_bytes

    ds = trained["data"]
    skip_if_refused(get_backend("paddle").quantization_support("static"),
                    lambda: Q.quantize(_fp32(trained, "paddle")[0], "paddle", "static", [ds.train.x[:64]]))
    fp32 = tmp_path / "fp32.onnx"
    export_model(trained["model"], "paddle", trained["weights"], fp32, ds.test.x[:4])
    net, _ = _fp32(trained, "paddle")
    q = tmp_path / "int8.onnx"
    get_backend("paddle").export_quantized_onnx(Q.quantize(net, "paddle", "static", [ds.train.x[:64]]), ds.test.x[:4],
                                               str(q))
    assert initializer_bytes(q) < 0.33 * initializer_bytes(fp32)
    assert q.stat().st_size < 0.6 * fp32.stat().st_size


def test_bad_mode_and_missing_calibration(trained):
    net, _ = _fp32(trained, "torch")
    with pytest.raises(ConfigError, match="allowed: dynamic, qat, static"):
        Q.quantize(net, "torch", "int4")
    with pytest.raises(ConfigError, match="qat_train"):
        Q.quantize(net, "torch", "qat")
    with pytest.raises(ConfigError, match="calibration"):
        Q.quantize(net, "torch", "static", [])


def test_unsupported_pair_is_one_error(trained, monkeypatch):
    be = get_backend("paddle")
    monkeypatch.setattr(be, "quantization_support", lambda mode: "not in this build" if mode == "qat" else None)
    net, _ = _fp32(trained, "paddle")
    with pytest.raises(BackendError, match="quantize mode=qat is not supported on backend=paddle: not in this build"):
        Q.qat_train(net, "paddle", trained["data"], epochs=1, lr=1e-3, batch_size=64, seed=0)


def test_dynamic_needs_a_linear(backend):
    """Both frameworks quantize only Linear layers dynamically: a model without one is refused."""
    from dualml import nn

    class ConvOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            return self.conv(x)

        def input_spec(self, batch=2):
            return [nn.InputSpec((batch, 1, 8, 8))]

    net = dualml.build(ConvOnly(), backend)
    skip_if_refused(get_backend(backend).quantization_support("dynamic"), lambda: Q.quantize(net, backend, "dynamic"))
    with pytest.raises(BackendError, match="found no nn.Linear"):
        Q.quantize(net, backend, "dynamic")
