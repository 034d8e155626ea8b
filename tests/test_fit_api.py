"""The Python API: dualml.fit trains a user's own Module on numpy arrays, no config group, no input_spec."""
import numpy as np
import pytest
from sklearn.datasets import load_digits

import dualml
from dualml import nn
from dualml.testing import backend_pair, selected_backends


class Net(nn.Module):
    """A user's model: nothing but layers and forward (no input_spec)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc2(self.F.relu(self.fc1(x)))


def _digits():
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32), y


@pytest.mark.parametrize("backend", selected_backends())
def test_fit_trains_a_user_model_on_numpy(backend, tmp_path):
    t = dualml.fit(Net(), _digits(), backend, epochs=20, optimizer={"name": "adam", "lr": 0.01},
                   run_dir=tmp_path / "run", progress=False)
    # a 64-32-10 MLP on 8x8 digits, 20 epochs: seeds 0-3 gave 0.964-0.978 (torch = paddle); 0.93 sits
    # three points under the lowest, about 11 of 360 test samples
    assert t.metrics["test_acc"] >= 0.93, t.metrics
    assert (tmp_path / "run" / "metrics.json").is_file() and t.metrics["model"] == "Net"
    assert type(t.net).__name__ == "Net" and dualml.get_backend(backend).name == backend


def test_fit_same_curve_on_both_backends_in_float64():
    runs = [dualml.fit(Net(), _digits(), b, max_steps=40, dtype="float64", optimizer={"name": "sgd", "lr": 0.1},
                       batch_size=16, progress=False) for b in backend_pair()]
    a, b = (np.array([r["loss"] for r in t.history.steps]) for t in runs)
    np.testing.assert_allclose(a, b, rtol=1e-9)


def test_fit_refuses_an_unknown_setting_in_one_line():
    with pytest.raises(dualml.ConfigError, match="fit\\(epoch=...\\) is not a trainer setting.*did you mean 'epochs'"):
        dualml.fit(Net(), _digits(), "torch", epoch=3)
