"""Mixed precision ``trainer.amp=bf16`` on CPU: what each backend really runs, and that training survives it.

Measured facts these tests pin down (so a framework upgrade that changes them fails here, and the
README/adapter docstrings get revisited instead of silently going stale):

- torch 2.13: ``torch.autocast('cpu', dtype=torch.bfloat16)`` runs Linear and Conv2d in bfloat16
  (their outputs are bfloat16); parameters and their gradients stay float32.
- paddle 2.6.2: ``paddle.amp.auto_cast`` is disabled off-GPU, and the CPU kernels of matmul and
  conv2d exist for float32/float64 only, so the adapter's autocast runs float32 (and warns once).
  A paddle run with ``amp=bf16`` therefore gives exactly the float32 loss curve.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterator

import numpy as np
import pytest

import dualml
from dualml import nn
from dualml.config import load_config
from dualml.testing import selected_backends
from dualml.train.trainer import Trainer

STEPS = 30

#: Largest allowed per-step |loss(bf16) - loss(fp32)| over the 30-step mlp run (Adam lr 1e-2, batch 64).
#: Measured on this machine (Xeon with AVX512-BF16/AMX, torch 2.13): 0.025 for seed 0 (3.1% of the
#: loss at that step); over seeds 0-5 the worst was 0.037 (5.0%). The difference is rounding of the
#: bf16 activations compounding through 30 Adam updates, not a bias: it changes sign from step to step.
#: 0.1 leaves ~4x margin for seed 0 and ~2.7x over the seeds tried, for CPUs without bf16 instructions
#: (different accumulation order in emulated bf16) while still catching a broken cast (an fp16 overflow
#: or a bf16 loss reduction moves the curve by > 0.3 within a few steps).
CURVE_ATOL = 0.1
#: The first step's loss differs only by the rounding of one bf16 forward pass at initialisation
#: (measured 3e-5 on mlp: the initial logits are small, so their absolute rounding error is too).
FIRST_STEP_ATOL = 1e-3


class LinearConv(nn.Module):
    """One Conv2d and one Linear: the two layer kinds mixed precision is about."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        F = self.F
        h = self.conv(x)
        self.seen = {"conv": h, "fc": None}
        out = self.fc(F.flatten(h, 1))
        self.seen["fc"] = out
        return out


def _run(backend: str, amp: str | None) -> Trainer:
    overrides = [f"backend={backend}", "model=mlp", f"trainer.max_steps={STEPS}"]
    if amp:
        overrides.append(f"trainer.amp={amp}")
    t = Trainer(load_config(overrides), write=False, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # paddle's one-time "trains in float32" notice is tested on its own
        t.fit()
    return t


@pytest.fixture(scope="module")
def curves() -> Iterator[dict[tuple[str, str | None], Trainer]]:
    """The 30-step mlp run per backend, fp32 and bf16 (trained once, shared by the tests below)."""
    yield {(b, amp): _run(b, amp) for b in selected_backends() for amp in (None, "bf16")}


def _loss(t: Trainer) -> np.ndarray:
    return np.array([r["loss"] for r in t.history.steps])


@pytest.mark.backends("torch")
def test_torch_autocast_runs_linear_and_conv_in_bf16():
    import torch

    be = dualml.get_backend("torch")
    net = dualml.build(LinearConv(), "torch", seed=0)
    x = be.tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype("float32"))
    with be.autocast("bf16"):
        out = net(x)
        loss = be.cross_entropy(out, be.tensor(np.array([1, 2])))
    assert net.seen["conv"].dtype == torch.bfloat16
    assert net.seen["fc"].dtype == torch.bfloat16
    assert loss.dtype == torch.float32  # the adapter reduces the loss in float32
    loss.backward()
    assert net.fc.weight.dtype == torch.float32 and net.fc.weight.grad.dtype == torch.float32  # fp32 master weights
    with be.autocast(None):
        assert net(x).dtype == torch.float32


@pytest.mark.backends("paddle")
def test_paddle_autocast_runs_float32_on_cpu_and_says_so():
    import paddle

    if paddle.device.get_device().startswith("gpu"):
        pytest.skip("this pins paddle's CPU behaviour; on GPU the adapter uses paddle.amp.auto_cast O1")
    be = dualml.get_backend("paddle")
    be._cpu_amp_warned = False  # the notice is once per process: re-arm it for this test
    net = dualml.build(LinearConv(), "paddle", seed=0)
    x = be.tensor(np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype("float32"))
    with pytest.warns(UserWarning, match="trains in float32"):
        with be.autocast("bf16"):
            net(x)
    # measured: both stay float32, because paddle 2.6.2 cannot run them in bf16 on CPU at all
    assert net.seen["conv"].dtype == paddle.float32
    assert net.seen["fc"].dtype == paddle.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once, not every step
        with be.autocast("bf16"):
            net(x)
    # the reason, checked directly: no bfloat16 CPU kernel for matmul or conv2d in dynamic-graph mode
    a = paddle.ones([2, 2]).astype("bfloat16")
    with pytest.raises(Exception, match="kernel .*matmul.* is not registered"):
        paddle.matmul(a, a)
    with pytest.raises(Exception, match="kernel .*conv2d.* is not registered"):
        paddle.nn.functional.conv2d(paddle.ones([1, 1, 4, 4]).astype("bfloat16"),
                                    paddle.ones([1, 1, 3, 3]).astype("bfloat16"))
    # and paddle's own bf16 auto_cast is a no-op here (it warns and leaves the output float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with paddle.amp.auto_cast(dtype="bfloat16", level="O1"):
            assert paddle.nn.functional.linear(paddle.ones([2, 3]), paddle.ones([3, 4])).dtype == paddle.float32


@pytest.mark.parametrize("backend", selected_backends())
def test_bf16_training_decreases_loss_with_finite_weights(backend, curves):
    t = curves[(backend, "bf16")]
    loss = _loss(t)
    assert len(loss) == STEPS and np.isfinite(loss).all()
    assert loss[-5:].mean() < 0.5 * loss[:5].mean(), loss  # measured: 2.18 -> 0.45 on both
    weights = dualml.get_weights(t.net)
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in weights.values())


@pytest.mark.backends("torch")
def test_bf16_curve_stays_near_fp32_curve_on_torch(curves):
    fp32, bf16 = _loss(curves[("torch", None)]), _loss(curves[("torch", "bf16")])
    assert abs(bf16[0] - fp32[0]) <= FIRST_STEP_ATOL
    np.testing.assert_allclose(bf16, fp32, rtol=0, atol=CURVE_ATOL)
    assert not np.array_equal(bf16, fp32)  # bf16 really ran: the curves are close, not identical


@pytest.mark.backends("torch", "paddle")
def test_bf16_on_paddle_cpu_is_exactly_the_fp32_curve_and_near_torch_bf16(curves):
    import paddle

    if paddle.device.get_device().startswith("gpu"):
        pytest.skip("on GPU paddle runs real bf16")
    paddle_bf16 = _loss(curves[("paddle", "bf16")])
    np.testing.assert_array_equal(paddle_bf16, _loss(curves[("paddle", None)]))  # float32, measured
    # the cross-backend promise under amp=bf16: same config, curves within the bf16 tolerance
    np.testing.assert_allclose(paddle_bf16, _loss(curves[("torch", "bf16")]), rtol=0, atol=CURVE_ATOL)


# ---------------------------------------------------------------- fp16 with dynamic loss scaling

def _fp16_trainer(backend: str, *extra: str) -> Trainer:
    return Trainer(load_config([f"backend={backend}", "model=mlp", "trainer.amp=fp16", *extra]),
                   write=False, progress=False)


def _params(t: Trainer) -> dict[str, np.ndarray]:
    return dualml.get_weights(t.net)


@pytest.mark.backends("torch")
def test_fp16_torch_trains_in_half_with_the_scaled_loss():
    """torch's CPU autocast runs fp16 kernels; the neutral scaler keeps the curve close to fp32."""
    t = _fp16_trainer("torch", f"trainer.max_steps={STEPS}")
    be = t.be
    x = be.tensor(t.data.train.x[:4])
    with be.autocast("fp16"):
        assert str(t.net(x).dtype) == "torch.float16"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit()
    fp32 = _run("torch", None)
    assert [r["loss_scale"] for r in t.history.steps] == [65536.0] * STEPS  # no overflow on this run
    assert np.abs(_loss(t) - _loss(fp32)).max() < CURVE_ATOL


@pytest.mark.backends("paddle")
def test_fp16_paddle_on_cpu_is_exactly_the_fp32_curve():
    """Paddle runs float32 on CPU; scaling by a power of two and back is exact, so fp16 = fp32 bit for bit."""
    t = _fp16_trainer("paddle", f"trainer.max_steps={STEPS}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t.fit()
    np.testing.assert_array_equal(_loss(t), _loss(_run("paddle", None)))


@pytest.mark.parametrize("backend", selected_backends())
def test_overflow_skips_the_update_halves_the_scale_and_training_goes_on(backend):
    t = _fp16_trainer(backend, "trainer.max_steps=10")
    batch = [(t.data.train.x[:64], t.data.train.y[:64])]
    # torch's fp16 backward overflows at 65504 already; paddle computes in float32 on CPU, so its
    # inputs are scaled up 1e6 (loss still finite) until scale * gradient passes float32's 3.4e38
    big = batch if backend == "torch" else [(batch[0][0] * 1e6, batch[0][1])]
    before = _params(t)
    t.scaler.scale = 3e38
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        row = t.train_step(big)
    after = _params(t)
    assert all(np.array_equal(before[k], after[k]) for k in before), "an overflowed step must not update"
    assert (t.scaler.scale, t.scaler.skipped, t.step, row["loss_scale"]) == (1.5e38, 1, 1, 3e38)
    t.scaler.scale, t.scaler.interval = 1024.0, 2
    for _ in range(2):
        t.train_step(batch)
    assert t.scaler.scale == 2048.0 and t.scaler.good == 0  # grew after `interval` good steps
    assert any(not np.array_equal(before[k], v) for k, v in _params(t).items())
    assert t._state_meta()["loss_scaler"] == {"scale": 2048.0, "good": 0, "skipped": 1, "interval": 2}
