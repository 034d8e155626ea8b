"""The traffic forecaster (issue #17): shapes, torch/paddle parity for every positional encoding and
fusion, float64 agreement, ONNX export from both backends, short training on data=traffic, bad configs."""
import json

import numpy as np
import pytest

import dualml
from dualml.attention import ENCODINGS, FUSIONS
from dualml.config import load_config
from dualml.errors import ConfigError
from dualml.parity import Case, Tolerance, run_case
from dualml.zoo import create_model

N = 5
TINY = {"nodes": N, "embed_dim": 8, "num_heads": 2, "temporal_depth_1": 1, "spatial_depth_1": 1,
        "temporal_depth_2": 1, "spatial_depth_2": 1}
TRAIN = ["model=forecaster", "data=traffic", f"data.nodes={N}", "data.days=2", "data.batch_size=16",
         "trainer.loss=mae", "trainer.max_steps=3", *[f"model.{k}={v}" for k, v in TINY.items()]]


def tiny(**kw):
    return create_model("forecaster", **{**TINY, **kw})


def test_forward_shape_and_asymmetric_depths():
    x = np.random.default_rng(0).standard_normal((3, 12, N, 2)).astype(np.float32)
    for kw in ({}, {"temporal_depth_1": 1, "spatial_depth_1": 1, "temporal_depth_2": 3, "spatial_depth_2": 3},
               {"output_len": 4, "dropout": 0.1}):
        model = tiny(**kw)
        net = dualml.build(model, "torch", seed=0)
        dualml.get_backend("torch").set_train(net, False)
        out = net(dualml.get_backend("torch").tensor(x)).detach().numpy()
        assert out.shape == (3, model.output_len, N)
    # T S S S: the blocks alternate until the shorter kind runs out
    stage = tiny(temporal_depth_2=1, spatial_depth_2=3).stage2
    assert stage.order == [("t", 0), ("s", 0), ("s", 1), ("s", 2)]
    assert create_model("forecaster").embed_dim == 96  # the documented defaults build


@pytest.mark.backends("torch", "paddle")
@pytest.mark.parametrize("position,fusion_type", [*[(p, "gated") for p in ENCODINGS],
                                                   *[("sinusoidal", f) for f in FUSIONS if f != "gated"]])
def test_torch_and_paddle_agree(position, fusion_type):
    model = tiny(positional_encoding_type=position, fusion_type=fusion_type)
    r = run_case(Case(f"forecaster-{position}-{fusion_type}", "model", model, model.input_spec(2), ("eval",)),
                 "eval")
    assert r.passed and r.forward_max_abs <= 1e-5, r


@pytest.mark.backends("torch", "paddle")
def test_float64_agreement_and_train_mode_gradients():
    model = tiny(positional_encoding_type="relative", fusion_type="gated_residual", spatial_depth_2=2)
    case = Case("forecaster-float64", "model", model, model.input_spec(2), ("train",))
    r = run_case(case, "train", tol=Tolerance.float64(1e-9), dtype="float64")
    assert r.passed and r.dtype == "float64", r
    r32 = run_case(case, "train")  # gradients through every piece in float32 too
    assert r32.passed, r32


@pytest.mark.backends("torch", "paddle")
def test_both_onnx_exports_agree_in_onnxruntime():
    from dualml.onnx.export import onnx_parity
    from dualml.testing import backend_pair

    pair = backend_pair()
    report = onnx_parity({"forecaster": tiny(positional_encoding_type="rotary", fusion_type="cross_attn")},
                         pair, seed=0, batch=2)
    r = report["results"][0]
    assert r["passed"] and r["max_abs"] <= 1e-5, r
    for b in pair:
        assert r["exports"][b]["error"] is None and r["exports"][b]["vs_eager_max_abs"] <= 1e-5


@pytest.mark.backends("torch", "paddle")
@pytest.mark.parametrize("backend", ["torch", "paddle"])
def test_three_training_steps_on_traffic(backend, tmp_path):
    from dualml.train.trainer import Trainer

    cfg = load_config([*TRAIN, f"backend={backend}", f"trainer.run_dir={tmp_path / 'run'}"])
    m = Trainer(cfg, progress=False).fit()
    assert np.isfinite(m["test_mae"])
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert set(saved["test_horizons"]) == {"3", "6", "12"} and "historical_average" in saved["baselines"]
    png = (tmp_path / "run" / "forecast.png").read_bytes()  # the per-run picture: forecast vs truth, MAE by horizon
    assert png.startswith(b"\x89PNG") and len(png) > 10_000


#: the documents' recipes: OneCycleLR, cosine warm restarts, and layer-wise rates for encoder / decoder / head
LAYERWISE = 'trainer.param_groups=[{params: "embed.*", lr_mult: 0.5}, {params: "stage1.*", lr_mult: 0.5}, ' \
            '{params: "stage2.*", lr_mult: 1.0}, {params: "head.*", lr_mult: 3.0}]'


@pytest.mark.parametrize("schedule", [["trainer.schedule.name=onecycle", "trainer.schedule.max_lr=0.01"],
                                      ["trainer.schedule.name=cosine_restarts", "trainer.schedule.t_0=2"]])
def test_documented_schedules_and_layerwise_rates_are_config(backend, schedule):
    """Each recipe is a config line on either backend: the groups take the parameters their globs name and
    the run trains on the schedule (that each group's optimizer rate is the scheduled rate times its
    multiplier is tests/test_training.py's test_scheduled_learning_rate_reaches_the_optimizer)."""
    from dualml.train.trainer import Trainer

    t = Trainer(load_config([*TRAIN, f"backend={backend}", "trainer.max_steps=10", *schedule, LAYERWISE]), write=False,
                progress=False)
    mults = {g.label: g.lr_mult for g in t.groups}
    assert sorted(mults.values()) == [0.5, 0.5, 1.0, 1.0, 3.0], mults  # 4 globs + the rest (fusion) at 1.0
    head = next(g for g in t.groups if g.lr_mult == 3.0)
    assert head.native_names and all("head" in n for n in head.native_names)
    m = t.fit()
    assert m["steps"] == 10 and np.isfinite(m["test_mae"])
    assert len(set(t.lrs)) > 1  # the schedule moved the rate


@pytest.mark.parametrize("overrides,needle", [
    (["model.num_heads=3"], "model.num_heads=3 is not allowed; it must divide embed_dim=8"),
    (["model.fusion_type=sum"], "model.fusion_type=sum is not allowed"),
    (["model.positional_encoding_type=alibi"], "model.positional_encoding_type=alibi is not allowed"),
    (["model.nodes=7"], "model.nodes=7 does not match data.nodes=5"),
    (["model.input_len=6"], "model.input_len=6 does not match data.input_len=12"),
    (["model.output_len=6"], "set model.output_len=12"),
    (["model.temporal_depth_1=-1"], "model.temporal_depth_1=-1 is not allowed"),
])
def test_bad_configs_are_one_line(overrides, needle):
    from dualml.train.trainer import Trainer

    with pytest.raises(ConfigError) as exc:
        Trainer(load_config([*TRAIN, *overrides]), write=False, progress=False)
    assert needle in str(exc.value) and "\n" not in str(exc.value), str(exc.value)
