"""Transfer learning (issue #18): trainer.init_from, trainer.unfreeze, the gradient-reversal layer and DANN.

Tolerances: a tensor copied from a checkpoint, a frozen parameter and a resumed run are compared bit for bit
(``array_equal``); the reversed gradient too (``-lambda * g`` is one float32 multiply on both sides and in
numpy); the DANN loss against a float64 numpy formula at 1e-6 relative (a float32 log-softmax and sum).
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from omegaconf import OmegaConf
from sklearn.datasets import load_digits

import dualml
from dualml import nn
from dualml.build import build, get_weights, native_leaves
from dualml.checkpoint import load_weights, save_weights
from dualml.config import load_config
from dualml.errors import ConfigError
from dualml.module import init_weights, manifest
from dualml.testing import backend_pairs, selected_backends
from dualml.train.data import Dataset, Split, from_arrays
from dualml.train.trainer import Trainer
from dualml.zoo import CNN, MLP

BACKENDS = selected_backends()


def _digits(classes: range, n_per_class: int = 40) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    keep = np.concatenate([np.flatnonzero(y == c)[:n_per_class] for c in classes])
    return (x[keep] / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), y[keep].astype(np.int64)


def _cfg(backend: str, **trainer: object) -> OmegaConf:
    cfg = load_config([f"backend={backend}", "model=cnn", "data.batch_size=32", "trainer.schedule.name=constant"])
    for k, v in trainer.items():
        OmegaConf.update(cfg, f"trainer.{k}", v, merge=False)
    return cfg


def _trainer(backend: str, model: dualml.Module, data: Dataset, run_dir=None, **trainer: object) -> Trainer:
    cfg = _cfg(backend, **trainer)
    if run_dir is not None:
        cfg.trainer.run_dir = str(run_dir)
    return Trainer(cfg, model=model, dataset=data, write=run_dir is not None, progress=False, model_name="cnn")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> dict[str, object]:
    """A cnn with a 5-class head trained a few steps on digits 0-4, once per selected backend (its run folder)."""
    out = {}
    for be in BACKENDS:
        run = tmp_path_factory.mktemp(f"pre-{be}") / "run"
        dualml.fit(CNN(num_classes=5), _digits(range(5)), be, max_steps=4, run_dir=run, progress=False)
        out[be] = run
    return out


@pytest.fixture(scope="module")
def target() -> Dataset:
    return from_arrays(*_digits(range(5, 10)), seed=0)


# ------------------------------------------------------------------ init_from
@pytest.mark.parametrize("form", ["RUN/best", "RUN/last", "RUN", "RUN/best.safetensors"])
def test_init_from_loads_the_body_and_seeds_the_new_head(backend, pretrained, target, form, tmp_path):
    run = pretrained[backend]
    spec = form.replace("RUN", str(run))
    t = _trainer(backend, CNN(num_classes=10), target, run_dir=tmp_path / "ft", init_from=spec, max_steps=1)
    head = ["fc.weight", "fc.bias"]
    body = [n for n in manifest(CNN()) if n not in head]
    rep = t.init_report
    assert rep.loaded == body and rep.new == head
    assert rep.skipped == [{"name": "fc.weight", "reason": "shape mismatch: checkpoint [5, 32], model [10, 32]"},
                           {"name": "fc.bias", "reason": "shape mismatch: checkpoint [5], model [10]"}]
    ckpt_file = run / ("last.safetensors" if form == "RUN/last" else "best.safetensors")
    arrays, _ = load_weights(ckpt_file)
    got, seeded = get_weights(t.net), init_weights(CNN(num_classes=10), 0)
    for name in body:  # copies: bit for bit
        np.testing.assert_array_equal(got[name], arrays[f"model/{name}"], err_msg=name)
    for name in head:  # the seeded init of a run from scratch, also bit for bit
        np.testing.assert_array_equal(got[name], seeded[name], err_msg=name)
    assert not np.array_equal(got["conv1.weight"], seeded["conv1.weight"])  # not the scratch body
    t.metrics = t.fit()
    saved = json.loads((tmp_path / "ft" / "init_from.json").read_text())
    assert saved["loaded"] == body and saved["new"] == head and saved["skipped"] == rep.skipped
    assert saved["checkpoint"] == str(ckpt_file) and saved["checkpoint_backend"] == backend
    assert t.metrics["init_from"] == {"checkpoint": str(ckpt_file), "loaded": len(body), "skipped": 2, "new": 2}
    assert rep.summary().startswith(f"init_from {ckpt_file}: loaded {len(body)} tensors, skipped 2: fc.weight (shape "
                                    "mismatch") and "\n" not in rep.summary()


def test_init_from_plain_weights_file_and_not_in_model(tmp_path, target):
    """A ``dualml.save_weights`` file (no ``model/`` prefix); a tensor the model lacks is skipped, named."""
    be = BACKENDS[0]
    w = init_weights(CNN(num_classes=10), 7)
    w["extra.weight"] = np.ones((2, 2), np.float32)
    save_weights(tmp_path / "w.safetensors", w)
    t = _trainer(be, CNN(num_classes=10), target, init_from=str(tmp_path / "w.safetensors"), max_steps=1)
    assert t.init_report.new == [] and t.init_report.skipped == [{"name": "extra.weight", "reason": "not in model"}]
    got = get_weights(t.net)
    for name in manifest(CNN(num_classes=10)):
        np.testing.assert_array_equal(got[name], w[name], err_msg=name)


@pytest.mark.parametrize("first,second", backend_pairs())
def test_init_from_across_backends(first, second, pretrained, target):
    """Pretrained on one backend, fine-tuned on the other: the same tensors load, bit for bit, and it trains."""
    run = pretrained[first]
    arrays, _ = load_weights(run / "best.safetensors")
    t = _trainer(second, CNN(num_classes=10), target, init_from=f"{run}/best", max_steps=3)
    got = get_weights(t.net)
    for name in t.init_report.loaded:
        np.testing.assert_array_equal(got[name], arrays[f"model/{name}"], err_msg=name)
    metrics = t.fit()
    assert metrics["steps"] == 3 and np.isfinite([r["loss"] for r in t.history.steps]).all()


def test_init_from_via_fit(pretrained):
    be = BACKENDS[-1]
    t = dualml.fit(CNN(num_classes=10), _digits(range(5, 10)), be, max_steps=2, progress=False,
                   init_from=f"{pretrained[BACKENDS[0]]}/best")
    assert len(t.init_report.loaded) == len(manifest(CNN())) - 2 and t.metrics["init_from"]["new"] == 2


def test_fine_tune_run_resumes_without_init_from(pretrained, target, tmp_path):
    """A fine-tune's checkpoints hold its weights: the resume drops ``init_from`` (which the resume check allows)
    and ends where the uninterrupted fine-tune ends, bit for bit."""
    be = BACKENDS[0]
    spec = f"{pretrained[be]}/best"
    whole = _trainer(be, CNN(num_classes=10), target, run_dir=tmp_path / "whole", init_from=spec, max_steps=4)
    whole.fit()
    _trainer(be, CNN(num_classes=10), target, run_dir=tmp_path / "part", init_from=spec, max_steps=2).fit()
    rest = _trainer(be, CNN(num_classes=10), target, run_dir=tmp_path / "part", resume=True, max_steps=4)
    assert rest.init_report is None
    rest.fit()
    a, b = get_weights(whole.net), get_weights(rest.net)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_init_from_refusals(pretrained, target, tmp_path):
    be = BACKENDS[0]
    run = pretrained[be]
    cases = [
        (str(tmp_path / "nope"), {}, f"trainer.init_from={tmp_path / 'nope'} is not a checkpoint: no file"),
        ("NOTDUALML", {}, "is a safetensors file but not a dualml checkpoint"),
        ("GARBAGE", {}, "is not a readable safetensors file"),
        ("MLP", {}, "no tensor of"),
        (f"{run}/best", {"resume": True, "run_dir": str(run)},
         f"trainer.init_from={run}/best with trainer.resume=true is not allowed"),
    ]
    from safetensors.numpy import save_file

    save_file({"a": np.zeros(2, np.float32)}, str(tmp_path / "plain.safetensors"))
    (tmp_path / "garbage.safetensors").write_bytes(b"not a safetensors file at all")
    save_weights(tmp_path / "mlp.safetensors", init_weights(MLP(), 0))
    files = {"NOTDUALML": tmp_path / "plain.safetensors", "GARBAGE": tmp_path / "garbage.safetensors",
             "MLP": tmp_path / "mlp.safetensors"}
    for spec, extra, expected in cases:
        spec = str(files.get(spec, spec))
        with pytest.raises(ConfigError) as info:
            _trainer(be, CNN(num_classes=10), target, init_from=spec, max_steps=1, **extra)
        msg = str(info.value)
        assert expected in msg and "\n" not in msg, msg
        assert msg.startswith("trainer.init_from="), msg
    # nothing matched: the message shows both naming schemes
    with pytest.raises(ConfigError, match=r"checkpoint: body\.0\.bias, body\.0\.weight.*model: conv1\.weight"
                                          r".*allowed: a checkpoint of a model that shares layers"):
        _trainer(be, CNN(num_classes=10), target, init_from=str(files["MLP"]), max_steps=1)


# ------------------------------------------------------------------ freeze + gradual unfreezing
def _small() -> Dataset:
    return from_arrays(*_digits(range(10), 20), seed=0)  # 140 train rows: 4 steps of 32 per epoch


def _per_step_weights(t: Trainer) -> list[dict[str, np.ndarray]]:
    seen = [get_weights(t.net)]
    t.after_step = lambda tr: seen.append(get_weights(tr.net))
    t.fit()
    return seen


def test_unfreeze_at_epoch(backend):
    t = _trainer(backend, CNN(), _small(), epochs=3, freeze=["conv1.*", "bn1.*"],
                 unfreeze=[{"at_epoch": 1, "params": "conv1.*"}])
    spe = t.steps_per_epoch
    seen = _per_step_weights(t)
    assert len(seen) == 3 * spe + 1
    for i, w in enumerate(seen):
        for name in ("bn1.weight", "bn1.bias"):  # never unfrozen
            np.testing.assert_array_equal(w[name], seen[0][name])
        if i <= spe:  # frozen through the first epoch: bit-identical
            np.testing.assert_array_equal(w["conv1.weight"], seen[0]["conv1.weight"], err_msg=f"step {i}")
        else:  # trained from the first step of the second epoch on
            assert not np.array_equal(w["conv1.weight"], seen[i - 1]["conv1.weight"]), f"step {i}"
        if i:
            assert not np.array_equal(w["conv2.weight"], seen[i - 1]["conv2.weight"])


def test_unfreeze_composes_with_param_groups(backend):
    """An unfrozen parameter trains at its group's rate: lr_mult 0 keeps conv1 still after it thaws, while
    conv2 (default group) moves; the optimizer was built over the frozen parameter's group."""
    t = _trainer(backend, CNN(), _small(), epochs=2, freeze=["conv1.*"], optimizer={"name": "sgd", "lr": 0.1},
                 unfreeze=[{"at_epoch": 1, "params": "conv1.*"}], param_groups=[{"params": "conv1.*", "lr_mult": 0.0}])
    seen = _per_step_weights(t)
    np.testing.assert_array_equal(seen[-1]["conv1.weight"], seen[0]["conv1.weight"])
    assert not np.array_equal(seen[-1]["conv2.weight"], seen[0]["conv2.weight"])
    t2 = _trainer(backend, CNN(), _small(), epochs=2, freeze=["conv1.*"], optimizer={"name": "sgd", "lr": 0.1},
                  unfreeze=[{"at_epoch": 1, "params": "conv1.*"}], param_groups=[{"params": "conv1.*", "lr_mult": 2.0}])
    seen2 = _per_step_weights(t2)
    spe = t2.steps_per_epoch
    np.testing.assert_array_equal(seen2[spe]["conv1.weight"], seen2[0]["conv1.weight"])
    assert not np.array_equal(seen2[-1]["conv1.weight"], seen2[0]["conv1.weight"])


def test_resume_across_the_unfreeze_epoch(backend, tmp_path):
    """Stopped mid-way through the epoch after conv1 thawed, resumed: the same weights, bit for bit, as one
    uninterrupted run (the frozen set and each parameter's own Adam step count are restored)."""
    keys = {"freeze": ["conv1.*", "bn1.*"], "unfreeze": [{"at_epoch": 1, "params": "conv1.*"}]}
    whole = _trainer(backend, CNN(), _small(), run_dir=tmp_path / "whole", epochs=3, **keys)
    whole.fit()
    spe = whole.steps_per_epoch
    part = _trainer(backend, CNN(), _small(), run_dir=tmp_path / "part", epochs=3, max_steps=spe + 2, **keys)
    part.fit()
    rest = _trainer(backend, CNN(), _small(), run_dir=tmp_path / "part", epochs=3, resume=True, **keys)
    assert rest.frozen_now == rest.frozen  # before fit: the resumed epoch's set is applied in the loop
    rest.fit()
    assert rest.step == 3 * spe and rest.frozen_now == [n for n in rest.frozen if n.startswith("bn1")]
    a, b = get_weights(whole.net), get_weights(rest.net)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


@pytest.mark.parametrize("first,second", backend_pairs())
def test_cross_backend_resume_after_unfreeze(first, second, tmp_path):
    """Stopped on one backend after conv1 thawed, resumed on the other: the loss continues the uninterrupted
    run's curve within test_training's cross-backend resume bar (1e-4 relative). conv1's Adam moments and its
    own step count (not the global one) must make it across for that."""
    keys = {"freeze": ["conv1.*"], "unfreeze": [{"at_epoch": 1, "params": "conv1.*"}],
            "optimizer": {"name": "adam", "lr": 1e-3}}
    ref = _trainer(first, CNN(), _small(), epochs=3, **keys)
    ref.fit()
    spe = ref.steps_per_epoch
    _trainer(first, CNN(), _small(), run_dir=tmp_path / "r", epochs=3, max_steps=spe + 2, **keys).fit()
    cont = _trainer(second, CNN(), _small(), run_dir=tmp_path / "r", epochs=3, resume=True, **keys)
    cont.fit()
    ours = [r["loss"] for r in cont.history.steps[spe + 2:]]
    theirs = [r["loss"] for r in ref.history.steps[spe + 2:]]
    assert len(ours) == 2 * spe - 2
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


@pytest.mark.parametrize("unfreeze,freeze,expected", [
    ([{"at_epoch": 1, "params": "nothing.*"}], ["conv1.*"],
     "trainer.unfreeze[0].params='nothing.*' matches no parameter"),
    ([{"at_epoch": 0, "params": "conv1.*"}], ["conv1.*"],
     "trainer.unfreeze[0].at_epoch=0 is not allowed; allowed: an integer from 1 to 2"),
    ([{"at_epoch": 3, "params": "conv1.*"}], ["conv1.*"],
     "trainer.unfreeze[0].at_epoch=3 is not allowed; allowed: an integer from 1 to 2"),
    ([{"at_epoch": 1, "params": "conv2.*"}], ["conv1.*"],
     "trainer.unfreeze[0].params='conv2.*' is not allowed: conv2.weight is not frozen at epoch 1"),
    ([{"at_epoch": 1, "params": "conv1.*"}, {"at_epoch": 2, "params": "conv1.*"}], ["conv1.*"],
     "trainer.unfreeze[1].params='conv1.*' is not allowed: conv1.weight is not frozen at epoch 2"),
    ([{"at_epoch": 1, "params": "conv1.*"}], [], "trainer.unfreeze is not allowed without trainer.freeze"),
    ([{"at_epoch": 1, "param": "conv1.*"}], ["conv1.*"],
     "unknown config key 'trainer.unfreeze[0].param'"),
])
def test_unfreeze_refusals(unfreeze, freeze, expected):
    with pytest.raises(ConfigError) as info:
        _trainer(BACKENDS[0], CNN(), _small(), epochs=3, freeze=freeze, unfreeze=unfreeze)
    assert expected in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_new_keys_are_in_the_shipped_config():
    cfg = load_config([])
    assert cfg.trainer.unfreeze == [] and cfg.trainer.init_from is None
    with pytest.raises(ConfigError, match=r"trainer.init_from=\[5\] is not allowed; allowed: null or a string"):
        load_config(["trainer.init_from=[5]"])


# ------------------------------------------------------------------ the gradient-reversal layer
def test_grad_reverse_gradient_is_minus_lambda_upstream(backend):
    be = dualml.get_backend(backend)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 5)).astype(np.float32)
    g = rng.standard_normal((3, 5)).astype(np.float32)
    from dualml.train.dann import set_grl_lambda

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.grl = nn.GradReverse(0.7)

        def forward(self, x):
            return self.grl(x)

    net = build(Net(), backend)
    for lam in (0.7, 0.25):
        if lam != 0.7:
            assert set_grl_lambda(net, lam) == 1
        t = be.tensor(x, requires_grad=True)
        out = net(t)
        np.testing.assert_array_equal(be.numpy(out), x)  # identity forward
        be.ops.sum(be.ops.mul(out, be.tensor(g))).backward()
        np.testing.assert_array_equal(be.input_grad(t), g * np.float32(-lam))
    with be.no_grad():
        np.testing.assert_array_equal(be.numpy(net(be.tensor(x))), x)


def test_grad_reverse_exports_as_identity(backend, tmp_path):
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.grl, self.b = nn.Linear(4, 6), nn.GradReverse(1.0), nn.Linear(6, 3)

        def forward(self, x):
            return self.b(self.grl(self.a(x)))

    import onnx

    from dualml.onnx.export import export_model
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    rep = export_model(Net(), backend, None, tmp_path / "m.onnx", x)
    assert rep["verification"]["passed"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "m.onnx")).graph.node}
    assert ops <= {"Gemm", "MatMul", "Add", "Identity", "Transpose", "Reshape", "Shape", "Constant"}, ops


def test_parity_suite_has_grad_reverse_cases():
    from dualml.parity import default_cases
    names = [c.name for c in default_cases(zoo=False, backends=BACKENDS)]
    assert "layer:GradReverse" in names and "layer:GradReverse-4d" in names


# ------------------------------------------------------------------ DANN
def test_dann_loss_matches_numpy(backend):
    from dualml.train.dann import DANN, dann_loss
    from dualml.zoo import CNNBody

    be = dualml.get_backend(backend)
    net = build(DANN(CNNBody(), 32), backend, seed=3)
    be.set_train(net, True)
    x = np.random.default_rng(1).random((6, 1, 8, 8)).astype(np.float32)
    y = np.array([3, -1, 0, -1, -1, 9], np.int64)
    logits = net(be.tensor(x))
    for adapt in (False, True):
        loss = be.item(dann_loss(be, logits, be.tensor(y), x, 10, adapt))
        z = be.numpy(logits).astype(np.float64)
        lp = lambda a: a - a.max(1, keepdims=True) - np.log(np.exp(a - a.max(1, keepdims=True)).sum(1, keepdims=True))  # noqa: E731
        src = y >= 0
        want = -lp(z[:, :10])[src, y[src]].mean()
        if adapt:
            want += -lp(z[:, 10:])[np.arange(6), (~src).astype(int)].mean()
        assert loss == pytest.approx(want, rel=1e-6)
    be.set_train(net, False)
    assert be.numpy(net(be.tensor(x))).shape == (6, 10)  # eval: class logits only


def test_dann_trains_the_domain_head_and_source_only_does_not(backend):
    from dualml.train.dann import DANN, dann_fit, shifted_digits
    from dualml.zoo import CNNBody

    dom = shifted_digits(0)
    assert dom.source.input_shape == dom.target.input_shape == (1, 8, 8)
    assert not np.array_equal(dom.target.test.x[0], dom.source.test.x[0])
    start = init_weights(DANN(CNNBody(), 32), 0)
    runs = {adapt: dann_fit(DANN(CNNBody(), 32), dom, backend, adapt=adapt, max_steps=6, progress=False)
            for adapt in (True, False)}
    for adapt, t in runs.items():
        w = get_weights(t.net)
        moved = not np.array_equal(w["domain.2.weight"], start["domain.2.weight"])
        assert moved == adapt
        assert np.isfinite([r["loss"] for r in t.history.steps]).all()
        assert 0.0 <= t.metrics["test_acc"] <= 1.0 and len(t.data.test.y) == len(dom.target.test.y)
    grl = native_leaves(runs[True].net)["grl"]
    from dualml.train.dann import grl_lambda
    assert grl.lambda_ == pytest.approx(grl_lambda(6 / 6))  # the schedule ran after every step


def test_mixed_dataset_hides_target_labels():
    from dualml.train.dann import mixed_dataset, shifted_digits

    dom = shifted_digits(1)
    ds = mixed_dataset(dom)
    n_s, n_t = len(dom.source.train.y), len(dom.target.train.y)
    assert (ds.train.y[:n_s] == dom.source.train.y).all() and (ds.train.y[n_s:] == -1).all()
    assert len(ds.train.y) == n_s + n_t
    assert ds.val is dom.source.val and ds.test is dom.target.test
    assert isinstance(ds.train, Split)
