"""INT8 quantization of exported ONNX files (dualml.onnx.int8), for torch's and paddle's exports.

Why these checks: a quantized file can load and run yet compute something else (weights not
recognised as weights, int8 kernels saturating), so every test compares the int8 model's
predictions with the fp32 file's on held-out digits, and looks at the graph for the int8 ops that
prove the arithmetic really changed. The atomic-write tests pin that a failed quantization can never
replace a working model file with a broken one.

The model is a small cnn trained for a few seconds with a plain torch loop (an untrained net's
logits are near-ties, where any rounding flips the argmax and agreement says nothing).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import dualml
from dualml import zoo
from dualml.errors import DualmlError
from dualml.onnx import ort
from dualml.onnx.int8 import (
    calibration_batches,
    compare_int8,
    evaluate_onnx,
    latency_onnx,
    quantize_onnx,
)
from dualml.train.data import load_dataset

torch = pytest.importorskip("torch")

CHANNELS = (16, 32)  # the default cnn; at (8, 16) the QDQ graph outweighs the int8 savings (file grows)


@pytest.fixture(scope="module")
def digits():
    return load_dataset({"name": "digits"}, input_shape=(1, 8, 8), seed=0)


@pytest.fixture(scope="module")
def trained(digits) -> dict[str, np.ndarray]:
    """Canonical weights of a cnn trained 250 Adam steps (lr 1e-2 decayed linearly to 0) on the digits
    train split (~3 s on one thread; on a shared 2-core machine torch's two threads were 10x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = dualml.build(zoo.create_model("cnn", channels=CHANNELS), "torch", seed=0)
    net.train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1 - step / 250)  # settles BN statistics
    x, y = torch.from_numpy(digits.train.x), torch.from_numpy(digits.train.y)
    rng = np.random.default_rng(0)
    for _ in range(250):
        idx = torch.from_numpy(rng.choice(len(y), 64, replace=False))
        loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    net.eval()
    torch.set_num_threads(threads)
    return dualml.get_weights(net)


@pytest.fixture(scope="module")
def torch_onnx(trained, tmp_path_factory) -> Path:
    net = dualml.build(zoo.create_model("cnn", channels=CHANNELS), "torch", weights=trained).eval()
    path = tmp_path_factory.mktemp("fp32") / "cnn-torch.onnx"
    with torch.no_grad():
        torch.onnx.export(net, (torch.zeros(2, 1, 8, 8),), str(path), input_names=[ort.INPUT_NAME],
                          output_names=[ort.OUTPUT_NAME], dynamic_axes={ort.INPUT_NAME: {0: ort.BATCH_DIM}},
                          dynamo=False, opset_version=17)
    return path


@pytest.fixture(scope="module")
def calib(digits) -> list[np.ndarray]:
    return calibration_batches(digits.train.x, 4, 64, seed=0)


def logits(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.run(ort.session(path), x)


def agreement(a: Path, b: Path, x: np.ndarray) -> float:
    return float((logits(a, x).argmax(1) == logits(b, x).argmax(1)).mean())


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_fp32_model_is_trained(torch_onnx, digits):
    assert evaluate_onnx(torch_onnx, digits.test.x, digits.test.y)["accuracy"] > 0.9


def test_static_qdq_int8_smaller_and_agrees(torch_onnx, digits, calib, tmp_path):
    out = tmp_path / "cnn-int8.onnx"
    info = quantize_onnx(torch_onnx, out, "static", calib)
    json.dumps(info)  # JSON-able, as the export command writes it
    ops = ort.op_histogram(out)
    assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DequantizeLinear", 0) >= 1
    assert info["ops"] == ops and info["quant_ops"] == ops["QuantizeLinear"] + ops["DequantizeLinear"]
    assert (info["mode"], info["format"], info["per_channel"]) == ("static", "QDQ", True)
    assert info["calibration_samples"] == sum(len(b) for b in calib) == 256
    assert info["int8_bytes"] == out.stat().st_size < info["fp32_bytes"] == torch_onnx.stat().st_size
    assert info["size_ratio"] == pytest.approx(info["int8_bytes"] / info["fp32_bytes"])
    assert info["int8_weight_bytes"] < 0.35 * info["fp32_weight_bytes"]
    # int8 tensors really are stored: the weights became int8 initializers
    types = {t.data_type for t in onnx.load(str(out)).graph.initializer}
    assert onnx.TensorProto.INT8 in types
    assert agreement(torch_onnx, out, digits.test.x) >= 0.95
    assert leftovers(tmp_path) == []


def test_dynamic_integer_ops_smaller_and_agrees(torch_onnx, digits, tmp_path):
    out = tmp_path / "cnn-dyn.onnx"
    info = quantize_onnx(torch_onnx, out, "dynamic")
    ops = ort.op_histogram(out)
    assert ops.get("DynamicQuantizeLinear", 0) >= 1
    assert ops.get("MatMulInteger", 0) + ops.get("ConvInteger", 0) >= 1
    assert info["calibration_samples"] == 0 and info["calibrate_method"] is None
    assert out.stat().st_size < torch_onnx.stat().st_size
    assert agreement(torch_onnx, out, digits.test.x) >= 0.95


def test_paddle_export_takes_the_same_path(trained, digits, calib, torch_onnx, tmp_path):
    """paddle2onnx keeps weights as Constant nodes and BatchNorm unfused; pre-processing must make
    them weights again, or the 'int8' file quantizes weights at run time and grows."""
    pytest.importorskip("paddle")
    pytest.importorskip("paddle2onnx")
    from dualml.onnx.export import export_model

    # through the adapter, not paddle.onnx.export: on Paddle 3 that calls paddle2onnx 2.x with Polygraphy's
    # constant folding, which pip-installs packages at the first export (the adapter turns it off)
    fp32 = tmp_path / "cnn-paddle.onnx"
    export_model(zoo.create_model("cnn", channels=CHANNELS), "paddle", trained, fp32, digits.test.x[:4], opset=16)
    assert agreement(fp32, torch_onnx, digits.test.x) == 1.0  # same weights, two exporters
    for mode in ("static", "dynamic"):
        out = tmp_path / f"cnn-paddle-{mode}.onnx"
        info = quantize_onnx(fp32, out, mode, calib if mode == "static" else None)
        ops = info["ops"]
        assert "BatchNormalization" not in ops and "Constant" not in ops  # folded by pre-processing
        if mode == "static":
            assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DequantizeLinear", 0) >= 1
            # weights are stored int8 and dequantized; only activations are quantized at run time
            assert ops["QuantizeLinear"] < ops["DequantizeLinear"]
        else:
            assert ops.get("ConvInteger", 0) + ops.get("MatMulInteger", 0) >= 1
        assert out.stat().st_size < fp32.stat().st_size
        assert agreement(fp32, out, digits.test.x) >= 0.95


def test_bad_mode_names_allowed_values(torch_onnx, tmp_path):
    msg = r"mode=statik is not allowed; allowed: dynamic, static \(did you mean 'static'\?\)"
    with pytest.raises(DualmlError, match=msg):
        quantize_onnx(torch_onnx, tmp_path / "q.onnx", "statik")
    assert not (tmp_path / "q.onnx").exists()


@pytest.mark.parametrize("calibration", [None, []])
def test_static_needs_calibration(torch_onnx, tmp_path, calibration):
    with pytest.raises(DualmlError, match="mode=static needs calibration data"):
        quantize_onnx(torch_onnx, tmp_path / "q.onnx", "static", calibration)
    assert list(tmp_path.iterdir()) == []


def test_calibration_must_fit_the_input(torch_onnx, tmp_path):
    msg = r"calibration batch 0 has shape \(4, 8, 8\); input 'input' needs \[n, 1, 8, 8\]"
    with pytest.raises(DualmlError, match=msg):
        quantize_onnx(torch_onnx, tmp_path / "q.onnx", "static", [np.zeros((4, 8, 8), np.float32)])
    with pytest.raises(DualmlError, match="must be a float array"):
        quantize_onnx(torch_onnx, tmp_path / "q.onnx", "static", [np.zeros((4, 1, 8, 8), np.int64)])


def test_missing_model_and_same_path(tmp_path, torch_onnx, calib):
    with pytest.raises(DualmlError, match="does not exist"):
        quantize_onnx(tmp_path / "nope.onnx", tmp_path / "q.onnx", "dynamic")
    with pytest.raises(DualmlError, match="is the fp32 model itself"):
        quantize_onnx(torch_onnx, torch_onnx, "static", calib)


def test_failed_quantization_leaves_existing_file(torch_onnx, calib, tmp_path, monkeypatch):
    import onnxruntime.quantization as oq

    out = tmp_path / "cnn-int8.onnx"
    out.write_bytes(b"previous good model")

    def boom(model_input, model_output, *args, **kwargs):
        Path(model_output).write_bytes(b"half a model")  # as if it died while writing
        raise RuntimeError("quantizer crashed")

    monkeypatch.setattr(oq, "quantize_static", boom)
    with pytest.raises(DualmlError, match="ONNX Runtime's quantize_static failed on .*: quantizer crashed"):
        quantize_onnx(torch_onnx, out, "static", calib)
    assert out.read_bytes() == b"previous good model"
    assert leftovers(tmp_path) == []

    def garbage(model_input, model_output, *args, **kwargs):
        Path(model_output).write_bytes(b"not onnx")  # "succeeds" but writes nothing ORT can load

    monkeypatch.setattr(oq, "quantize_dynamic", garbage)
    with pytest.raises(DualmlError, match="ONNX Runtime cannot load"):
        quantize_onnx(torch_onnx, out, "dynamic")
    assert out.read_bytes() == b"previous good model"
    assert leftovers(tmp_path) == []


def test_success_replaces_existing_file(torch_onnx, tmp_path):
    out = tmp_path / "cnn-int8.onnx"
    out.write_bytes(b"old")
    quantize_onnx(torch_onnx, out, "dynamic")
    assert ort.op_histogram(out).get("DynamicQuantizeLinear", 0) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cnn-int8.onnx"]


def test_evaluate_matches_numpy(torch_onnx, digits):
    x, y = digits.test.x, digits.test.y
    z = logits(torch_onnx, x).astype(np.float64)
    logp = z - z.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    got = evaluate_onnx(torch_onnx, x, y, batch_size=50)  # batches of 50 do not divide 360
    assert got["n"] == len(y)
    assert got["accuracy"] == pytest.approx((z.argmax(1) == y).mean())
    assert got["loss"] == pytest.approx(-logp[np.arange(len(y)), y].mean(), rel=1e-6)
    with pytest.raises(DualmlError, match="same n"):
        evaluate_onnx(torch_onnx, x, y[:-1])


def test_latency_and_compare(torch_onnx, digits, calib, tmp_path):
    lat = latency_onnx(torch_onnx, digits.test.x[:8], repeats=10, warmup=2)
    assert lat["batch"] == 8 and lat["n"] == 10
    assert 0 < lat["p10_ms"] <= lat["median_ms"] <= lat["p90_ms"] and lat["iqr_ms"] >= 0

    out = tmp_path / "q.onnx"
    quantize_onnx(torch_onnx, out, "static", calib)
    c = compare_int8(torch_onnx, out, digits.test.x, digits.test.y, repeats=5, warmup=1)
    json.dumps(c)
    assert set(c["latency"]) == {"batch_1", "batch_64"}
    for v in c["latency"].values():
        assert v["ratio"] == pytest.approx(v["int8"]["median_ms"] / v["fp32"]["median_ms"])
        assert v["fp32"]["n"] == v["int8"]["n"] == 5
    assert c["latency_ratio_b1"] == c["latency"]["batch_1"]["ratio"]
    assert c["int8_ms_b64"] == c["latency"]["batch_64"]["int8"]["median_ms"]
    assert c["size_ratio"] < 1 and c["argmax_agreement"] >= 0.95
    assert c["accuracy_drop_points"] == pytest.approx(100 * (c["fp32_accuracy"] - c["int8_accuracy"]))


def test_calibration_batches_seeded_subset(digits):
    x = digits.train.x
    a = calibration_batches(x, 3, 10, seed=1)
    assert [b.shape for b in a] == [(10, 1, 8, 8)] * 3 and all(b.dtype == np.float32 for b in a)
    assert all(np.array_equal(p, q) for p, q in zip(a, calibration_batches(x, 3, 10, seed=1), strict=True))
    assert not np.array_equal(a[0], calibration_batches(x, 3, 10, seed=2)[0])
    rows = np.concatenate(a).reshape(30, -1)
    assert len(np.unique(rows, axis=0)) == 30  # drawn without replacement (digits has no duplicates here)
    few = calibration_batches(x[:25], 4, 10, seed=0)
    assert [len(b) for b in few] == [10, 10, 5]
    with pytest.raises(DualmlError, match="n_batches=0 is not allowed"):
        calibration_batches(x, 0, 10, seed=0)
