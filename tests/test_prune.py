"""Pruning and the size/compute measures (dualml.compress.prune, dualml.compress.measure).

Why these checks: a pruning pass can "succeed" while only masking weights (nothing gets smaller),
slice the wrong axis (the model still runs but computes something else), or cut a channel that a
residual add still needs. So the tests look at what must really change (shapes, parameter and
FLOP counts by the exact expected amounts), compare the pruned model with the original whose
removed channels are zeroed, and check every refusal names the layer and the reason.
"""
from __future__ import annotations

import numpy as np
import pytest

import dualml
from conftest import run
from dualml import nn, zoo
from dualml.compress.measure import count_params, flops, layer_macs, nonzero_params, sparsity
from dualml.compress.prune import (
    apply_masks,
    channel_dependents,
    filter_scores,
    gradual_ratio,
    magnitude_masks,
    nm_masks,
    prune_channels,
    removed_count,
    select_filters,
)
from dualml.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def cnn():
    model = zoo.CNN()
    return model, dualml.init_weights(model, seed=0)


@pytest.fixture(scope="module")
def pruned(cnn):
    model, w = cnn
    return prune_channels(model, w, 0.5, method="l1")


def conv_macs(model) -> dict[str, int]:
    return {r["layer"]: r["macs"] for r in flops(model)["layers"] if r["kind"] == "Conv2d"}


# ----------------------------------------------------------------------------- selection
def test_removed_count_rule():
    assert removed_count(16, 0.5) == 8
    assert removed_count(5, 0.5) == 2          # round half to even, as PaddleSlim
    assert removed_count(2, 0.9) == 1          # at least one filter stays
    assert removed_count(1, 0.5) == 0


def test_select_filters_by_norm_and_ties():
    w = np.zeros((6, 2, 1, 1), np.float32)
    w[:, 0, 0, 0] = [3.0, -1.0, 2.0, 0.5, 4.0, 0.5]   # filters 3 and 5 tie on L1
    assert select_filters(w, 0.5, "l1").tolist() == [0, 2, 4]
    assert select_filters(w, 1 / 6, "l1").tolist() == [0, 1, 2, 4, 5]  # tie: lower index goes first
    w2 = np.zeros((3, 2), np.float32)
    w2[0] = [3, 0]
    w2[1] = [2, 2]                                      # L1 4 > 3 but L2 2.83 < 3
    w2[2] = [5, 5]
    assert select_filters(w2, 0.4, "l1").tolist() == [1, 2]
    assert select_filters(w2, 0.4, "l2").tolist() == [0, 2]


def test_fpgm_removes_the_filters_nearest_the_median():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 4)).astype(np.float32) * 5
    w[3] = w.mean(axis=0) + 0.01                         # a filter the others can stand in for
    scores = filter_scores(w, "fpgm")
    expect = [np.sqrt(((w.astype(np.float64) - w[i]) ** 2).sum(1)).sum() for i in range(8)]
    np.testing.assert_allclose(scores, expect, rtol=1e-12)
    assert 3 not in select_filters(w, 1 / 8, "fpgm")


# ----------------------------------------------------------------------------- structured pruning on cnn
def test_cnn_filters_physically_removed(cnn, pruned):
    model, w = cnn
    shapes = {k: v.shape for k, v in pruned.weights.items()}
    assert shapes["conv1.weight"] == (8, 1, 3, 3) and shapes["bn1.running_var"] == (8,)
    assert shapes["conv2.weight"] == (16, 8, 3, 3) and shapes["bn2.weight"] == (16,)
    assert shapes["fc.weight"] == (10, 16) and shapes["fc.bias"] == (10,)
    assert (pruned.model.conv1.out_channels, pruned.model.bn1.num_features, pruned.model.conv2.in_channels,
            pruned.model.conv2.out_channels, pruned.model.fc.in_features) == (8, 8, 8, 16, 16)
    assert model.conv1.out_channels == 16                       # the original is untouched
    k1 = np.setdiff1d(np.arange(16), pruned.removed["conv1"])
    k2 = np.setdiff1d(np.arange(32), pruned.removed["conv2"])
    assert len(pruned.removed["conv1"]) == 8 and len(pruned.removed["conv2"]) == 16
    np.testing.assert_array_equal(pruned.weights["conv1.weight"], w["conv1.weight"][k1])
    np.testing.assert_array_equal(pruned.weights["conv2.weight"], w["conv2.weight"][k2][:, k1])
    np.testing.assert_array_equal(pruned.weights["fc.weight"], w["fc.weight"][:, k2])
    np.testing.assert_array_equal(pruned.weights["bn2.running_mean"], w["bn2.running_mean"][k2])
    assert {k: d.layers()[1:] for k, d in pruned.dependents.items()} == {"conv1": ["bn1", "conv2"],
                                                                          "conv2": ["bn2", "fc"]}


def test_params_and_flops_fall_by_the_expected_amounts(cnn, pruned):
    model, _ = cnn
    # conv1 72 + bn1 16 + conv2 16*8*9 + bn2 32 + fc 16*10+10
    assert (pruned.params_before, pruned.params_after) == (5178, 72 + 16 + 1152 + 32 + 170)
    assert pruned.params_after == count_params(pruned.model)
    before, after = conv_macs(model), conv_macs(pruned.model)
    assert after["conv1"] / before["conv1"] == 0.5
    assert after["conv2"] / before["conv2"] == 0.25             # out and in channels both halved
    cut = 1 - sum(after.values()) / sum(before.values())
    assert cut >= 0.45 and abs(cut - 0.7424) < 1e-3
    assert 1 - flops(pruned.model)["flops"] / flops(model)["flops"] >= 0.45


def test_pruned_model_runs_on_both_backends(cnn, pruned, backend):
    model, w = cnn
    x = np.random.default_rng(0).uniform(-1, 1, (4, 1, 8, 8)).astype(np.float32)
    out = run(dualml.build(pruned.model, backend, weights=pruned.weights), backend, x)
    # the pruned model is the original with the removed channels' consumer inputs zeroed
    masked = dict(w)
    masked["conv2.weight"] = w["conv2.weight"].copy()
    masked["conv2.weight"][:, pruned.removed["conv1"]] = 0
    masked["fc.weight"] = w["fc.weight"].copy()
    masked["fc.weight"][:, pruned.removed["conv2"]] = 0
    ref = run(dualml.build(model, backend, weights=masked), backend, x)
    assert out.shape == (4, 10)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_ratio_per_layer_and_layers_subset(cnn):
    model, w = cnn
    r = prune_channels(model, w, {"conv2": 0.25}, method="l2")
    assert list(r.removed) == ["conv2"] and len(r.removed["conv2"]) == 8
    assert r.weights["conv1.weight"].shape == (16, 1, 3, 3) and r.weights["fc.weight"].shape == (10, 24)
    r = prune_channels(model, w, 0.5, method="fpgm", layers=["conv1"])
    assert r.weights["conv2.weight"].shape == (32, 8, 3, 3)


class FlatHead(nn.Module):
    """Conv -> BN -> ReLU -> Flatten of a 4x4 map -> Linear: channel c is features c*16 .. c*16+15."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, padding=1)
        self.bn = nn.BatchNorm2d(6)
        self.act = nn.ReLU()
        self.flat = nn.Flatten()
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(6 * 16, 3)

    def forward(self, x):
        return self.fc(self.drop(self.flat(self.act(self.bn(self.conv(x))))))

    def input_spec(self, batch=1):
        return [nn.InputSpec((batch, 2, 4, 4))]


def test_flatten_of_a_spatial_map_maps_blocks_of_features():
    model = FlatHead()
    w = dualml.init_weights(model, 1)
    r = prune_channels(model, w, 0.5)                     # verify=True: checked against the masked original
    kept = np.setdiff1d(np.arange(6), r.removed["conv"])
    cols = (kept[:, None] * 16 + np.arange(16)).ravel()
    assert r.model.fc.in_features == 48
    np.testing.assert_array_equal(r.weights["fc.weight"], w["fc.weight"][:, cols])


# ----------------------------------------------------------------------------- refusals
@pytest.mark.parametrize("ratio", [0, 1, 1.5, -0.2, True, "0.5"])
def test_ratio_outside_open_interval_refused(cnn, ratio):
    model, w = cnn
    with pytest.raises(ConfigError, match=rf"prune ratio={ratio!r} is not allowed; allowed: a number in \(0, 1\)"):
        prune_channels(model, w, ratio)


def test_unknown_and_non_conv_layers_refused(cnn):
    model, w = cnn
    with pytest.raises(ConfigError, match=r"prune layer 'conv3' does not exist; allowed: conv1, conv2 "
                                          r"\(did you mean 'conv2'\?\)"):
        prune_channels(model, w, 0.5, layers=["conv3"])
    with pytest.raises(ConfigError, match="prune layer 'bn1' is BatchNorm2d, not a conv; allowed: conv1, conv2"):
        prune_channels(model, w, 0.5, layers=["bn1"])
    with pytest.raises(ConfigError, match="prune method=l3 is not allowed; allowed: fpgm, l1, l2"):
        prune_channels(model, w, 0.5, method="l3")


@pytest.fixture(scope="module")
def resnet():
    model = zoo.ResNet18(num_classes=10, image_size=32)
    return model, dualml.init_weights(model, 0)


def test_resnet_residual_layers_refused(resnet):
    model, w = resnet
    with pytest.raises(ConfigError) as err:
        prune_channels(model, w, 0.5, layers=["layer1.0.conv2"])
    assert str(err.value) == ("layer 'layer1.0.conv2' feeds a residual add or another self.F op after "
                              "'layer1.0.bn2'; structured pruning supports chains (conv -> bn -> ... -> conv/linear)")
    # the stem's output reaches layer1.0.conv1 *and* the identity add: only the probe can see the add
    with pytest.raises(ConfigError, match=r"layer 'conv1' also reaches the output outside its consumers "
                                          r"\(layer1.0.conv1\), e.g. through a residual add"):
        prune_channels(model, w, 0.5, layers=["conv1"])


def test_resnet_default_prunes_the_first_conv_of_every_block(resnet):
    model, w = resnet
    ok, refused = channel_dependents(model, w)
    assert sorted(ok) == sorted(f"layer{s}.{b}.conv1" for s in range(1, 5) for b in range(2))
    assert len(refused) == 12 and "downsample" in " ".join(refused)
    assert ok["layer2.0.conv1"].layers() == ["layer2.0.conv1", "layer2.0.bn1", "layer2.0.conv2"]


class Functional(nn.Module):
    """The README's model: relu, flatten and mean are self.F ops, so the conv's channels are lost."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        F = self.F
        return self.fc(F.mean(F.flatten(F.relu(self.bn(self.conv(x))), 2), dim=2))

    def input_spec(self, batch=1):
        return [nn.InputSpec((batch, 1, 8, 8))]


class Odd(nn.Module):
    """A grouped conv, then a conv whose channels are the model output."""

    def __init__(self):
        super().__init__()
        self.dw = nn.Conv2d(4, 4, 3, groups=4)
        self.head = nn.Conv2d(4, 3, 1)

    def forward(self, x):
        return self.head(self.dw(x))


def test_untraceable_models_refused():
    m = Functional()
    w = dualml.init_weights(m)
    with pytest.raises(ConfigError, match="no conv of Functional can be pruned: 'conv' feeds a residual add or "
                                          "another self.F op after 'bn'"):
        prune_channels(m, w, 0.5)
    m = Odd()
    w = dualml.init_weights(m)
    with pytest.raises(ConfigError, match=r"layer 'dw' is a grouped conv \(groups=4\)"):
        prune_channels(m, w, 0.5, layers=["dw"], input_shape=(1, 4, 5, 5))
    with pytest.raises(ConfigError, match="layer 'head' reaches the model output through 'head'"):
        prune_channels(m, w, 0.5, layers=["head"], input_shape=(1, 4, 5, 5))
    with pytest.raises(ConfigError, match="Odd has no input_spec"):
        prune_channels(m, w, 0.5)


# ----------------------------------------------------------------------------- unstructured and N:M
def test_magnitude_masks_reach_the_ratio_exactly(cnn):
    model, w = cnn
    masks = magnitude_masks(w, 0.25, model=model)
    assert sorted(masks) == ["conv1.weight", "conv2.weight", "fc.weight"]   # no biases, no BatchNorm
    out = apply_masks(w, masks)
    for name, mask in masks.items():
        assert (~mask).sum() == round(0.25 * mask.size)
        assert np.abs(w[name][~mask]).max() <= np.abs(w[name][mask]).min()     # the smallest went
    assert sparsity(out, masks) == 0.25
    assert nonzero_params(out, masks) == 0.75 * sum(m.size for m in masks.values())
    assert out["bn1.weight"] is w["bn1.weight"]
    g = magnitude_masks(w, 0.5, ["conv2", "fc.weight"], scope="global")
    assert sorted(g) == ["conv2.weight", "fc.weight"]
    assert sum((~m).sum() for m in g.values()) == 0.5 * (4608 + 320)
    with pytest.raises(ConfigError, match="prune layer=conv9 is not allowed; allowed: conv1.weight, conv2.weight"):
        magnitude_masks(w, 0.5, ["conv9"], model=model)
    with pytest.raises(ConfigError, match="prune ratio=1 is not allowed"):
        magnitude_masks(w, 1)


def test_gradual_schedule():
    assert gradual_ratio(0, 100, 0.8) == 0.0
    assert gradual_ratio(100, 100, 0.8) == 0.8 and gradual_ratio(500, 100, 0.8) == 0.8
    assert gradual_ratio(50, 100, 0.8) == pytest.approx(0.8 - 0.8 * 0.5 ** 3)
    assert gradual_ratio(10, 100, 0.8, initial_ratio=0.2, start=10) == 0.2
    values = [gradual_ratio(s, 100, 0.9, every=10) for s in range(0, 120)]
    assert all(b >= a for a, b in zip(values, values[1:])) and len(set(values[1:100])) == 10
    for bad in ({"final_ratio": 1.0}, {"final_ratio": 0}, {"final_ratio": 0.5, "initial_ratio": 0.6},
                {"final_ratio": 0.5, "total_steps": 0}):
        with pytest.raises(ConfigError, match="is not allowed"):
            gradual_ratio(**{"step": 1, "total_steps": 10, **bad})


def test_two_four_pattern_in_every_group(cnn):
    model, w = cnn
    masks = nm_masks(w, 2, 4, model=model)
    assert sorted(masks) == ["conv2.weight", "fc.weight"]                    # conv1 rows hold 9 weights
    for name, mask in masks.items():
        rows = w[name].reshape(w[name].shape[0], -1, 4)
        groups = mask.reshape(rows.shape)
        assert (groups.sum(-1) == 2).all()
        kept = np.where(groups, np.abs(rows), np.inf).min(-1)
        dropped = np.where(groups, -np.inf, np.abs(rows)).max(-1)
        assert (kept >= dropped).all()
    assert sparsity(apply_masks(w, masks), masks) == 0.5
    with pytest.raises(ConfigError, match=r"N:M sparsity 2:4: layer 'conv1.weight' has rows of 9 weights "
                                          r"\(shape \[16, 1, 3, 3\]\), not divisible by m=4"):
        nm_masks(w, 2, 4, ["conv1"], model=model)
    with pytest.raises(ConfigError, match="N:M sparsity n=4 is not allowed with m=4"):
        nm_masks(w, 4, 4)


# ----------------------------------------------------------------------------- measures
def test_count_params_and_cnn_flops(cnn):
    model, _ = cnn
    assert count_params(model) == 5178
    assert count_params(model, trainable_only=False) == 5178 + 2 * (16 + 32)   # + BatchNorm running stats
    f = flops(model)
    rows = {r["layer"]: r["macs"] for r in f["layers"]}
    assert rows["conv1"] == 8 * 8 * 16 * 1 * 9 and rows["conv2"] == 8 * 8 * 32 * 16 * 9
    assert rows["fc"] == 32 * 10 and rows["bn1"] == 16 * 64 and rows["pool"] == 0
    assert f["flops"] == 2 * f["macs"] == 2 * sum(r["macs"] for r in f["layers"])
    assert flops(model, (4, 1, 8, 8))["macs"] == 4 * f["macs"]


def test_attention_and_rnn_macs():
    mha = nn.MultiheadAttention(8, 2)
    assert layer_macs(mha, [(2, 5, 8), (2, 3, 8), (2, 3, 8)], (2, 5, 8)) == 2 * (2 * 5 + 2 * 3) * 64 + 2 * 2 * 5 * 3 * 8
    enc = nn.TransformerEncoderLayer(8, 2, 16)
    assert layer_macs(enc, [(1, 4, 8)], (1, 4, 8)) == (4 * 4 * 64 + 2 * 16 * 8) + 2 * 4 * 8 * 16 + 2 * 4 * 8
    lstm = nn.LSTM(3, 5, num_layers=2, bidirectional=True)
    assert layer_macs(lstm, [(2, 7, 3)], None) == 2 * 2 * 7 * 4 * 5 * ((3 + 5) + (10 + 5))


def test_resnet18_flops_match_the_published_figure():
    f = flops(zoo.ResNet18())
    conv_fc = sum(r["macs"] for r in f["layers"] if r["kind"] in ("Conv2d", "Linear"))
    assert 1.80e9 < conv_fc < 1.82e9 and f["params"] == 11_689_512    # torchvision: 1.81 GMACs, 11.69M
