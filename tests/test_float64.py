"""The float64 reference mode: build, weights, training, checkpoints, resume and the parity suite in
float64, where both backends must compute the same function whatever the CPU."""
import subprocess
import sys

import numpy as np
import pytest

import dualml
from dualml.checkpoint import load_weights
from dualml.config import load_config
from dualml.errors import ConfigError, WeightsError
from dualml.parity import Tolerance, default_cases, run_case, run_suite
from dualml.testing import selected_backends
from dualml.train.trainer import Trainer
from dualml.zoo import create_model

ADAM = ["model=mlp", "trainer.optimizer.name=adam", "trainer.optimizer.lr=1e-2", "trainer.schedule.name=constant",
        "trainer.dtype=float64"]


def trainer(*overrides: str, write: bool = False) -> Trainer:
    return Trainer(load_config(list(overrides)), write=write, progress=False)


@pytest.mark.parametrize("backend", selected_backends())
def test_build_in_float64_widens_exactly_and_refuses_narrowing(backend):
    model = create_model("cnn")
    w32 = dualml.init_weights(model, 0)
    net = dualml.build(model, backend, weights=w32, dtype="float64")
    got = dualml.get_weights(net)
    assert all(v.dtype == np.float64 for v in got.values() if v.dtype.kind == "f")
    assert all(np.array_equal(got[k], w32[k]) for k in w32)
    dualml.set_weights(net, w32)  # float32 widens into a float64 model
    net32 = dualml.build(model, backend)
    with pytest.raises(WeightsError, match="dtype float64, model expects float32"):
        dualml.set_weights(net32, got)  # narrowing would round: refused, named
    assert dualml.convert(net, "paddle" if backend == "torch" else "torch")._dualml_dtype == "float64"


def test_float64_cross_backend_resume_continues_exactly(tmp_path):
    """A float64 run checkpointed on torch and resumed on paddle follows the uninterrupted torch run
    to float64 precision (fp32 resume across backends: 1e-4, tests/test_training.py)."""
    ref = trainer("backend=torch", *ADAM, "trainer.max_steps=30")
    ref.fit()
    run = tmp_path / "r"
    trainer("backend=torch", *ADAM, "trainer.max_steps=15", f"trainer.run_dir={run}", "trainer.checkpoint_every=15",
            write=True).fit()
    arrays, meta = load_weights(run / "last.safetensors")
    assert all(v.dtype == np.float64 for k, v in arrays.items() if k.startswith(("model/", "optim/")))
    assert meta["config"]["trainer"]["dtype"] == "float64"
    cont = trainer("backend=paddle", *ADAM, "trainer.max_steps=30", f"trainer.run_dir={run}", "trainer.resume=true",
                   write=True)
    cont.fit()
    ours = np.array([r["loss"] for r in cont.history.steps[15:]])
    theirs = np.array([r["loss"] for r in ref.history.steps[15:]])
    assert len(ours) == 15
    np.testing.assert_allclose(ours, theirs, rtol=1e-9)


def test_resuming_in_another_dtype_is_refused(tmp_path):
    run = tmp_path / "r"
    trainer("backend=torch", "model=mlp", "trainer.max_steps=3", f"trainer.run_dir={run}", write=True).fit()
    with pytest.raises(dualml.DualmlError, match="trainer.dtype: checkpoint 'float32', now 'float64'"):
        trainer("backend=torch", "model=mlp", "trainer.max_steps=6", "trainer.dtype=float64",
                f"trainer.run_dir={run}", "trainer.resume=true", write=True).fit()


@pytest.mark.parametrize("overrides,message", [
    (["trainer.dtype=float16"], "trainer.dtype=float16 is not allowed; allowed: float32, float64"),
    (["trainer.dtype=float64", "trainer.amp=bf16"], "trainer.amp=bf16 with trainer.dtype=float64 is not allowed"),
])
def test_bad_dtype_settings_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        trainer("backend=torch", "model=mlp", *overrides)


@pytest.mark.parametrize("command", [["parity", "parity.dtype=float16"], ["train", "trainer.dtype=bfloat16"]])
def test_cli_refuses_other_dtypes_in_one_line(command):
    out = subprocess.run([sys.executable, "-m", "dualml", *command, "model=mlp"], capture_output=True, text=True)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "allowed: float32, float64" in lines[0], out.stderr


def test_float64_parity_suite_passes_every_layer_and_op_within_1e_10():
    report = run_suite(default_cases(zoo=False), tol=Tolerance.float64(), dtype="float64", progress=False)
    failed = [f"{r['name']} [{r['mode']}]: {r['message']}" for r in report["results"] if not r["passed"]]
    assert not failed, failed
    assert report["summary"]["max_forward_abs"] < 1e-12
    named = {r["name"] for r in report["results"] if r["float32_constants"]}
    assert named and all("AvgPool" in n for n in named), named  # paddle's float32 1/window, nothing else


def test_named_constant_is_needed_and_the_float64_criterion_bites(monkeypatch):
    """Without naming paddle's float32 average-pool factor, the AvgPool1d case fails the float64
    criterion (3e-8 relative): float64 parity detects a difference one float32 rounding wide."""
    case = next(c for c in default_cases(zoo=False) if c.name == "layer:AvgPool1d")
    assert run_case(case, "eval", tol=Tolerance.float64(), dtype="float64").passed
    monkeypatch.setattr(dualml.get_backend("paddle"), "float32_constants", {})
    r = run_case(case, "eval", tol=Tolerance.float64(), dtype="float64")
    assert not r.passed and "gradient of input0" in r.message


def test_a_backend_without_float64_or_a_model_that_cannot_cast_is_one_line(monkeypatch):
    be = dualml.get_backend("torch")
    model = create_model("mlp")
    monkeypatch.setattr(be, "dtypes", ("float32",))
    with pytest.raises(dualml.BackendError, match="dtype=float64 is not allowed on backend=torch; it has: float32"):
        dualml.build(model, "torch", dtype="float64")
    monkeypatch.undo()

    def refuse(module, dtype):
        raise RuntimeError("no float64 kernel for this layer\nsecond line")
    monkeypatch.setattr(be, "to_dtype", refuse)
    with pytest.raises(dualml.BackendError, match="MLP cannot run in float64 on backend=torch: no float64 kernel"):
        dualml.build(model, "torch", dtype="float64")
