"""`dualml export`: both backends to ONNX, verified in ONNX Runtime against eager, with fixed names,
metadata and clear errors for mismatched checkpoints, bad opsets, exporter failures and files
that disagree with the eager model."""
import json
import subprocess
import sys

import numpy as np
import onnx
import paddle
import pytest
import torch

import dualml
from dualml import nn
from dualml.backend import _IMPLS
from dualml.checkpoint import load_weights
from dualml.errors import ExportError, VerificationError
from dualml.onnx import export as onnx_export
from dualml.onnx import ort
from dualml.testing import selected_backends
from dualml.train.data import load_dataset
from dualml.zoo import create_model


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dualml", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (short) cnn training run: its best checkpoint is what gets exported."""
    run = tmp_path_factory.mktemp("export") / "run"
    # 10 epochs, not the cnn recipe's 20: any trained checkpoint does here, and the suite stays fast
    out = _cli("train", "backend=torch", "model=cnn", "model.channels=[24,48]", "trainer.epochs=10",
               f"trainer.run_dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


@pytest.fixture(scope="module")
def run_dir64(tmp_path_factory):
    """The same training in float64: its checkpoint is the same on every CPU (fp32 training takes
    CPU-dependent branches at max-pool ties), so a figure measured on it, like INT8's accuracy drop
    (ORT's reduce-range integer kernels are exact), holds on every machine. Exported as float32."""
    run = tmp_path_factory.mktemp("export64") / "run"
    out = _cli("train", "backend=torch", "model=cnn", "model.channels=[24,48]", "trainer.epochs=10",
               "trainer.dtype=float64", f"trainer.run_dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    return run


@pytest.mark.parametrize("backend", selected_backends())
def test_export_checkpoint_verified_with_names_and_metadata(run_dir, tmp_path, backend):
    path = tmp_path / f"cnn-{backend}.onnx"
    out = _cli("export", f"backend={backend}", f"checkpoint={run_dir}/best", f"out={path}")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    report_path = path.with_suffix(".report.json")
    assert f"report: {report_path}" in out.stdout
    report = json.loads(report_path.read_text())
    assert report["verification"]["passed"] and report["verification"]["max_abs"] <= 1e-5
    assert set(report["verification"]["runs"]) == {"batch 8", "batch 1"}
    assert report["exporter"] == {"torch": "dynamo", "paddle": "paddle2onnx"}[backend]

    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["backend"] == backend and meta["model"] == "cnn" and meta["dualml_version"] == dualml.__version__
    assert json.loads(meta["model_config"])["channels"] == [24, 48]  # the checkpoint's model, not the default
    _, ckpt = load_weights(run_dir / "best.safetensors")
    assert meta["config_sha256"] == onnx_export.config_hash(ckpt["config"])
    assert meta["checkpoint_sha256"] == ckpt["sha256"]
    (inp,), (outp,) = model.graph.input, model.graph.output
    assert (inp.name, outp.name) == ("input", "output")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"

    # the exported file classifies the test split exactly as the trained model did
    ds = load_dataset({"name": "digits"}, input_shape=(1, 8, 8), seed=0)
    pred = ort.run(ort.session(path), ds.test.x).argmax(1)
    acc = float((pred == ds.test.y).mean())
    assert abs(acc - json.loads((run_dir / "metrics.json").read_text())["test_acc"]) < 1e-9


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_export_int8_through_onnxruntime(run_dir64, tmp_path, mode):
    path = tmp_path / "cnn-int8.onnx"
    out = _cli("export", "backend=paddle", f"checkpoint={run_dir64}/best", f"out={path}", f"quantize={mode}")
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    assert "exported as float32" in out.stderr
    report = json.loads(path.with_suffix(".report.json").read_text())
    assert report["source"]["weights_narrowed"] == "float64 -> float32"
    q = report["int8"]
    assert (tmp_path / "cnn-int8.fp32.onnx").is_file() and report["verification"]["passed"]
    ops = ort.op_histogram(path)
    wanted = {"static": "QuantizeLinear", "dynamic": "DynamicQuantizeLinear"}[mode]
    assert ops.get(wanted, 0) > 0, ops
    assert q["int8_bytes"] < q["fp32_bytes"] and q["size_ratio"] == q["int8_bytes"] / q["fp32_bytes"]
    # the target, on a checkpoint that is the same on every CPU; measured 0.28 (dynamic), -0.28 (static)
    assert q["accuracy_drop_points"] <= 0.5, q
    ds = load_dataset({"name": "digits"}, input_shape=(1, 8, 8), seed=0)
    acc = float((ort.run(ort.session(path), ds.test.x).argmax(1) == ds.test.y).mean())
    assert abs(acc - q["int8_accuracy"]) < 1e-9  # the report's claim is what the file does


def test_export_refuses_checkpoint_of_another_model(run_dir, tmp_path):
    out = _cli("export", f"checkpoint={run_dir}/best", "model=mlp", f"out={tmp_path / 'm.onnx'}")
    assert out.returncode == 2
    assert "model.name: checkpoint 'cnn', config 'mlp'" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "m.onnx").exists()


def test_export_missing_checkpoint_and_bad_opset(tmp_path):
    out = _cli("export", f"checkpoint={tmp_path}/nope", f"out={tmp_path / 'm.onnx'}")
    assert out.returncode == 2 and "is not a checkpoint" in out.stderr
    from dualml_paddle.export import OPSETS  # paddle2onnx 1.3 (lane 2.6) writes 7..16, 2.1 (lane 3) 7..21

    lo, hi = OPSETS["paddle2onnx"]
    out = _cli("export", "backend=paddle", f"opset={hi + 1}", f"out={tmp_path / 'm.onnx'}")
    assert out.returncode == 2 and "paddle2onnx" in out.stderr and f"{lo}..{hi}" in out.stderr


def test_torchscript_exporter_and_reported_fallback(tmp_path, monkeypatch):
    model = create_model("mlp", hidden=[16])
    x = model.input_spec(4)[0].sample(np.random.default_rng(0))
    rep = onnx_export.export_model(model, "torch", None, tmp_path / "ts.onnx", x, exporter="torchscript")
    assert rep["exporter"] == "torchscript" and rep["verification"]["passed"]

    real = torch.onnx.export

    def no_dynamo(*args, **kwargs):
        if kwargs.get("dynamo"):
            raise RuntimeError("dynamo exporter broken for this test")
        return real(*args, **kwargs)
    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    rep = onnx_export.export_model(model, "torch", None, tmp_path / "auto.onnx", x, exporter="auto")
    assert rep["exporter"] == "torchscript"
    assert "dynamo: RuntimeError: dynamo exporter broken for this test" in rep["fallback_reason"]


@pytest.mark.parametrize("backend", selected_backends())
def test_verification_failure_names_the_figure_and_leaves_no_file(tmp_path, monkeypatch, backend):
    model = create_model("mlp", hidden=[16])
    x = model.input_spec(4)[0].sample(np.random.default_rng(0))
    real = onnx_export.eager
    monkeypatch.setattr(onnx_export, "eager", lambda net, b, xb: real(net, b, xb) + 1e-3)
    with pytest.raises(VerificationError, match=r"max abs diff 0\.001.*> atol 1e-05"):
        onnx_export.export_model(model, backend, None, tmp_path / "m.onnx", x)
    assert not (tmp_path / "m.onnx").exists()


class Bessel(nn.Layer):
    """y = I0(x): neither torch exporter nor paddle2onnx 1.3 converts this op."""


class TorchBessel(torch.nn.Module):
    def __init__(self, spec):
        super().__init__()

    def forward(self, x):
        return torch.special.i0(x)


class PaddleBessel(paddle.nn.Layer):
    def __init__(self, spec):
        super().__init__()

    def forward(self, x):
        return paddle.i0(x)


class WithBessel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.odd = Bessel()

    def forward(self, x):
        return self.odd(self.fc(x))


@pytest.fixture
def bessel():
    dualml.register_layer(Bessel, "torch", TorchBessel)
    dualml.register_layer(Bessel, "paddle", PaddleBessel)
    yield WithBessel()
    for b in ("torch", "paddle"):
        _IMPLS.pop((b, Bessel), None)


@pytest.mark.parametrize("backend, names", [
    pytest.param("torch", ["dynamo", "torchscript", "aten::i0"], marks=pytest.mark.backends("torch")),
    pytest.param("paddle", ["paddle2onnx", "i0"], marks=pytest.mark.backends("paddle"))])
def test_exporter_failure_names_exporter_op_and_layer(bessel, tmp_path, backend, names):
    x = np.random.default_rng(0).standard_normal((2, 4)).astype("float32")
    with pytest.raises(ExportError) as info:
        onnx_export.export_model(bessel, backend, None, tmp_path / "m.onnx", x)
    msg = str(info.value)
    assert all(n in msg for n in names), msg
    assert "the first layer that fails alone is 'odd' (Bessel)" in msg and "try" in msg
    assert not (tmp_path / "m.onnx").exists()
