"""`dualml compress`: the pipeline is validated before any training, neutral rewrites (low rank, Conv+BN
folding) are exact on both backends, distillation's loss is Hinton's, and a real run writes its report."""
import json
import subprocess
import sys

import numpy as np
import pytest

import dualml
from dualml.compress.distill import kd_loss, softmax_t
from dualml.compress.factorize import fold_bn, lowrank
from dualml.compress.pipeline import parse_steps
from dualml.config import load_config
from dualml.errors import ConfigError
from dualml.onnx.export import eager
from dualml.testing import selected_backends, skip_if_refused
from dualml.zoo import create_model


def _steps(*steps, model="cnn", backend="torch"):
    return parse_steps({"steps": list(steps)}, create_model(model), backend)


@pytest.mark.parametrize("steps, message", [
    ([{"pass": "prun"}], "pass=prun is not allowed; allowed: .*prune.* \\(did you mean 'prune'\\?\\)"),
    ([{"pass": "prune", "ratio": 1.5}], r"compress.steps.0.ratio=1.5 is not allowed; allowed: a number in \(0, 1\)"),
    ([{"pass": "prune", "ratio": 0}], r"ratio=0 is not allowed"),
    ([{"pass": "prune", "layers": ["conv3"]}],
     "layer 'conv3' does not exist.*allowed \\(Conv2d layers\\): conv1, conv2"),
    ([{"pass": "prune", "layers": ["fc"]}], "layer 'fc' is a Linear"),
    ([{"pass": "prune", "method": "l3"}], "method=l3 is not allowed; allowed: fpgm, l1, l2"),
    ([{"pass": "prune", "speed": 1}], "unknown key 'speed' for pass prune"),
    ([{"pass": "quantize", "mode": "static"}, {"pass": "prune"}], "pass prune after quantize .* is not allowed"),
    ([{"pass": "quantize", "mode": "fp4"}], "mode=fp4 is not allowed; allowed: dynamic, qat, static"),
    ([{"pass": "lowrank"}], "give exactly one of rank"),
    ([{"pass": "distill", "student": "small"}], "student must be a model config"),
    ([{"pass": "distill", "student": {"name": "cnn"}, "alpha": 2}], "alpha=2 is not allowed"),
    ([{"pass": "nm", "n": 4, "m": 4}], "n=4 must be smaller than m=4"),
    ([], "compress.steps must be a non-empty list"),
])
def test_bad_pipelines_are_refused_up_front(steps, message):
    with pytest.raises(ConfigError, match=message):
        _steps(*steps) if steps else parse_steps({"steps": []}, create_model("cnn"), "torch")


def test_unsupported_pass_backend_pair_is_refused(monkeypatch):
    be = dualml.get_backend("paddle")
    monkeypatch.setattr(type(be), "quantization_support", lambda self, mode: "no eager dynamic INT8 in PaddleSlim"
                        if mode == "dynamic" else None)
    with pytest.raises(ConfigError, match="quantize mode=dynamic is not supported on backend=paddle: no eager"):
        _steps({"pass": "quantize", "mode": "dynamic"}, backend="paddle")


def test_every_shipped_pipeline_validates():
    from pathlib import Path

    for path in sorted((Path(__file__).resolve().parents[1] / "configs" / "compress").glob("*.yaml")):
        cfg = load_config(["model=cnn", f"compress={path.stem}"])
        assert parse_steps(cfg.compress, create_model("cnn"), "torch"), path.stem


@pytest.fixture(scope="module")
def trained_cnn():
    from dualml.train.trainer import Trainer

    t = Trainer(load_config(["model=cnn", "trainer.epochs=2"]), write=False, progress=False)
    t.fit()
    return t.model, dualml.get_weights(t.net), t.data


def test_fold_bn_is_the_same_function_on_both_backends(trained_cnn):
    model, w, data = trained_cnn
    r = fold_bn(model, w)
    assert set(r.changed) == {"bn1", "bn2"} and not any(k.startswith("bn") for k in r.weights)
    x = data.test.x[:64]
    for b in selected_backends():
        ref = eager(dualml.build(model, b, weights=w), b, x)
        got = eager(dualml.build(r.model, b, weights=r.weights), b, x)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)
        assert (got.argmax(1) == ref.argmax(1)).all()


def test_lowrank_is_the_truncated_svd_on_both_backends():
    model = create_model("mlp", hidden=[128, 64])
    w = dualml.init_weights(model, 0)
    r = lowrank(model, w, rank=8, layers=["body.0"])
    assert r.changed["body.0"]["rank"] == 8 and r.changed["body.0"]["params_after"] == 8 * (64 + 128)
    u, s, vt = np.linalg.svd(w["body.0.weight"].astype(np.float64), full_matrices=False)
    w8 = (u[:, :8] * s[:8]) @ vt[:8]
    np.testing.assert_allclose(r.weights["body.0.1.weight"] @ r.weights["body.0.0.weight"], w8, atol=1e-5)
    same_as_w8 = dict(w, **{"body.0.weight": w8.astype(np.float32)})
    x = np.random.default_rng(0).random((16, 64)).astype("float32")
    for b in selected_backends():
        np.testing.assert_allclose(eager(dualml.build(r.model, b, weights=r.weights), b, x),
                                   eager(dualml.build(model, b, weights=same_as_w8), b, x), atol=1e-5, rtol=1e-5)
    assert "saves nothing" in lowrank(model, w, energy=1.0).skipped["head"]


@pytest.mark.parametrize("backend", selected_backends())
def test_kd_loss_is_hinton_on_both_backends(backend):
    be = dualml.get_backend(backend)
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((5, 10)).astype("float32"), rng.standard_normal((5, 10)).astype("float32")
    y = rng.integers(0, 10, 5)
    t, a = 3.0, 0.6
    got = be.item(kd_loss(lambda x: teacher, t, a)(be, be.tensor(student), be.tensor(y), None))
    p = softmax_t(teacher, t).astype(np.float64)
    log_q = np.log(softmax_t(student, t).astype(np.float64))
    hard = -np.log(softmax_t(student, 1.0).astype(np.float64)[np.arange(5), y]).mean()
    want = a * t * t * (p * (np.log(p) - log_q)).sum(1).mean() + (1 - a) * hard  # KL, not cross-entropy
    assert abs(got - want) < 1e-5


def test_compress_cli_runs_a_pipeline_and_reports(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dualml", "compress", "backend=paddle", "model=cnn",
                          "compress=fold_bn", "trainer.epochs=2", "compress.latency_repeats=3",
                          f"out_dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr[-2000:]
    folder = tmp_path / "compress" / "fold_bn-cnn-paddle"
    assert f"report: {folder / 'report.json'}" in out.stdout
    report = json.loads((folder / "report.json").read_text())
    base, folded = report["stages"][0], report["stages"][1]
    assert folded["params"] == base["params"] - 2 * (16 + 32) + (16 + 32)  # BN affine gone, conv biases added
    assert folded["ort_test_acc"] == pytest.approx(base["ort_test_acc"], abs=1 / 360)
    assert (folder / "compress.png").stat().st_size > 0 and (folder / "stage1-fold_bn.onnx").is_file()
    assert all(r["latency_ms_b1"] > 0 for r in report["stages"])


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("backend, pipeline", [pytest.param(b, p, marks=pytest.mark.backends(b)) for b, p in
                                               [("torch", "ptq"), ("paddle", "qat"), ("paddle", "dynamic")]])
def test_quantize_pipeline_writes_int8_onnx_with_the_claimed_accuracy(backend, pipeline, tmp_path):
    """The quantize pass inside a pipeline: the exported stage holds int8 weights and quantization ops,
    ONNX Runtime reproduces the native int8 model's accuracy (the report's claim), and weight bytes fall."""
    from dualml.compress.pipeline import run_pipeline

    cfg = load_config([f"backend={backend}", "model=cnn", f"compress={pipeline}", "trainer.epochs=3",
                       "compress.latency_repeats=3", f"out_dir={tmp_path}"])
    mode = {"ptq": "static"}.get(pipeline, pipeline)
    skip_if_refused(dualml.get_backend(backend).quantization_support(mode),
                    lambda: parse_steps(cfg.compress, create_model("cnn"), backend), f"quantize mode={mode}")
    report = run_pipeline(cfg, tmp_path)
    base, q = report["stages"][0], report["stages"][1]
    assert q["quantized"] == ("qat" if pipeline == "qat" else "static" if pipeline == "ptq" else "dynamic")
    assert q["int8_ops"] > 0
    # ONNX Runtime's integer kernels and the framework's int8 (paddle: fake-quant float) arithmetic round
    # differently: the logits may differ by about one int8 step of the output range, not more
    assert q["ort_vs_native_max_abs"] <= 2 * q["native_max_abs_output"] / 127, q
    assert base["ort_vs_native_max_abs"] < 1e-4  # the fp32 baseline file computes what the native model does
    assert q["acc_drop_points"] <= 2.0, (base["ort_test_acc"], q["ort_test_acc"])
    if pipeline == "dynamic":  # Linear weights only: fc is 32*10 of the cnn's 5178 parameters
        assert q["weight_bytes"] < base["weight_bytes"]
    else:
        assert q["weight_bytes_ratio"] < 0.33, q["weight_bytes_ratio"]
        assert q["size_ratio"] < 0.7


@pytest.mark.backends("paddle")
@pytest.mark.parametrize("pipeline, what", [("ptq", "quantize mode=static"), ("qat", "quantize mode=qat"),
                                            ("prune_qat", "prune selection=backend")])
def test_paddle_pipelines_run_or_are_refused_in_one_line(pipeline, what, tmp_path):
    """Each paddle pipeline either validates (its framework tools exist on this framework line) or the
    command refuses it before any training: one ``error:`` line naming the lane that has it, exit 2."""
    be = dualml.get_backend("paddle")
    refusal = be.filter_selection_support() if "prune" in what else be.quantization_support(what.rsplit("=", 1)[1])
    cfg = load_config(["backend=paddle", "model=cnn", f"compress={pipeline}"])
    if refusal is None:
        assert parse_steps(cfg.compress, create_model("cnn"), "paddle")
        return
    out = subprocess.run([sys.executable, "-m", "dualml", "compress", "backend=paddle", "model=cnn",
                          f"compress={pipeline}", f"out_dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and what in lines[0], out.stderr
    assert refusal in lines[0] and "lane 2.6" in lines[0]
    assert not (tmp_path / "compress").exists()  # refused before anything ran
