"""dualml.attention against direct numpy float64 implementations (each variant, encoding and fusion
block, built in float64 on every selected backend from the same canonical weights), plus the bad
configs, the attention-weights helper and one ONNX export of an attention model on both backends."""
import math

import numpy as np
import pytest

import dualml
from dualml.attention import attention, attention_weights, fusion, positional_encoding
from dualml.attention.cases import AttentionEncoder, Causal, Padded
from dualml.attention.positions import rotary_angles
from dualml.errors import ConfigError
from dualml.parity import random_weights
from dualml.testing import selected_backends
from dualml.zoo import sinusoidal_positions

BACKENDS = selected_backends()
TOL = 1e-10


# ---------------------------------------------------------------------------- numpy references
def linear(w, name, x):
    y = x @ w[f"{name}.weight"].T
    return y + w[f"{name}.bias"] if f"{name}.bias" in w else y


def heads(x, h):
    b, n, e = x.shape
    return x.reshape(b, n, h, e // h).transpose(0, 2, 1, 3)


def rotate(x, w, prefix):
    cos, sin = w[f"{prefix}.cos"][: x.shape[2]], w[f"{prefix}.sin"][: x.shape[2]]
    x1, x2 = np.split(x, 2, axis=-1)
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def softmax(s):
    s = s - s.max(-1, keepdims=True)
    e = np.exp(s)
    return e / e.sum(-1, keepdims=True)


def ref_attention(w, q_in, kv_in, h, blocked=None, bias=None, kind="full", position=None,
                  max_rel=None, key_padding=None, prefix=""):
    """blocked/bias: [*, Lq, Lk] broadcastable; key_padding [B, Lk] True = padded."""
    p = prefix
    q, k, v = (heads(linear(w, f"{p}{n}", x), h) for n, x in (("q_proj", q_in), ("k_proj", kv_in),
                                                              ("v_proj", kv_in)))
    if position == "rotary":
        q, k = rotate(q, w, f"{p}rotary"), rotate(k, w, f"{p}rotary")
    lq, lk = q.shape[2], k.shape[2]
    if kind == "linear":
        phi = lambda t: np.where(t > 0, t + 1.0, np.exp(np.minimum(t, 0.0)))  # noqa: E731 - elu(x) + 1
        fq, fk = phi(q), phi(k)
        if key_padding is not None:
            fk = fk * (~key_padding)[:, None, :, None]
        a = fq @ fk.transpose(0, 1, 3, 2)
        out = (a / a.sum(-1, keepdims=True)) @ v
    else:
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
        if position == "relative":
            d = np.clip(np.arange(lk)[None, :] - np.arange(lq)[:, None], -max_rel, max_rel) + max_rel
            s = s + w[f"{p}relative.bias.weight"][d].transpose(2, 0, 1)[None]
        if bias is not None:
            s = s + bias
        block = np.zeros(s.shape, bool)
        if blocked is not None:
            block |= blocked
        if key_padding is not None:
            block |= key_padding[:, None, None, :]
        s = np.where(block, -np.inf, s)
        out = softmax(s) @ v
    b = out.shape[0]
    return linear(w, f"{p}out_proj", out.transpose(0, 2, 1, 3).reshape(b, lq, -1))


def weights64(model, seed: int) -> dict:
    """The parity suite's noisy seeded weights, widened to float64 (the references compute in float64)."""
    return {k: v.astype("float64") for k, v in random_weights(model, seed).items()}


def run64(model, backend, w, *xs):
    net = dualml.build(model, backend, weights=w, dtype="float64")
    be = dualml.backend.get_backend(backend)
    with be.no_grad():
        out = net(*[be.tensor(x.astype("float64") if x.dtype == np.float32 else x) for x in xs])
    return be.numpy(out)


def close(got, want, what):
    err = float(np.abs(got - want).max())
    assert err <= TOL * max(1.0, float(np.abs(want).max())), f"{what}: max |diff| {err:.3g}"


RNG = np.random.default_rng(0)
X = RNG.uniform(-1, 1, (2, 5, 8))
Y = RNG.uniform(-1, 1, (2, 7, 6))
LENGTHS = np.array([4, 6], dtype="int64")
X6 = RNG.uniform(-1, 1, (2, 6, 8))
PAD6 = np.arange(6)[None, :] >= LENGTHS[:, None]
WINDOW = np.abs(np.arange(5)[None, :] - np.arange(5)[:, None])
CAUSAL = np.triu(np.ones((5, 5), bool), 1)


def _variants():
    return [
        ("full-self", attention("full", 8, 2), (X,), lambda w: ref_attention(w, X, X, 2)),
        ("full-cross", attention("full", 8, 4, kdim=6, vdim=6, bias=False), (X, Y, Y),
         lambda w: ref_attention(w, X, Y, 4)),
        ("full-causal", Causal(attention("full", 8, 2)), (X,),
         lambda w: ref_attention(w, X, X, 2, blocked=CAUSAL, prefix="attn.")),
        ("full-key-padding", Padded(attention("full", 8, 2)), (X6, LENGTHS),
         lambda w: ref_attention(w, X6, X6, 2, key_padding=PAD6, prefix="attn.")),
        ("local", attention("local", 8, 2, window=1), (X,), lambda w: ref_attention(w, X, X, 2, blocked=WINDOW > 1)),
        ("local-cross", attention("local", 8, 2, window=2, kdim=6, vdim=6), (X, Y, Y),
         lambda w: ref_attention(w, X, Y, 2, blocked=np.abs(np.arange(7)[None] - np.arange(5)[:, None]) > 2)),
        ("local-key-padding", Padded(attention("local", 8, 2, window=2)), (X6, LENGTHS),
         lambda w: ref_attention(w, X6, X6, 2, key_padding=PAD6, prefix="attn.",
                                 blocked=np.abs(np.arange(6)[None] - np.arange(6)[:, None]) > 2)),
        ("linear-self", attention("linear", 8, 2), (X,), lambda w: ref_attention(w, X, X, 2, kind="linear")),
        ("linear-cross-padding", Padded(attention("linear", 8, 2, kdim=6, vdim=6), cross=True),
         (X, LENGTHS, Y[:, :6]),
         lambda w: ref_attention(w, X, Y[:, :6], 2, kind="linear", key_padding=PAD6, prefix="attn.")),
        ("relative", attention("full", 8, 2, position="relative", max_relative_position=2), (X,),
         lambda w: ref_attention(w, X, X, 2, position="relative", max_rel=2)),
        ("relative-local", attention("local", 8, 2, window=1, position="relative", max_relative_position=1), (X,),
         lambda w: ref_attention(w, X, X, 2, position="relative", max_rel=1, blocked=WINDOW > 1)),
        ("rotary", attention("full", 8, 2, position="rotary", max_len=8), (X,),
         lambda w: ref_attention(w, X, X, 2, position="rotary")),
        ("rotary-cross", attention("full", 8, 2, position="rotary", max_len=8, kdim=6, vdim=6), (X, Y, Y),
         lambda w: ref_attention(w, X, Y, 2, position="rotary")),
        ("rotary-linear", attention("linear", 8, 2, position="rotary", max_len=8), (X,),
         lambda w: ref_attention(w, X, X, 2, kind="linear", position="rotary")),
    ]


VARIANT_CASES = _variants()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label,model,inputs,ref", VARIANT_CASES, ids=[c[0] for c in VARIANT_CASES])
def test_attention_matches_numpy_float64(label, model, inputs, ref, backend):
    w = weights64(model, 3)
    close(run64(model, backend, w, *inputs), ref(w), f"{label} on {backend}")


def test_float_mask_is_added_to_the_logits():
    model, bias = attention("full", 8, 2), RNG.uniform(-2, 2, (5, 5))
    w = weights64(model, 4)
    for backend in BACKENDS:
        close(run64(model, backend, w, X, X, X, bias), ref_attention(w, X, X, 2, bias=bias), f"float mask {backend}")


def test_tables_are_the_formulas():
    """The buffers the references read are the published formulas (rounded once to float32)."""
    enc = positional_encoding("rotary", 8, num_heads=2, max_len=6)
    w = dualml.init_weights(enc)
    angles = rotary_angles(6, 4)
    assert np.array_equal(w["cos"], np.cos(angles).astype("float32"))
    assert np.array_equal(w["sin"], np.sin(angles).astype("float32"))
    assert np.allclose(angles[3], 3 * 10000.0 ** (-np.arange(0, 4, 2) / 4), rtol=1e-15)
    w = dualml.init_weights(positional_encoding("sinusoidal", 8, max_len=6))
    assert np.array_equal(w["table"], sinusoidal_positions(6, 8))


@pytest.mark.parametrize("backend", BACKENDS)
def test_additive_encodings_and_rotary_relative_property(backend):
    for kind in ("sinusoidal", "learnable"):
        enc = positional_encoding(kind, 8, max_len=6)
        w = weights64(enc, 1)
        close(run64(enc, backend, w, X), X + w["table"][:5], kind)
    # RoPE's point: q_i . k_j depends on j - i only, so shifting both streams changes no logit
    rot = positional_encoding("rotary", 8, num_heads=1, max_len=16)
    w = {k: v.astype("float64") for k, v in dualml.init_weights(rot).items()}
    v = np.broadcast_to(RNG.uniform(-1, 1, (1, 1, 1, 8)), (1, 1, 12, 8)).copy()
    r = run64(rot, backend, w, v)[0, 0]
    dots = r @ r.T
    assert np.allclose(dots[2, 5], dots[6, 9], atol=1e-6) and not np.allclose(dots[2, 5], dots[2, 6], atol=1e-3)


def _fusion_refs():
    a, b, b8 = X, RNG.uniform(-1, 1, (2, 5, 6)), RNG.uniform(-1, 1, (2, 5, 8))
    sig = lambda t: 1 / (1 + np.exp(-t))  # noqa: E731

    def ln(w, name, t):
        m, v = t.mean(-1, keepdims=True), t.var(-1, keepdims=True)
        return (t - m) / np.sqrt(v + np.float64(np.float32(1e-5))) * w[f"{name}.weight"] + w[f"{name}.bias"]

    def gated(w):
        bb = linear(w, "b_proj", b)
        g = sig(linear(w, "gate", np.concatenate([a, bb], -1)))
        return g * a + (1 - g) * bb

    def gated_residual(gate):
        def ref(w):
            ab = np.concatenate([a, b8], -1)
            g = linear(w, "gate", ab)
            return ln(w, "norm", a + (sig(g) if gate == "sigmoid" else np.tanh(g)) * linear(w, "value", ab))
        return ref

    def adaptive(w):
        e = np.exp(w["weights"] - w["weights"].max())
        s = e / e.sum()
        return s[0] * a + s[1] * linear(w, "b_proj", b)

    def cross(w):
        return ln(w, "norm", a + ref_attention(w, a, Y, 2, prefix="attn."))

    return [("concat", fusion("concat", 8, 6), (a, b), lambda w: linear(w, "proj", np.concatenate([a, b], -1))),
            ("gated", fusion("gated", 8, 6), (a, b), gated),
            ("gated_residual-sigmoid", fusion("gated_residual", 8), (a, b8), gated_residual("sigmoid")),
            ("gated_residual-tanh", fusion("gated_residual", 8, gate="tanh"), (a, b8), gated_residual("tanh")),
            ("adaptive", fusion("adaptive", 8, 6), (a, b), adaptive),
            ("cross_attn", fusion("cross_attn", 8, 6, fusion_heads=2, fusion_dropout=0.1), (a, Y), cross)]


FUSION_CASES = _fusion_refs()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("label,model,inputs,ref", FUSION_CASES, ids=[c[0] for c in FUSION_CASES])
def test_fusion_matches_numpy_float64(label, model, inputs, ref, backend):
    w = weights64(model, 5)
    close(run64(model, backend, w, *inputs), ref(w), f"fusion {label} on {backend}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_local_is_full_attention_under_the_window_mask(backend):
    """Exact: the same numbers as full attention given that mask (same weights, float32)."""
    local, full = attention("local", 8, 2, window=1), attention("full", 8, 2)
    w = random_weights(local, 0)
    be = dualml.backend.get_backend(backend)
    x = X.astype("float32")
    with be.no_grad():
        a = be.numpy(dualml.build(local, backend, weights=w)(be.tensor(x)))
        t = be.tensor(x)
        b = be.numpy(dualml.build(full, backend, weights=w)(t, t, t, be.tensor(WINDOW > 1)))
    assert np.array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_explicit_path_with_dropout_equals_the_fused_op_in_eval(backend):
    """dropout > 0 forms the logits explicitly (the op takes no dropout); in eval it must be the same
    function as the fused scaled_dot_product_attention path (float64, same weights)."""
    fused, explicit = attention("local", 8, 2, window=1), attention("local", 8, 2, window=1, dropout=0.2)
    w = weights64(fused, 6)
    close(run64(explicit, backend, w, X), run64(fused, backend, w, X), f"dropout path on {backend}")
    close(run64(fused, backend, w, X), ref_attention(w, X, X, 2, blocked=WINDOW > 1), f"fused path on {backend}")


# ---------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize("make,words", [
    (lambda: attention("full", 10, 3), ["num_heads=3", "embed_dim=10", "allowed: 1, 2, 5, 10"]),
    (lambda: attention("sparse", 8, 2), ["attention=sparse", "full, linear, local"]),
    (lambda: attention("full", 8, 2, heads=2), ["heads is not a parameter", "allowed:"]),
    (lambda: attention("full", 8, 2, position="rotari"), ["position=rotari", "relative, rotary", "did you mean"]),
    (lambda: attention("full", 8, 2, position="learnable"), ["position=learnable", "added to the input"]),
    (lambda: attention("local", 8, 2, window=-1), ["window=-1"]),
    (lambda: attention("linear", 8, 2, position="relative"), ["position=relative", "allowed: rotary"]),
    (lambda: positional_encoding("absolute", 8), ["position=absolute", "learnable, relative, rotary, sinusoidal"]),
    (lambda: positional_encoding("rotary", 8, num_heads=3), ["num_heads=3", "embed_dim=8"]),
    (lambda: positional_encoding("rotary", 6, num_heads=2), ["head_dim=3", "even"]),
    (lambda: fusion("sum", 8), ["fusion=sum", "adaptive, concat, cross_attn, gated, gated_residual"]),
    (lambda: fusion("cross_attn", 8, fusion_heads=3), ["fusion_heads=3", "embed_dim=8"]),
    (lambda: fusion("gated_residual", 8, gate="relu"), ["gate=relu", "sigmoid, tanh"]),
    (lambda: fusion("gated", 8, gate="tanh"), ["fusion=gated: gate is not a parameter"]),
])
def test_bad_configs_are_one_line_errors_naming_key_and_allowed(make, words):
    with pytest.raises(ConfigError) as err:
        make()
    msg = str(err.value)
    assert "\n" not in msg and all(w in msg for w in words), msg


# ---------------------------------------------------------------------------- weights + heatmap
def test_attention_weights_heatmap_and_backends_agree(tmp_path):
    model = AttentionEncoder(variant="local", position="relative", window=1)
    x = model.input_spec(2)[0].sample(np.random.default_rng(0))
    maps = {}
    for backend in BACKENDS:
        png = tmp_path / f"attn-{backend}.png"
        m = attention_weights(model, x, backend, png=png, seed=1)
        assert m.layer == "attn" and m.path == png and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert m.weights.shape == (2, 2, 6, 6)
        assert np.allclose(m.weights.sum(-1), 1.0, atol=1e-6)
        outside = np.abs(np.arange(6)[None] - np.arange(6)[:, None]) > 1
        # paddle's float32 softmax (oneDNN) clamps exp's argument: a masked logit gives ~1e-28, not 0
        assert np.all(m.weights[..., outside] < 1e-20) and np.all(m.weights[..., ~outside] > 1e-3)
        maps[backend] = m.weights
    assert not list(tmp_path.glob("*.tmp*")), "the atomic writer left a temp file"
    if len(maps) == 2:
        a, b = maps.values()
        assert np.abs(a - b).max() < 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_attention_weights_of_linear_and_cross_match_the_references(backend):
    """The captured matrix is what the layer computes: float64 against the numpy normalised kernel
    (linear) and softmax (cross, through a fusion block; the capture is off again afterwards)."""
    lin = attention("linear", 8, 2)
    w = weights64(lin, 2)
    net = dualml.build(lin, backend, weights=w, dtype="float64")
    got = attention_weights(net, X, backend).weights
    q, k = heads(linear(w, "q_proj", X), 2), heads(linear(w, "k_proj", X), 2)
    phi = lambda t: np.where(t > 0, t + 1.0, np.exp(np.minimum(t, 0.0)))  # noqa: E731
    a = phi(q) @ phi(k).transpose(0, 1, 3, 2)
    close(got, a / a.sum(-1, keepdims=True), "linear weights")
    assert net.capture is None
    fuse = fusion("cross_attn", 8, 6, fusion_heads=2)
    w = weights64(fuse, 2)
    net = dualml.build(fuse, backend, weights=w, dtype="float64")
    got = attention_weights(net, (X, Y), backend, layer="attn").weights
    q, k = heads(linear(w, "attn.q_proj", X), 2), heads(linear(w, "attn.k_proj", Y), 2)
    close(got, softmax(q @ k.transpose(0, 1, 3, 2) / 2.0), "cross weights")
    with pytest.raises(ConfigError, match="layer=nope"):
        attention_weights(net, (X, Y), backend, layer="nope")


# ---------------------------------------------------------------------------- ONNX
def test_both_exports_of_an_attention_model_agree_in_onnxruntime():
    from dualml.onnx.export import onnx_parity
    from dualml.testing import backend_pair

    pair = backend_pair()
    # local + rotary: the fused SDPA op under a window mask (paddle's masked_fill under jit.save, with a
    # dynamic batch) and rotary tables sliced by length
    model = AttentionEncoder(variant="local", position="rotary", window=1)
    report = onnx_parity({"attention-local-rotary": model}, pair, seed=0, batch=2)
    r = report["results"][0]
    assert r["passed"] and r["max_abs"] <= 1e-5, r
    for b in pair:
        assert r["exports"][b]["error"] is None and r["exports"][b]["vs_eager_max_abs"] <= 1e-5
