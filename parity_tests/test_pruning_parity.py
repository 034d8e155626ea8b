"""Pruning parity (issue #5, point 3): from the same canonical weights and criterion, torch's tool
(torch.nn.utils.prune / torch.ao FPGM), PaddleSlim and dualml's numpy selection remove exactly the
same filters, PaddleSlim's own dependency analysis couples the same layers dualml's trace finds,
and the pruned model built on torch and on paddle from the pruned canonical weights computes the
same outputs.

Weights are the seeded initial weights plus noise scaled to each array (as in the parity suite), so
no score ties hide a difference. Exact ties (duplicate or all-zero filters) are the one place the
tools may pick different indices; that case is checked for what can be promised: the same number
of filters, with the same scores, removed.

On lane 3 (Paddle 3, no PaddleSlim) the paddle adapter refuses filter selection in one line; there the
numpy and torch selections are still compared, the refusal is asserted and the PaddleSlim part is skipped
with that line (``dualml.testing.skip_if_refused``).
"""
from __future__ import annotations

import numpy as np
import pytest

import dualml
from dualml import nn, zoo
from dualml.compress.measure import input_spec
from dualml.compress.prune import channel_dependents, filter_scores, prune_channels
from dualml.testing import backend_pair, skip_if_refused

METHODS = ("l1", "l2", "fpgm")
#: compares torch's pruning tools and PaddleSlim by name
pytestmark = pytest.mark.backends("torch", "paddle")


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Small convs on a shared 2-core machine: torch's second thread only spins."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Chain(nn.Module):
    """Odd and larger filter counts than cnn (5, 33, 64): rounding at .5, numpy's non-insertion
    argsort (> 16 entries) and torch's matrix-product cdist (> 25 rows) all get exercised."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 5, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(5)
        self.act = nn.ReLU()
        self.conv2 = nn.Conv2d(5, 33, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(33)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(33, 64, 3, padding=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        x = self.pool(self.act(self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))))
        return self.fc(self.flat(self.gap(self.act(self.conv3(x)))))

    def input_spec(self, batch: int = 1):
        return [nn.InputSpec((batch, 3, 8, 8))]


def noisy(model, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in dualml.init_weights(model, seed).items():
        scale = float(v.std()) or 0.1
        noise = rng.standard_normal(v.shape).astype(np.float32) * scale
        out[k] = np.abs(v + noise) + 0.5 if k.endswith("running_var") else v + noise
    return out


MODELS = {"cnn": zoo.CNN, "chain": Chain}


def paddle_refusal(model, w) -> tuple[str | None, object]:
    """(why paddle's filter selection is refused here or None, a call that must then raise it)."""
    why = dualml.get_backend("paddle").filter_selection_support()
    return why, lambda: prune_channels(model, w, 0.5, backend="paddle", verify=False)


@pytest.fixture(scope="module", params=list(MODELS))
def case(request):
    model = MODELS[request.param]()
    return request.param, model, noisy(model, 7)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_same_filters_removed_by_numpy_torch_and_paddleslim(case, method, ratio):
    _, model, w = case
    got = {b: prune_channels(model, w, ratio, method=method, backend=b, verify=False) for b in (None, "torch")}
    assert got[None].removed == got["torch"].removed
    assert "torch" in next(iter(got["torch"].selected_by.values()))
    for path, removed in got[None].removed.items():
        n = w[f"{path}.weight"].shape[0]
        assert len(removed) == min(n - 1, round(n * ratio))
    skip_if_refused(*paddle_refusal(model, w), "lane 2.6", "selection=numpy")
    got["paddle"] = prune_channels(model, w, ratio, method=method, backend="paddle", verify=False)
    assert got[None].removed == got["paddle"].removed
    assert "paddleslim" in next(iter(got["paddle"].selected_by.values()))


def test_paddleslim_couples_the_layers_dualml_traces(case):
    """PaddleSlim finds dependents from its static program, dualml from hooks on the dygraph net:
    two independent analyses that must name the same BatchNorm and consumer for every conv."""
    _, model, w = case
    skip_if_refused(*paddle_refusal(model, w), "lane 2.6")
    deps, refused = channel_dependents(model, w)
    assert not refused
    be = dualml.get_backend("paddle")
    chosen = be.select_filters(dualml.build(model, "paddle", weights=w), {p: 0.5 for p in deps}, "l1",
                               input_spec(model))
    for path, d in deps.items():
        assert sorted(chosen[path].group) == sorted(d.layers()[1:]), path


def test_pruned_models_agree_across_backends(case):
    name, model, w = case
    for method in METHODS:
        # the selection tools are compared above; here the numpy selection (the same filters) is built on both
        r = prune_channels(model, w, 0.5, method=method, backend=None)
        x = np.random.default_rng(3).uniform(-1, 1, (6, *input_spec(model).shape[1:])).astype(np.float32)
        outs = {}
        for b in backend_pair():
            be = dualml.get_backend(b)
            net = dualml.build(r.model, b, weights=r.weights)
            outs[b] = be.numpy(net(be.tensor(x)))
            assert dualml.get_weights(net).keys() == r.weights.keys()
        np.testing.assert_allclose(*outs.values(), rtol=1e-5, atol=1e-5, err_msg=f"{name} {method}")


def test_exact_ties_remove_filters_of_the_same_scores():
    model = Chain()
    w = noisy(model, 1)
    for k in ("conv2.weight", "conv3.weight"):
        v = w[k].copy()
        v[::3] = 0.0          # all-zero filters: equal scores for every method
        v[1::4] = v[1]        # duplicates
        w[k] = v
    why, attempt = paddle_refusal(model, w)
    tools = ("torch",) if why else ("torch", "paddle")
    for method in METHODS:
        got = {b: prune_channels(model, w, 0.5, method=method, backend=b, verify=False).removed
               for b in (None, *tools)}
        for path in got[None]:
            scores = filter_scores(w[f"{path}.weight"], method)
            ref = np.sort(scores[got[None][path]])
            for b in tools:
                assert len(got[b][path]) == len(ref)
                # float32 tools vs float64 numpy: duplicates' scores agree to rounding
                np.testing.assert_allclose(np.sort(scores[got[b][path]]), ref, rtol=1e-5, err_msg=f"{b} {path}")
        if method != "fpgm":  # the eleven all-zero filters score 0: every tool removes all of them
            assert all(set(range(0, 33, 3)) <= set(got[b]["conv2"]) for b in got)
    skip_if_refused(why, attempt, "lane 2.6")
