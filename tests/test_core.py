"""Unit tests of the core: native building, canonical weights, errors, config and CLI."""
import subprocess
import sys

import numpy as np
import pytest

import dualml
from conftest import TinyMLP, run
from dualml import nn
from dualml.checkpoint import load_weights, save_weights
from dualml.ops import OPS
from dualml.zoo import CNN


def test_import_dualml_imports_no_framework():
    code = "import sys, dualml, dualml.nn, dualml.zoo, dualml.parity, dualml.cli; " \
           "print(sorted(m for m in ('torch', 'paddle') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_built_models_are_native(backend):
    net = dualml.build(CNN(), backend)
    if backend == "torch":
        import torch
        assert isinstance(net, torch.nn.Module)
        assert type(net.conv1) is torch.nn.Conv2d and type(net.fc) is torch.nn.Linear
        assert type(net.bn1) is torch.nn.BatchNorm2d
    else:
        import paddle
        assert isinstance(net, paddle.nn.Layer)
        assert type(net.conv1) is paddle.nn.Conv2D and type(net.fc) is paddle.nn.Linear
        assert isinstance(net.bn1, paddle.nn.BatchNorm2D)


def test_same_seed_same_weights_different_seed_differs(tiny):
    a = dualml.get_weights(dualml.build(tiny, "torch", seed=3))
    b = dualml.get_weights(dualml.build(tiny, "paddle", seed=3))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = dualml.get_weights(dualml.build(tiny, "torch", seed=4))
    assert not np.array_equal(a["fc1.weight"], c["fc1.weight"])


def test_paddle_linear_is_transposed_natively(tiny):
    net = dualml.build(tiny, "paddle")
    assert list(net.fc1.weight.shape) == [4, 8]  # paddle [in, out]
    assert dualml.get_weights(net)["fc1.weight"].shape == (8, 4)  # canonical [out, in]


def test_convert_round_trip_bit_exact(tiny):
    t = dualml.build(tiny, "torch", seed=1)
    back = dualml.get_weights(dualml.convert(dualml.convert(t, "paddle"), "torch"))
    w = dualml.get_weights(t)
    assert all(np.array_equal(back[k], w[k]) for k in w)


def test_strict_load_lists_every_problem_and_loads_nothing(tiny, backend):
    net = dualml.build(tiny, backend, seed=0)
    before = dualml.get_weights(net)
    bad = dict(before)
    del bad["fc2.bias"]
    bad["fc9.weight"] = np.zeros((1,), "float32")
    bad["fc1.weight"] = np.zeros((8, 5), "float32")
    bad["fc2.weight"] = np.ones((3, 8), "float32") * 7
    with pytest.raises(dualml.WeightsError) as err:
        dualml.set_weights(net, bad)
    msg = str(err.value)
    assert "missing: fc2.bias" in msg and "unexpected: fc9.weight" in msg and "fc1.weight shape [8, 5]" in msg
    after = dualml.get_weights(net)
    assert all(np.array_equal(after[k], before[k]) for k in before), "a failed strict load changed weights"
    rep = dualml.set_weights(net, bad, strict=False)
    assert rep.loaded == ["fc1.bias", "fc2.weight"] and rep.missing == ["fc2.bias"] and rep.unexpected == ["fc9.weight"]
    assert np.all(dualml.get_weights(net)["fc2.weight"] == 7)


def test_wrong_input_shape_names_layer_and_shapes(tiny, backend):
    net = dualml.build(tiny, backend)
    with pytest.raises(dualml.LayerInputError) as err:
        run(net, backend, np.zeros((2, 5), "float32"))
    assert "'fc1'" in str(err.value) and "[2, 5]" in str(err.value) and "[*, 4]" in str(err.value)


def test_wrong_shape_deep_in_model_is_named(backend):
    class Bad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.fc = nn.Linear(10, 2)  # conv output flattened is 4*6*6=144, not 10

        def forward(self, x):
            return self.fc(self.F.flatten(self.conv(x), 1))
    net = dualml.build(Bad(), backend)
    with pytest.raises(dualml.LayerInputError, match=r"layer 'fc' \(Linear\) got input of shape \[2, 144\]"):
        run(net, backend, np.zeros((2, 1, 8, 8), "float32"))


def test_safetensors_round_trip_and_metadata(tmp_path, tiny):
    w = dualml.init_weights(tiny, 5)
    path = save_weights(tmp_path / "w.safetensors", w, {"model": "tiny"})
    got, meta = load_weights(path)
    assert meta["model"] == "tiny" and meta["format"] == "dualml-canonical-v2"
    assert all(np.array_equal(got[k], w[k]) for k in w)
    assert b"pickle" not in path.read_bytes()[:200]


def test_truncated_and_tampered_files_are_rejected(tmp_path, tiny):
    path = save_weights(tmp_path / "w.safetensors", dualml.init_weights(tiny), {})
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 10])
    with pytest.raises(dualml.WeightsFileError, match="truncated or corrupted"):
        load_weights(tmp_path / "trunc.safetensors")
    tampered = bytearray(data)
    tampered[-3] ^= 0xFF
    (tmp_path / "tamper.safetensors").write_bytes(bytes(tampered))
    with pytest.raises(dualml.WeightsFileError, match="checksum mismatch"):
        load_weights(tmp_path / "tamper.safetensors")
    with pytest.raises(dualml.WeightsFileError, match="does not exist"):
        load_weights(tmp_path / "nope.safetensors")


def test_every_adapter_implements_every_op(backend):
    ops = dualml.get_backend(backend).ops
    missing = [name for name in OPS if not callable(getattr(ops, name, None))]
    assert not missing, f"{backend} lacks ops {missing}"


def test_dropout_train_semantics_documented(backend):
    """Train-mode dropout: same rate and 1/(1-p) scaling on both, masks differ (documented)."""
    net = dualml.build(nn.Dropout(0.25), backend)
    be = dualml.get_backend(backend)
    be.set_train(net, True)
    y = be.numpy(net(be.tensor(np.ones((200, 200), "float32"))))
    assert abs((y == 0).mean() - 0.25) < 0.01
    assert np.allclose(y[y != 0], 1 / 0.75)
    be.set_train(net, False)
    assert np.array_equal(be.numpy(net(be.tensor(np.ones((3, 3), "float32")))), np.ones((3, 3)))


def test_tensor_copies_unless_told_it_may_share(backend):
    """copy=False is the Trainer's no-copy path for fresh batches: torch shares the array's memory
    then (and only then); paddle.to_tensor always copies. Either way the values are the array's."""
    be = dualml.get_backend(backend)
    a = np.arange(6, dtype="float32").reshape(2, 3)
    copied, maybe_shared = be.tensor(a), be.tensor(a, copy=False)
    a[0, 0] = 42.0
    assert be.numpy(copied)[0, 0] == 0.0
    assert be.numpy(maybe_shared)[0, 0] == (42.0 if backend == "torch" else 0.0)
    frozen = np.arange(3, dtype="int64")
    frozen.flags.writeable = False  # torch cannot share a read-only array: it must copy, not warn
    assert be.numpy(be.tensor(frozen, copy=False)).tolist() == [0, 1, 2]
    if backend == "paddle":  # bfloat16 comes out of paddle as uint16 bits: numpy() must give float32 values
        bf = be.tensor(np.array([1.5, -2.25], "float32")).astype("bfloat16")
        assert be.numpy(bf).dtype == np.float32 and be.numpy(bf).tolist() == [1.5, -2.25]


def test_only_layers_with_a_rate_draw_random_numbers():
    assert nn.Dropout(0.3).draws_random and not nn.Dropout(0.0).draws_random
    assert nn.MultiheadAttention(8, 2, dropout=0.1).draws_random
    assert not nn.MultiheadAttention(8, 2).draws_random and not nn.Linear(3, 4).draws_random
    assert nn.TransformerEncoderLayer(8, 2, 16).draws_random  # dropout 0.1 by default, as in torch


def test_neutral_model_cannot_be_called_unbuilt(tiny):
    with pytest.raises(dualml.DualmlError, match="build it first"):
        tiny(np.zeros((1, 4)))


def test_layer_hyperparameters_validated():
    with pytest.raises(dualml.ConfigError, match="groups=4"):
        nn.Conv2d(6, 8, 3, groups=4)
    with pytest.raises(dualml.ConfigError, match="approximate"):
        nn.GELU("fast")


def test_native_tools_work_on_built_models():
    import torch

    q = torch.ao.quantization.quantize_dynamic(dualml.build(TinyMLP(), "torch"), {torch.nn.Linear}, torch.qint8)
    assert "DynamicQuantizedLinear" in type(q.fc1).__name__ or "Linear" in type(q.fc1).__name__
    assert type(q.fc1).__module__.startswith("torch.ao")


def test_paddle_jit_save_accepts_built_model(tmp_path):
    import paddle

    net = dualml.build(CNN(), "paddle")
    spec = [paddle.static.InputSpec([None, 1, 8, 8], "float32", "x")]
    paddle.jit.save(paddle.jit.to_static(net, input_spec=spec), str(tmp_path / "cnn"))
    loaded = paddle.jit.load(str(tmp_path / "cnn"))
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype("float32")
    np.testing.assert_allclose(loaded(paddle.to_tensor(x)).numpy(), run(net, "paddle", x), atol=1e-6)


@pytest.mark.parametrize("args,expect", [
    (["config", "backend=tf"], "backend=tf is not allowed; allowed: auto, paddle, torch"),
    (["config", "parity.atoll=1"], "did you mean 'parity.atol'"),
    (["config", "model=cnnn"], "did you mean 'cnn'"),
    (["config", "backend=auto", "decision.criteria.performance.weight=0.3"], "decision weights sum to 1.05"),
    (["config", "seed=abc"], "seed='abc' is not allowed; expected an integer"),
    (["pairty"], "did you mean 'parity'"),
])
def test_cli_bad_input_is_one_line_exit_2(args, expect):
    out = subprocess.run([sys.executable, "-m", "dualml", *args], capture_output=True, text=True)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_model_parameter_is_named():
    from dualml.zoo import create_model
    with pytest.raises(dualml.ConfigError, match="model.chanels .*did you mean 'channels'"):
        create_model("cnn", chanels=[1, 2])
