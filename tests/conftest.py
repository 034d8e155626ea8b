import numpy as np
import pytest

import dualml
from dualml import nn
from dualml.testing import selected_backends


class TinyMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


@pytest.fixture
def tiny() -> TinyMLP:
    return TinyMLP()


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch's second intra-op thread beside paddle on a shared 2-core machine only spins: small convs
    and QAT steps measured 15-50x slower. Restored after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=selected_backends())
def backend(request) -> str:
    """Each selected backend (installed adapters, narrowed by DUALML_TEST_BACKENDS)."""
    return request.param


def run(net, backend: str, x: np.ndarray) -> np.ndarray:
    be = dualml.get_backend(backend)
    return be.numpy(net(be.tensor(x)))
