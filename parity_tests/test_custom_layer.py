"""A user-registered layer: one implementation per backend plus its weight rules. The parity
suite must pick it up, pass when the mapping is right and fail, naming the layer, when it is not."""

import numpy as np
import paddle
import pytest
import torch

import dualml
from dualml import nn
from dualml.backend import _IMPLS, Rule
from dualml.parity import Case, default_cases, run_case

#: the custom layer is implemented in torch and paddle by name
pytestmark = pytest.mark.backends("torch", "paddle")


class Bilinear(nn.Layer):
    """y = x W x2^T-style gate: out = (x @ weight^T) * scale, with a canonical [out, in] weight."""

    def __init__(self, n_in: int, n_out: int) -> None:
        self.n_in, self.n_out = n_in, n_out

    def params(self):
        return {"weight": nn.ParamSpec((self.n_out, self.n_in), dualml.layers.uniform(0.5)),
                "scale": nn.ParamSpec((self.n_out,), dualml.layers.constant(1.0))}

    @classmethod
    def examples(cls):
        return [("Bilinear", cls(5, 3), [nn.InputSpec((4, 5))])]


class TorchScaled(torch.nn.Module):
    def __init__(self, s):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(s.n_out, s.n_in))
        self.scale = torch.nn.Parameter(torch.ones(s.n_out))

    def forward(self, x):
        return (x @ self.weight.T) * self.scale


class PaddleScaled(paddle.nn.Layer):
    """Stores the weight [in, out] like paddle's Linear: the rules say so with a transpose."""

    def __init__(self, s):
        super().__init__()
        self.w = self.create_parameter([s.n_in, s.n_out])
        self.gain = self.create_parameter([s.n_out])

    def forward(self, x):
        return paddle.matmul(x, self.w) * self.gain


def _register(paddle_rules):
    dualml.register_layer(Bilinear, "torch", TorchScaled)
    dualml.register_layer(Bilinear, "paddle", PaddleScaled, paddle_rules)


def _cleanup():
    _IMPLS.pop(("torch", Bilinear), None)
    _IMPLS.pop(("paddle", Bilinear), None)


def test_registered_layer_is_picked_up_and_passes():
    _register(lambda s: [Rule(("weight",), "w", "T"), Rule(("scale",), "gain")])
    try:
        cases = [c for c in default_cases(zoo=False) if c.name == "layer:Bilinear"]
        assert len(cases) == 1
        for mode in cases[0].modes:
            r = run_case(cases[0], mode)
            assert r.passed, r.message
    finally:
        _cleanup()


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.first = nn.Linear(5, 5)
        self.custom = Bilinear(5, 3)
        self.last = nn.Linear(3, 2)

    def forward(self, x):
        return self.last(self.custom(self.first(x)))


def test_wrong_mapping_fails_and_names_the_layer():
    # forgot the transpose: shapes [5,3] vs canonical [3,5] would not even load, so use a square
    # layer where a missing transpose loads silently and only the numbers tell
    class Square(Bilinear):
        @classmethod
        def examples(cls):
            return []
    dualml.register_layer(Square, "torch", TorchScaled)
    dualml.register_layer(Square, "paddle", PaddleScaled, lambda s: [Rule(("weight",), "w"), Rule(("scale",), "gain")])

    class SquareNet(Net):
        def __init__(self):
            super().__init__()
            self.custom = Square(5, 5)
            self.last = nn.Linear(5, 2)
    try:
        r = run_case(Case("model:squarenet", "model", SquareNet(), [nn.InputSpec((3, 5))]), "eval")
        assert not r.passed
        assert "forward max abs diff" in r.message
        assert r.first_divergence.startswith("custom ")
    finally:
        _IMPLS.pop(("torch", Square), None)
        _IMPLS.pop(("paddle", Square), None)
    np.testing.assert_equal(r.param_layout, True)  # names/shapes were fine: only values caught it
