"""The neutral learning-rate schedules equal torch's schedulers stepped once per optimizer step."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from dualml.errors import ConfigError
from dualml.train.schedules import check_schedule, group_lrs, lr_at, schedule

torch = pytest.importorskip("torch")
S = torch.optim.lr_scheduler

LR = 0.1


def torch_lrs(make, total: int, lrs=(LR,)) -> np.ndarray:
    """The lr of each param group before each optimizer step, the scheduler stepped after it: [total, groups]."""
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in lrs]
    opt = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, lrs)], lr=lrs[0])
    sched = make(opt)
    out = []
    for _ in range(total):
        out.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return np.array(out, dtype=np.float64)


def warm(w: int, f: float, make):
    """torch's warm-up: SequentialLR(LinearLR(f, total_iters=w), X, milestones=[w])."""
    return lambda opt: S.SequentialLR(opt, [S.LinearLR(opt, start_factor=f, total_iters=w), make(opt)], [w])


CASES = [  # (id, our config, total_steps, torch scheduler factory)
    ("constant", {"name": "constant"}, 10, lambda o: S.LambdaLR(o, lambda t: 1.0)),
    ("step", {"name": "step", "step_size": 7, "gamma": 0.5}, 40, lambda o: S.StepLR(o, 7, gamma=0.5)),
    ("step-default-gamma", {"name": "step", "step_size": 3}, 20, lambda o: S.StepLR(o, 3)),
    ("cosine", {"name": "cosine"}, 50, lambda o: S.CosineAnnealingLR(o, T_max=50)),
    ("cosine-tmax-eta", {"name": "cosine", "t_max": 17, "eta_min": 1e-3}, 60,
     lambda o: S.CosineAnnealingLR(o, T_max=17, eta_min=1e-3)),
    ("restarts", {"name": "cosine_restarts", "t_0": 10, "eta_min": 1e-4}, 45,
     lambda o: S.CosineAnnealingWarmRestarts(o, T_0=10, eta_min=1e-4)),
    ("restarts-mult", {"name": "cosine_restarts", "t_0": 3, "t_mult": 2}, 70,
     lambda o: S.CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
    ("onecycle-cos", {"name": "onecycle", "max_lr": 0.5}, 100,
     lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=100, cycle_momentum=False)),
    ("onecycle-linear", {"name": "onecycle", "anneal": "linear", "pct_start": 0.25, "div_factor": 10.0,
                         "final_div_factor": 100.0}, 77,
     lambda o: S.OneCycleLR(o, max_lr=LR, total_steps=77, pct_start=0.25, div_factor=10.0, final_div_factor=100.0,
                            anneal_strategy="linear", cycle_momentum=False)),
    ("onecycle-three-phase", {"name": "onecycle", "three_phase": True, "max_lr": 1.0}, 64,
     lambda o: S.OneCycleLR(o, max_lr=1.0, total_steps=64, three_phase=True, cycle_momentum=False)),
    ("warmup-constant", {"name": "constant", "warmup_steps": 5}, 20,
     warm(5, 1 / 3, lambda o: S.LambdaLR(o, lambda t: 1.0))),
    ("warmup-cosine", {"name": "cosine", "warmup_steps": 8, "warmup_start_factor": 0.01, "eta_min": 1e-5}, 50,
     warm(8, 0.01, lambda o: S.CosineAnnealingLR(o, T_max=42, eta_min=1e-5))),
    ("warmup-step", {"name": "step", "step_size": 4, "gamma": 0.7, "warmup_steps": 3}, 25,
     warm(3, 1 / 3, lambda o: S.StepLR(o, 4, gamma=0.7))),
    ("warmup-restarts", {"name": "cosine_restarts", "t_0": 6, "t_mult": 2, "warmup_steps": 4,
                         "warmup_start_factor": 0.5}, 40,
     warm(4, 0.5, lambda o: S.CosineAnnealingWarmRestarts(o, T_0=6, T_mult=2))),
]


@pytest.mark.parametrize("cfg,total,make", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_schedule_equals_torch(cfg, total, make):
    ours = schedule(LR, cfg, total)
    ref = torch_lrs(make, total)[:, 0]
    assert ours.shape == (total,) and ours.dtype == np.float64
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0)
    assert [lr_at(t, LR, cfg, total) for t in range(total)] == ours.tolist()


@pytest.mark.parametrize("cfg,total,make", [CASES[i][1:] for i in (3, 5, 8, 11)],
                         ids=[CASES[i][0] for i in (3, 5, 8, 11)])
def test_group_multipliers_equal_torch_param_groups(cfg, total, make):
    mult = [1.0, 0.1, 2.5]
    lrs = tuple(LR * m for m in mult)
    if cfg["name"] == "onecycle":  # torch takes one max_lr per group; ours scales max_lr by the multiplier
        max_lr = [cfg.get("max_lr", LR) * m for m in mult]
        kw = {k: cfg[k] for k in ("pct_start", "div_factor", "final_div_factor") if k in cfg}
        make = lambda o: S.OneCycleLR(o, max_lr=max_lr, total_steps=total, anneal_strategy=cfg.get("anneal", "cos"),
                                      cycle_momentum=False, **kw)
    ref = torch_lrs(make, total, lrs)
    ours = np.array([group_lrs(t, LR, cfg, total, mult) for t in range(total)])
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=0)
    np.testing.assert_allclose(ours[:, 0], schedule(LR, cfg, total), rtol=0, atol=0)


def test_group_multiplier_scales_without_eta_min():
    cfg = {"name": "cosine", "warmup_steps": 3}
    for t in (0, 2, 3, 9, 19):
        a, b, c = group_lrs(t, LR, cfg, 20, [1.0, 0.5, 0.0])
        assert a == lr_at(t, LR, cfg, 20)
        assert b == pytest.approx(0.5 * a, rel=1e-12) and c == 0.0


def test_warmup_start_factor_zero_and_shape_of_ramp():
    vals = schedule(1.0, {"name": "constant", "warmup_steps": 4, "warmup_start_factor": 0.0}, 8)
    np.testing.assert_allclose(vals, [0.0, 0.25, 0.5, 0.75, 1, 1, 1, 1])
    vals = schedule(1.0, {"name": "constant", "warmup_steps": 3}, 5)  # default start factor 1/3, like torch
    np.testing.assert_allclose(vals, [1 / 3, 5 / 9, 7 / 9, 1, 1])


def test_defaults_and_endpoints():
    assert schedule(LR, None, 3).tolist() == [LR] * 3
    assert schedule(LR, {}, 3).tolist() == [LR] * 3
    v = schedule(LR, {"name": "onecycle"}, 100)
    assert v[0] == pytest.approx(LR / 25) and v.max() == pytest.approx(LR) and v[-1] == pytest.approx(LR / 25 / 1e4)
    p = check_schedule({"name": "cosine", "warmup_steps": 10}, 100)
    assert p["t_max"] == 90 and p["eta_min"] == 0.0 and p["warmup_start_factor"] == pytest.approx(1 / 3)


@pytest.mark.parametrize("cfg,total,needle", [
    ({"name": "cosin"}, 10, "schedule.name=cosin is not allowed; allowed: constant, cosine, cosine_restarts, "
                            "onecycle, step (did you mean 'cosine'?)"),
    ({"name": "cosine", "tmax": 3}, 10, "unknown config key 'schedule.tmax' for schedule.name=cosine "
                                        "(did you mean 'schedule.t_max'?)"),
    ({"name": "step", "gamma": 0.5}, 10, "schedule.step_size is required for schedule.name=step"),
    ({"name": "step", "step_size": 0}, 10, "schedule.step_size=0 is not allowed; it must be a positive integer"),
    ({"name": "step", "step_size": 2.5}, 10, "schedule.step_size=2.5 is not allowed"),
    ({"name": "step", "step_size": 2, "gamma": -1}, 10, "schedule.gamma=-1 is not allowed; it must be a number > 0"),
    ({"name": "cosine", "t_max": -5}, 10, "schedule.t_max=-5 is not allowed"),
    ({"name": "cosine", "eta_min": -1e-3}, 10, "schedule.eta_min=-0.001 is not allowed; it must be a number >= 0"),
    ({"name": "cosine_restarts", "t_0": 4, "t_mult": 0}, 10, "schedule.t_mult=0 is not allowed"),
    ({"name": "onecycle", "anneal": "cosine"}, 10, "schedule.anneal=cosine is not allowed; allowed: cos, linear"),
    ({"name": "onecycle", "pct_start": 1.5}, 10, "schedule.pct_start=1.5 is not allowed; it must be a number > 0 "
                                                 "and < 1"),
    ({"name": "onecycle", "pct_start": 0.05}, 10, "every onecycle phase needs at least one step"),
    ({"name": "onecycle", "max_lr": 0}, 10, "schedule.max_lr=0 is not allowed"),
    ({"name": "onecycle", "three_phase": "yes"}, 10, "schedule.three_phase='yes' is not allowed"),
    ({"name": "onecycle", "warmup_steps": 3}, 10, "schedule.warmup_steps=3 is not allowed with "
                                                  "schedule.name=onecycle"),
    ({"name": "cosine", "warmup_steps": 10}, 10, "schedule.warmup_steps=10 is not allowed with total_steps=10"),
    ({"name": "cosine", "warmup_steps": -1}, 10, "schedule.warmup_steps=-1 is not allowed"),
    ({"name": "cosine", "warmup_steps": 2, "warmup_start_factor": 1.5}, 10,
     "schedule.warmup_start_factor=1.5 is not allowed; it must be a number >= 0 and <= 1"),
    ({"name": "constant"}, 0, "total_steps=0 is not allowed"),
])
def test_bad_config_is_one_line_config_error(cfg, total, needle):
    with pytest.raises(ConfigError) as err:
        schedule(LR, cfg, total)
    msg = str(err.value)
    assert needle in msg and "\n" not in msg


def test_bad_call_arguments():
    with pytest.raises(ConfigError, match=r"lr=0 is not allowed"):
        lr_at(0, 0, {"name": "constant"}, 10)
    with pytest.raises(ConfigError, match=r"step=10 is not allowed; allowed: 0\.\.9"):
        lr_at(10, LR, {"name": "constant"}, 10)
    with pytest.raises(ConfigError, match=r"step=-1 is not allowed"):
        group_lrs(-1, LR, None, 10, [1.0])
    with pytest.raises(ConfigError, match=r"multipliers\[1\]=-0.5 is not allowed"):
        group_lrs(0, LR, None, 10, [1.0, -0.5])
    with pytest.raises(ConfigError, match=r"unknown config key 'trainer\.schedule\.gama'.*did you mean "
                                          r"'trainer\.schedule\.gamma'"):
        check_schedule({"name": "step", "step_size": 2, "gama": 0.5}, 10, prefix="trainer.schedule")
    with pytest.raises(ConfigError, match=r"trainer\.optimizer\.lr=-1 is not allowed"):
        check_schedule({"name": "constant"}, 10, -1, prefix="trainer.schedule", lr_key="trainer.optimizer.lr")


def test_module_imports_no_framework():
    code = ("import sys, dualml.train.schedules, dualml.train.data; "
            "sys.exit(any(m in sys.modules for m in ('torch', 'paddle')))")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
