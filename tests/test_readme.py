"""The README's model example runs as written and gives the same outputs on both backends."""
import re
from pathlib import Path

import numpy as np
import pytest

import dualml


@pytest.mark.backends("torch", "paddle")  # the example builds tnet and pnet by name
def test_readme_model_example_runs():
    src = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    block = re.search(r"```python\n(import numpy as np.*?)```", src, re.S).group(1)
    ns: dict = {}
    exec(block, ns)
    x = np.random.default_rng(0).random((2, 1, 8, 8)).astype("float32")
    bt, bp = dualml.get_backend("torch"), dualml.get_backend("paddle")
    yt = bt.numpy(ns["tnet"](bt.tensor(x)))
    np.testing.assert_allclose(bp.numpy(ns["pnet"](bp.tensor(x))), yt, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(bp.numpy(ns["pnet2"](bp.tensor(x))), yt, atol=1e-5, rtol=1e-5)
