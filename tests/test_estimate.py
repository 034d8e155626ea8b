"""`dualml estimate`: each term of the memory formula against hand-computed bytes, input validation,
and one end-to-end run measuring both backends in their own processes."""
import json
import subprocess
import sys

import pytest

from dualml.cli import main
from dualml.config import load_config
from dualml.evidence.estimate import (
    SAFETY_MARGIN,
    activation_bytes,
    dataset_bytes,
    estimate,
    markdown,
    parameter_terms,
    run,
    synthetic_dataset,
)
from dualml.train.optim import parse_optim
from dualml.zoo import CNN, MLP


def _tiny() -> MLP:
    return MLP(in_features=4, hidden=(8,), num_classes=3)  # 4*8+8 + 8*3+3 = 67 weights


@pytest.mark.parametrize("optimizer, slots", [({"name": "adam"}, 2), ({"name": "adamw"}, 2),
                                              ({"name": "sgd", "momentum": 0.9}, 1), ({"name": "sgd"}, 0)])
def test_parameter_gradient_and_optimizer_terms(optimizer, slots):
    terms = parameter_terms(_tiny(), parse_optim(optimizer).slots)
    assert terms == {"parameters": 67 * 4, "gradients": 67 * 4, "optimizer_state": slots * 67 * 4}


def test_frozen_parameters_have_no_gradient_or_state():
    terms = parameter_terms(_tiny(), ("exp_avg", "exp_avg_sq"), freeze=["body.*"])
    head = 8 * 3 + 3
    assert terms == {"parameters": 67 * 4, "gradients": head * 4, "optimizer_state": 2 * head * 4}


def test_batchnorm_running_stats_are_parameters_but_not_trained():
    # conv1 1*2*9, bn1 2+2 (+2+2 running), conv2 2*4*9, bn2 4+4 (+4+4 running), fc 4*10+10
    trainable, running = 18 + 4 + 72 + 8 + 50, 4 + 8
    terms = parameter_terms(CNN(channels=(2, 4)), ("momentum_buffer",))
    assert terms == {"parameters": (trainable + running) * 4, "gradients": trainable * 4,
                     "optimizer_state": trainable * 4}


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_activations_are_what_backward_keeps_at_its_peak(batch):
    act = activation_bytes(_tiny(), batch, "torch")
    # flatten (a view) [b, 4], Linear [b, 8], ReLU [b, 8], head [b, 3]
    assert [r["output_shape"] for r in act.rows] == [[batch, 4], [batch, 8], [batch, 8], [batch, 3]]
    # kept: the input (read by the first Linear) and the ReLU output (read by ReLU's backward and the
    # head's, counted once); the first Linear's output is freed once ReLU has run
    assert act.kept == batch * (4 + 8) * 4 and act.internal == 0
    # peak in backward at the ReLU: both kept tensors + the gradients of its output and input
    assert act.peak_at == "backward (body.1)" and act.transient == batch * (8 + 8) * 4
    assert act.logits == batch * 3 * 4 and act.total == batch * (4 + 8 + 8 + 8 + 3) * 4


def _autograd_saved_bytes(backend: str, model, batch: int) -> int:
    """Bytes of the non-parameter tensors the framework's autograd saves for backward in one
    train-mode forward (each storage once), read with its saved_tensors_hooks."""
    import numpy as np

    import dualml

    be = dualml.get_backend(backend)
    net = dualml.build(model, backend)
    be.set_train(net, True)
    x = be.tensor(model.input_spec(batch)[0].sample(np.random.default_rng(0)))
    seen: dict[int, int] = {}
    if backend == "torch":
        import torch

        params = {p.untyped_storage().data_ptr() for p in net.parameters()}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
    else:
        import paddle

        params = {p.data_ptr() for p in net.parameters()}

        def pack(t):
            seen[t.data_ptr()] = int(np.prod(t.shape)) * t.element_size()
            return t
        hooks = paddle.autograd.saved_tensors_hooks(pack, lambda t: t)
    with hooks:
        net(x)
    return sum(v for k, v in seen.items() if k not in params)


@pytest.mark.parametrize("name, params, batch", [("mlp", {}, 64), ("cnn", {}, 64), ("transformer", {}, 64),
                                                 ("transformer", {"dropout": 0.1}, 16),
                                                 ("resnet18", {"image_size": 64}, 4)])
def test_kept_activations_match_what_autograd_saves(backend, name, params, batch):
    """The activation rules against the frameworks themselves. Measured: torch matches to 0-3%;
    paddle keeps 7% less on cnn/resnet18 (its max-pool backward reads the float32 output where torch
    keeps int64 indices, which the rule assumes). Torch with dropout > 0 in attention is the known
    gap: it leaves the fused attention path and keeps ~35% more than the rule."""
    from dualml.zoo import create_model

    model = create_model(name, **params)
    act = activation_bytes(model, batch, backend)
    saved = _autograd_saved_bytes(backend, model, batch)
    # the rule counts the input batch, which autograd only "saves" where the first layer reads it
    tol = 0.40 if (backend, params) == ("torch", {"dropout": 0.1}) else 0.10
    assert act.kept + act.internal == pytest.approx(saved, rel=tol), (act.kept, act.internal, saved)


def test_synthetic_data_bytes():
    ds = synthetic_dataset(_tiny(), 10, 3)
    assert ds.train.x.shape == (10, 4) and str(ds.train.x.dtype) == "float32" and ds.train.y.max() < 3
    assert len(ds.val) == len(ds.test) == 0
    assert dataset_bytes(ds) == 10 * 4 * 4 + 10 * 8


def test_estimate_of_default_mlp_on_digits():
    est = estimate(load_config(["model=mlp", "estimate.measure=false"]))
    params = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    assert params == 17_226
    assert est.terms == {"parameters": params * 4, "gradients": params * 4, "optimizer_state": 2 * params * 4,
                         # per sample, peak in backward at the first ReLU: the kept input (64) and ReLU
                         # output (128; the second ReLU's output is freed by then), the gradients of
                         # that ReLU's output and input (128 + 128), the logits (10)
                         "activations": 64 * (64 + 128 + 128 + 128 + 10) * 4,
                         # loading digits peaks above what the Trainer keeps (1,797 x (64 float32 + int64))
                         "data_cache": est.terms["data_cache"]}
    assert est.terms["data_cache"] > 1797 * (64 * 4 + 8)
    assert est.data["source"] == "config"
    assert est.total == est.subtotal + round(est.subtotal * SAFETY_MARGIN)
    lean = estimate(load_config(["model=mlp", "estimate.measure=false", "estimate.margin=0.2"]))
    # the traced loading peak may differ by a few KB between loads (one-time caches), the rest is exact
    assert {k: v for k, v in lean.terms.items() if k != "data_cache"} == \
        {k: v for k, v in est.terms.items() if k != "data_cache"}
    assert lean.total == lean.subtotal + round(lean.subtotal * 0.2)


def test_model_that_does_not_fit_the_data_gets_synthetic_data(tmp_path):
    cfg = load_config(["model=transformer", "data.batch_size=4", "estimate.steps=2", "estimate.measure=false",
                       f"out_dir={tmp_path}"])
    report, out = run(cfg)
    data = report["estimate"]["data"]
    assert data["source"] == "synthetic" and data["samples"] == 8 and "does not fit" in data["reason"]
    assert report["estimate"]["terms"]["data_cache"] == 8 * (8 * 8 + 8)  # 8 int64 tokens + an int64 label
    assert (out / "report.md").read_text() == markdown(report)
    assert json.loads((out / "report.json").read_text())["measured"] == {}


@pytest.mark.parametrize("arg, message", [
    ("data.batch_size=0", "data.batch_size=0 is not allowed; allowed: an integer >= 1"),
    ("estimate.steps=0", "estimate.steps=0 is not allowed; allowed: an integer >= 1"),
    ("estimate.data=disk", "estimate.data=disk is not allowed; allowed: auto, config, synthetic"),
    ("estimate.backends=[tf]", "estimate.backends=tf is not allowed; allowed: paddle, torch"),
    ("estimate.margin=-0.1", "estimate.margin=-0.1 is not allowed; allowed: a number from 0 to 10"),
    ("model=transformer estimate.data=config", "estimate.data=config is not allowed here: data digits does not fit "
                                               "transformer (samples (8, 8) vs input (8,); dtype float32 vs int64)"),
])
def test_bad_input_is_one_line_and_exit_2(arg, message, capsys, tmp_path):
    assert main(["estimate", *arg.split(), "estimate.measure=false", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1


@pytest.mark.backends("torch", "paddle")  # `dualml estimate` measures both
def test_cli_measures_both_backends(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dualml", "estimate", "model=mlp", "data.batch_size=8",
                           "estimate.steps=2", f"out_dir={tmp_path}"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "estimate" / "mlp"
    assert f"{out / 'report.json'}" in proc.stdout
    report = json.loads((out / "report.json").read_text())
    e = report["estimate"]
    assert e["terms"]["activations"] == 8 * (64 + 128 + 128 + 128 + 10) * 4
    assert e["terms"]["optimizer_state"] == 2 * 17_226 * 4
    assert e["subtotal"] == sum(e["terms"].values()) and e["total"] == e["subtotal"] + e["margin"]
    for b in ("torch", "paddle"):
        m, c = report["measured"][b], report["comparison"][b]
        assert m["backend"] == b and m["steps"] == 2 and len(m["losses"]) == 2
        assert m["peak_rss"] > m["baseline"] > 0 and m["delta"] == m["peak_rss"] - m["baseline"] > 0
        assert [p["phase"] for p in m["phases"]] == ["data loaded", "trainer built", "step 1", "step 2"]
        assert c["estimate"] == e["total"] and c["ratio"] == pytest.approx(e["total"] / m["delta"])
        if m["device"] == "cpu":  # the device peak is a GPU counter: skipped with the reason on a CPU run
            assert m["device_peak"] is None and c["device_ratio"] is None
            assert m["device_peak_note"].startswith("skipped: the run was on cpu")
        else:
            assert m["device_peak"] > 0 and c["device_ratio"] == pytest.approx(e["total"] / m["device_peak"])
    # same seed, same batches: the two backends train the same curve
    assert report["measured"]["torch"]["losses"] == pytest.approx(report["measured"]["paddle"]["losses"], rel=1e-4)
    md = (out / "report.md").read_text()
    assert "| parameters |" in md and "| torch |" in md and "| paddle |" in md and "within 30%" in md
    assert "Device memory" in md
