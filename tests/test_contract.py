"""The adapter contract (``dualml.backend.Backend``): what the core reads from an adapter instead of
assuming it, and the one-line errors when an adapter lacks a member or a setting names one it lacks."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from omegaconf import OmegaConf

import dualml
from dualml.backend import Backend, StepPlan, default_backend, get_backend
from dualml.build import native_leaves
from dualml.compress.prune import prune_channels
from dualml.errors import BackendError, ConfigError
from dualml.evidence.bench import check_options
from dualml.onnx.export import export_model
from dualml.zoo import create_model


@pytest.mark.parametrize("name, exporters", [("torch", ("dynamo", "torchscript")), ("paddle", ("paddle2onnx",))])
def test_adapters_declare_what_the_core_reads(name, exporters):
    be = get_backend(name)
    assert be.exporters == exporters and isinstance(be.version, str) and be.version
    assert be.set_threads(1) == be.threads() == 1
    # hooks() is the base class's, over the adapter's add_hook
    assert type(be).hooks is Backend.hooks and type(be).train_step is Backend.train_step


def test_default_backend_is_an_installed_one():
    assert default_backend() in dualml.available_backends()


@pytest.mark.parametrize("name", ["torch", "paddle"])
def test_hooks_see_every_leaf_call_and_are_removed(name):
    be = get_backend(name)
    model = create_model("cnn")
    net = dualml.build(model, name, seed=0)
    leaves = native_leaves(net)
    seen: list[tuple[str, str]] = []
    x = be.tensor(model.input_spec(2)[0].sample(np.random.default_rng(0)))
    with be.no_grad():
        with be.hooks(leaves, pre=lambda p, i: seen.append(("pre", p)), post=lambda p, o: seen.append(("post", p))):
            net(x)
        calls = len(seen)
        net(x)
    assert seen[:2] == [("pre", "conv1"), ("post", "conv1")] and calls == len(seen) and calls % 2 == 0


def test_missing_filter_selection_is_one_line_naming_backend_and_what_is_allowed():
    class NoSelection(type(get_backend("paddle"))):
        select_filters = Backend.select_filters

    model = create_model("cnn")
    with pytest.raises(BackendError) as err:
        prune_channels(model, dualml.init_weights(model, 0), 0.5, backend=NoSelection(), verify=False)
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith("backend=paddle has no filter-selection tool; allowed: prune "
                                              "selection=numpy")


def test_exporter_is_checked_against_the_adapters_list(tmp_path):
    model = create_model("mlp")
    x = model.input_spec(2)[0].sample(np.random.default_rng(0))
    with pytest.raises(ConfigError) as err:
        export_model(model, "torch", dualml.init_weights(model, 0), tmp_path / "m.onnx", x, exporter="paddle2onnx")
    assert str(err.value) == ("export.exporter=paddle2onnx is not allowed for backend=torch; allowed: auto, dynamo, "
                              "torchscript")
    assert not (tmp_path / "m.onnx").exists()


def _bench(**over):
    base = {"repeats": 1, "warmup": 0, "min_seconds": 0, "threads": 1, "calib_batches": 1, "int8": False}
    return OmegaConf.create(base | over)


@pytest.mark.parametrize("over, message", [
    ({"backends": ["torch", "jax"]}, "bench.backends entry=jax is not allowed; allowed: paddle, torch"),
    ({"backends": ["torch", "torch"]}, "bench.backends=['torch', 'torch'] is not allowed; allowed: a list of distinct"),
    ({"backends": []}, "bench.backends=[] is not allowed"),
    ({"reference": "jax"}, "bench.reference=jax is not allowed; allowed: paddle, torch"),
    ({"backends": ["torch"], "reference": "paddle"}, "bench.reference=paddle is not allowed; allowed: torch"),
])
def test_bench_backends_and_reference_are_checked_in_one_line(over, message):
    with pytest.raises(ConfigError) as err:
        check_options(_bench(**over))
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_bench_defaults_keep_the_torch_over_paddle_keys():
    opts = check_options(_bench())
    assert (opts["backends"], opts["reference"]) == (["torch", "paddle"], "paddle")


def test_trainer_runs_the_adapters_own_step(monkeypatch):
    """An adapter that owns its step (a functional-autodiff framework would) is what the Trainer calls."""
    from dualml.config import load_config
    from dualml.train.trainer import Trainer

    calls = []

    class Recording(type(get_backend("torch"))):
        def train_step(self, plan: StepPlan, batches, lr, seed, scale):
            calls.append((len(batches), lr, seed, scale, plan.world_size))
            return super().train_step(plan, batches, lr, seed, scale)

    monkeypatch.setitem(sys.modules["dualml.backend"]._LOADED, "torch", Recording())
    cfg = load_config(["model=mlp", "data=digits", "backend=torch", "trainer.max_steps=2", "trainer.accumulate=2",
                       "trainer.schedule.name=constant"])
    t = Trainer(cfg, write=False, progress=False)
    it = iter(t.loader)
    rows = [t.train_step([next(it), next(it)]) for _ in range(2)]
    lr = float(cfg.trainer.optimizer.lr)
    assert calls == [(2, lr, None, None, 1)] * 2 and [r["step"] for r in rows] == [1, 2] and t.step == 2
