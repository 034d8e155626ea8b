"""Layer settings where torch and paddle disagree natively, and dualml gives torch's meaning on both.

Why: the parity suite (``examples()`` of Conv1d/Conv2d, Embedding, MultiheadAttention) checks that
both backends compute the same numbers; these tests pin *which* numbers (torch's, read from torch
itself) and the errors a user gets for values that are not allowed.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import dualml
from dualml import layers as L
from dualml.testing import selected_backends

torch = pytest.importorskip("torch")
paddle = pytest.importorskip("paddle")


def run(spec: L.Layer, backend: str, *inputs: np.ndarray, weights: dict[str, np.ndarray] | None = None) -> Any:
    net = dualml.build(spec, backend, weights=weights)
    be = dualml.get_backend(backend)
    return net, net(*[be.tensor(x, requires_grad=np.issubdtype(x.dtype, np.floating)) for x in inputs])


# ------------------------------------------------------------------------------- conv padding strings
@pytest.mark.parametrize("nd,kernel,dilation", [(1, 4, 1), (1, 4, 3), (2, (4, 2), (2, 3)), (2, 3, 1), (2, 2, 1)])
@pytest.mark.backends("torch")
def test_same_padding_keeps_size_and_matches_torch_functional(nd: int, kernel: Any, dilation: Any) -> None:
    """padding='same' keeps the spatial size on both backends and equals torch's own F.conv with
    padding='same' (which puts the odd extra pixel right/bottom) to float32 round-off."""
    cls = L.Conv1d if nd == 1 else L.Conv2d
    spec = cls(3, 4, kernel, padding="same", dilation=dilation)
    shape = (2, 3, 9) if nd == 1 else (2, 3, 9, 8)
    x = np.random.default_rng(0).uniform(-1, 1, shape).astype("float32")
    w = dualml.init_weights(spec)
    conv = torch.nn.functional.conv1d if nd == 1 else torch.nn.functional.conv2d
    ref = conv(torch.from_numpy(x), torch.from_numpy(w["weight"]), torch.from_numpy(w["bias"]),
               padding="same", dilation=dilation).numpy()
    for backend in selected_backends():
        _, out = run(spec, backend, x, weights=w)
        out = dualml.get_backend(backend).numpy(out)
        assert out.shape == shape[:1] + (4,) + shape[2:]
        # 3*prod(kernel) <= 24 products per output, |w| <= 1/sqrt(fan_in), |x| <= 1: float32 round-off
        # of such a sum is far below 1e-6; a misplaced padding pixel moves outputs by ~0.1
        np.testing.assert_allclose(out, ref, atol=1e-6, rtol=0)


def test_paddle_own_same_ignores_dilation() -> None:
    """Why the paddle adapter passes explicit pads: paddle's padding='SAME' drops the dilation
    (its kernel resets it to 1), so a dilated 'same' conv would compute another function."""
    x = paddle.to_tensor(np.random.default_rng(0).uniform(-1, 1, (1, 2, 9)).astype("float32"))
    paddle.seed(0)
    own = paddle.nn.Conv1D(2, 3, 3, padding="SAME", dilation=3)
    explicit = paddle.nn.Conv1D(2, 3, 3, padding=3, dilation=3)
    explicit.weight.set_value(own.weight)
    explicit.bias.set_value(own.bias)
    assert np.abs(own(x).numpy() - explicit(x).numpy()).max() > 1e-2


@pytest.mark.parametrize("kwargs,message", [
    ({"padding": "full"}, "Conv2d: padding='full' is not allowed; allowed: an int per spatial dim, same, valid"),
    ({"padding": "SAME"}, "(did you mean 'same'?)"),
    ({"padding": "same", "stride": 2}, "Conv2d: padding='same' is not allowed with stride=(2, 2); allowed: stride 1"),
    ({"padding": -1}, "Conv2d: padding=-1 is not allowed; allowed: same, valid, or 2 non-negative int(s)"),
    ({"padding": (1, 2, 3)}, "padding=(1, 2, 3) is not allowed")])
def test_bad_padding_is_one_line_config_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(dualml.ConfigError) as info:
        L.Conv2d(3, 4, 3, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_valid_padding_is_no_padding() -> None:
    assert L.Conv1d(2, 2, 3, padding="valid").pad_amounts() == ((0, 0),)
    assert L.Conv2d(2, 2, (4, 3), padding="same", dilation=(1, 2)).pad_amounts() == ((1, 2), (2, 2))


# ------------------------------------------------------------------------------- embedding padding_idx
@pytest.mark.parametrize("backend", selected_backends())
def test_embedding_padding_row_is_read_and_gets_no_gradient(backend: str) -> None:
    """torch's meaning on both backends: a non-zero padding row (a trained or imported checkpoint)
    is output as is, and backward leaves it alone while other rows get gradients."""
    spec = L.Embedding(5, 3, padding_idx=-2)  # stored as 3
    assert spec.padding_idx == 3
    w = {"weight": np.arange(15, dtype="float32").reshape(5, 3) + 1.0}
    ids = np.array([[3, 1, 3], [0, 3, 4]], dtype="int64")
    net, out = run(spec, backend, ids, weights=w)
    be = dualml.get_backend(backend)
    np.testing.assert_array_equal(be.numpy(out), w["weight"][ids])
    be.backward([out], [np.ones(out.shape, "float32")])
    grad = dualml.get_grads(net)["weight"]
    assert not grad[3].any(), grad
    np.testing.assert_array_equal(grad[[0, 1, 4]], np.ones((3, 3), "float32"))
    assert not grad[2].any()  # not looked up


def test_embedding_bad_padding_idx() -> None:
    with pytest.raises(dualml.ConfigError, match=r"padding_idx=5 is not allowed; allowed: None or an int in \[-5, 5\)"):
        L.Embedding(5, 3, padding_idx=5)


# ------------------------------------------------------------------------------- attention 3-d masks
@pytest.mark.backends("torch", "paddle")
def test_3d_bool_mask_blocks_per_head_like_torch() -> None:
    """torch's [batch*heads, L, S] mask, row b*heads + h: blocking every key but one for one head of
    one batch element makes that head attend to that key only; paddle gives torch's numbers."""
    spec = L.MultiheadAttention(8, 2)
    rng = np.random.default_rng(0)
    q, k = rng.uniform(-1, 1, (2, 3, 8)).astype("float32"), rng.uniform(-1, 1, (2, 4, 8)).astype("float32")
    mask = rng.random((4, 3, 4)) < 0.3
    mask[:, :, 0] = False  # no row fully blocked (NaN on both)
    mask[3] = True
    mask[3, :, 2] = False  # batch 1, head 1: key 2 only
    outs = {}
    for backend in ("torch", "paddle"):
        be = dualml.get_backend(backend)
        net = dualml.build(spec, backend)
        with be.no_grad():
            outs[backend] = be.numpy(net(be.tensor(q), be.tensor(k), be.tensor(k), be.tensor(mask)))
    # |out| ~ 1 from 8-term sums of weights ~0.4 and values ~1: float32 round-off is ~1e-7
    np.testing.assert_allclose(outs["paddle"], outs["torch"], atol=1e-6, rtol=1e-6)
    net = dualml.build(spec, "torch")
    with torch.no_grad():
        shuffled = net(torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(k),
                       torch.from_numpy(mask[[0, 2, 1, 3]])).numpy()
    assert np.abs(shuffled - outs["torch"]).max() > 1e-3  # the head order inside a batch row matters


def test_3d_mask_of_wrong_size_names_the_shapes() -> None:
    spec = L.MultiheadAttention(8, 2)
    x = np.zeros((2, 3, 8), "float32")
    net = dualml.build(spec, "paddle")
    with pytest.raises(dualml.LayerInputError, match=r"attn_mask of shape \[3, 3, 3\] is not allowed for "
                                                      r"batch=2, num_heads=2; allowed: \[L, S\] or \[4, L, S\]"):
        net(paddle.to_tensor(x), attn_mask=paddle.to_tensor(np.zeros((3, 3, 3), bool)))
