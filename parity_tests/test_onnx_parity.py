"""Cross-backend ONNX parity: for every zoo model the torch export and the paddle export, made
from the same canonical weights, give the same ONNX Runtime outputs (and each matches its eager
model). The exporters build different graphs; the operator histograms show how."""

import numpy as np
import pytest

from dualml.onnx.export import compare, onnx_markdown, onnx_parity
from dualml.parity import checked_model
from dualml.testing import backend_pair
from dualml.zoo import ZOO


@pytest.fixture(scope="module")
def report():
    return onnx_parity({n: checked_model(n) for n in ZOO}, backend_pair(), seed=0, batch=2)


@pytest.mark.parametrize("name", list(ZOO))
def test_torch_and_paddle_exports_agree_in_onnxruntime(report, name):
    r = next(r for r in report["results"] if r["model"] == name)
    assert r["passed"], r
    assert r["max_abs"] <= 1e-5
    for b in report["backends"]:
        e = r["exports"][b]
        assert e["error"] is None and e["vs_eager_max_abs"] <= 1e-5
        assert sum(e["ops"].values()) > 0


def test_markdown_shows_both_histograms(report):
    md = onnx_markdown(report)
    a, b = report["backends"]
    assert f"| op | {a} | {b} |" in md and "| Conv |" in md and "### transformer: operators" in md


def test_compare_catches_a_real_difference():
    ref = np.ones((2, 3), "float32")
    assert compare(ref + 5e-6, ref, 1e-5, 1e-5)["passed"]
    bad = compare(ref + 1e-4, ref, 1e-5, 1e-5)
    assert not bad["passed"] and abs(bad["max_abs"] - 1e-4) < 1e-6
    assert not compare(ref[:1], ref, 1e-5, 1e-5)["passed"]
