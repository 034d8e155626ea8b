"""Learning-rate schedules, computed once in plain Python, the same for every backend.

Why not each framework's own scheduler: ``torch.optim.lr_scheduler`` and ``paddle.optimizer.lr``
share names but not parameters or state. Paddle's ``OneCycleLR`` takes an absolute
``end_learning_rate`` where torch takes ``final_div_factor``; warm-up is ``LinearLR`` + ``SequentialLR``
in torch but ``LinearWarmup`` (absolute start and end rates) in paddle; torch's schedulers write the
rate into the optimizer's param groups while paddle's optimizer reads a scheduler object; cosine
annealing is computed recursively (``lr = ratio * last_lr``) in both, so its rounding depends on the
path taken; and each saves and resumes its own state. A loss curve that must agree step by step between
the backends cannot rest on that. So the trainer asks this module for the rate of optimizer step ``t``
and sets it on the optimizer itself before the update: both backends get the same float every step, a
resumed run gets the value for its step counter with no scheduler state to restore, and the whole curve
can be plotted or checked without building a model (:func:`schedule`).

Step semantics: ``step`` counts optimizer updates from 0; ``lr_at(0, ...)`` is the rate of the first
update and ``lr_at(total_steps - 1, ...)`` the last. Every value equals what the torch scheduler of
the same name yields when it is created before training and stepped once after every optimizer step
(``tests/test_schedules.py`` checks this within rtol 1e-9):

- ``constant``: the fixed ``lr``.
- ``step``: ``step_size`` (required), ``gamma`` (0.1); torch ``StepLR``.
- ``cosine``: ``t_max`` (default: the steps after warm-up), ``eta_min`` (0); torch ``CosineAnnealingLR``.
- ``cosine_restarts``: ``t_0`` (required), ``t_mult`` (1), ``eta_min`` (0); torch
  ``CosineAnnealingWarmRestarts``.
- ``onecycle``: ``max_lr`` (default ``lr``), ``pct_start`` (0.3), ``div_factor`` (25),
  ``final_div_factor`` (1e4), ``anneal`` (``cos`` | ``linear``, torch's ``anneal_strategy``),
  ``three_phase`` (false); torch ``OneCycleLR`` (learning rate only: momentum cycling is not done).

All periods (``step_size``, ``t_max``, ``t_0``) are in optimizer steps, not epochs: a ``StepLR``
that decays every k epochs is ``step_size = k * steps_per_epoch``.

Warm-up (``warmup_steps``, ``warmup_start_factor``) is *sequential*, exactly torch's
``SequentialLR([LinearLR(start_factor, total_iters=w), X], milestones=[w])``: steps ``0..w-1`` ramp
linearly ``lr * (f + (1 - f) * t / w)``, then the schedule ``X`` starts from its own step 0 (the full
``lr``) and runs over the remaining ``total_steps - w`` steps (the default ``t_max`` of ``cosine`` is
that remainder, so it still ends near ``eta_min``). The default ``warmup_start_factor`` is torch's
``LinearLR`` default, 1/3, so the first update is a real one; 0 (start from zero, as in many
transformer recipes) is allowed. ``onecycle`` rejects warm-up: it has its own (``pct_start``).

Parameter groups (:func:`group_lrs`) are given as multipliers of ``lr``: group ``i`` behaves as a
torch param group whose ``lr`` is ``lr * m_i`` (for ``onecycle`` also ``max_lr * m_i``), so absolute
values such as ``eta_min`` stay shared across groups, as in torch.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import ConfigError, check_keys, is_int, is_real, not_allowed

_REQUIRED = object()

#: Keys every schedule takes, with defaults.
COMMON: dict[str, Any] = {"name": "constant", "warmup_steps": 0, "warmup_start_factor": 1.0 / 3}

#: Each schedule's own keys, with defaults (``_REQUIRED``: must be given; ``None``: derived).
SCHEDULES: dict[str, dict[str, Any]] = {
    "constant": {},
    "step": {"step_size": _REQUIRED, "gamma": 0.1},
    "cosine": {"t_max": None, "eta_min": 0.0},
    "cosine_restarts": {"t_0": _REQUIRED, "t_mult": 1, "eta_min": 0.0},
    "onecycle": {"max_lr": None, "pct_start": 0.3, "div_factor": 25.0, "final_div_factor": 1e4,
                 "anneal": "cos", "three_phase": False},
}




def _int(key: str, v: Any, low: int) -> int:
    if not is_int(v) or v < low:
        what = "a positive integer" if low == 1 else f"an integer >= {low}"
        raise ConfigError(f"{key}={v!r} is not allowed; it must be {what}")
    return int(v)


def _real(key: str, v: Any, *, low: float = 0.0, low_open: bool = True, high: float | None = None,
          high_open: bool = False) -> float:
    ok = is_real(v)
    if ok:
        f = float(v)
        ok = (f > low if low_open else f >= low) and (high is None or (f < high if high_open else f <= high))
    if not ok:
        lo = f"{'>' if low_open else '>='} {low:g}"
        hi = "" if high is None else f" and {'<' if high_open else '<='} {high:g}"
        raise ConfigError(f"{key}={v!r} is not allowed; it must be a number {lo}{hi}")
    return float(v)


def check_schedule(sched: Mapping[str, Any] | None, total_steps: int, base_lr: float = 1.0,
                   prefix: str = "schedule", lr_key: str = "lr") -> dict[str, Any]:
    """Validate a schedule config and return it with every default filled in.

    The trainer calls this once at start-up (with ``prefix`` = where the schedule sits in its config and
    ``lr_key`` = the key of the base rate, so messages name the real keys); :func:`lr_at` calls it on
    every use (microseconds), so bad values never pass silently. Raises :class:`ConfigError` naming the
    key, the value given and what is allowed.
    """
    sched = dict(sched or {})
    if not is_int(total_steps) or total_steps < 1:
        raise ConfigError(f"total_steps={total_steps!r} is not allowed; it must be a positive integer "
                          "(epochs * batches per epoch)")
    _real(lr_key, base_lr)
    name = sched.get("name", COMMON["name"])
    if name not in SCHEDULES:
        raise ConfigError(not_allowed(f"{prefix}.name", name, SCHEDULES))
    defaults = {**COMMON, **SCHEDULES[name]}
    check_keys(prefix, sched, defaults, context=f" for {prefix}.name={name}")
    out = {k: sched.get(k, v) for k, v in defaults.items()}
    for key, value in out.items():
        if value is _REQUIRED:
            raise ConfigError(f"{prefix}.{key} is required for {prefix}.name={name}")
    k = lambda key: f"{prefix}.{key}"  # noqa: E731

    out["warmup_steps"] = _int(k("warmup_steps"), out["warmup_steps"], 0)
    out["warmup_start_factor"] = _real(k("warmup_start_factor"), out["warmup_start_factor"], low_open=False,
                                       high=1.0)
    w = out["warmup_steps"]
    if w >= total_steps:
        raise ConfigError(f"{k('warmup_steps')}={w} is not allowed with total_steps={total_steps}; "
                          "warm-up must leave at least one step for the schedule")
    if name == "onecycle" and w:
        raise ConfigError(f"{k('warmup_steps')}={w} is not allowed with {k('name')}=onecycle; it has its own "
                          f"warm-up phase ({k('pct_start')})")
    main_steps = total_steps - w
    if name == "step":
        out["step_size"] = _int(k("step_size"), out["step_size"], 1)
        out["gamma"] = _real(k("gamma"), out["gamma"])
    elif name == "cosine":
        out["t_max"] = main_steps if out["t_max"] is None else _int(k("t_max"), out["t_max"], 1)
        out["eta_min"] = _real(k("eta_min"), out["eta_min"], low_open=False)
    elif name == "cosine_restarts":
        out["t_0"] = _int(k("t_0"), out["t_0"], 1)
        out["t_mult"] = _int(k("t_mult"), out["t_mult"], 1)
        out["eta_min"] = _real(k("eta_min"), out["eta_min"], low_open=False)
    elif name == "onecycle":
        if out["max_lr"] is not None:
            out["max_lr"] = _real(k("max_lr"), out["max_lr"])
        out["pct_start"] = _real(k("pct_start"), out["pct_start"], high=1.0, high_open=True)
        out["div_factor"] = _real(k("div_factor"), out["div_factor"])
        out["final_div_factor"] = _real(k("final_div_factor"), out["final_div_factor"])
        if out["anneal"] not in ("cos", "linear"):
            raise ConfigError(not_allowed(k("anneal"), out["anneal"], ("cos", "linear")))
        if not isinstance(out["three_phase"], bool):
            raise ConfigError(f"{k('three_phase')}={out['three_phase']!r} is not allowed; allowed: false, true")
        ends = _onecycle_ends(out["pct_start"], main_steps, out["three_phase"])
        if any(b <= a for a, b in zip([0.0, *ends[:-1]], ends)):
            raise ConfigError(f"{k('pct_start')}={out['pct_start']} is not allowed with total_steps={total_steps}: "
                              f"every onecycle phase needs at least one step (phase ends at steps "
                              f"{', '.join(f'{e:g}' for e in ends)})")
    return out


def _onecycle_ends(pct_start: float, total: int, three_phase: bool) -> list[float]:
    """The phase end steps exactly as torch's OneCycleLR computes them (same float expressions)."""
    if three_phase:
        return [float(pct_start * total) - 1, float(2 * pct_start * total) - 2, total - 1]
    return [float(pct_start * total) - 1, total - 1]


def _anneal(kind: str, start: float, end: float, pct: float) -> float:
    if kind == "cos":
        return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
    return (end - start) * pct + start


def _lr(t: int, base_lr: float, p: Mapping[str, Any], total_steps: int) -> float:
    """The rate of step ``t`` for a checked config ``p`` (no validation: callers did it)."""
    w = p["warmup_steps"]
    if t < w:
        f = p["warmup_start_factor"]
        return base_lr * (f + (1.0 - f) * t / w)
    t -= w
    name = p["name"]
    if name == "constant":
        return float(base_lr)
    if name == "step":
        return base_lr * p["gamma"] ** (t // p["step_size"])
    if name == "cosine":
        eta = p["eta_min"]
        return eta + (base_lr - eta) * (1 + math.cos(math.pi * t / p["t_max"])) / 2
    if name == "cosine_restarts":
        t_i, mult = p["t_0"], p["t_mult"]
        if mult == 1:
            t_cur = t % t_i
        else:
            t_cur = t
            while t_cur >= t_i:
                t_cur, t_i = t_cur - t_i, t_i * mult
        eta = p["eta_min"]
        return eta + (base_lr - eta) * (1 + math.cos(math.pi * t_cur / t_i)) / 2
    # onecycle
    max_lr = base_lr if p["max_lr"] is None else p["max_lr"]
    initial = max_lr / p["div_factor"]
    low = initial / p["final_div_factor"]
    total = total_steps - w
    ends = _onecycle_ends(p["pct_start"], total, p["three_phase"])
    bounds = [(initial, max_lr), (max_lr, initial), (initial, low)] if p["three_phase"] else [(initial, max_lr),
                                                                                              (max_lr, low)]
    start = 0.0
    for i, (end, (a, b)) in enumerate(zip(ends, bounds)):
        if t <= end or i == len(ends) - 1:
            return _anneal(p["anneal"], a, b, (t - start) / (end - start))
        start = end
    raise AssertionError("unreachable")


def _check_step(step: Any, total_steps: int) -> int:
    if not is_int(step) or not 0 <= step < total_steps:
        raise ConfigError(f"step={step!r} is not allowed; allowed: 0..{total_steps - 1} (total_steps={total_steps})")
    return int(step)


def lr_at(step: int, base_lr: float, sched: Mapping[str, Any] | None, total_steps: int) -> float:
    """The learning rate of optimizer update ``step`` (0-based) out of ``total_steps``.

    Pure function of its arguments, so a resumed run only needs its step counter.
    """
    p = check_schedule(sched, total_steps, base_lr)
    return _lr(_check_step(step, total_steps), float(base_lr), p, total_steps)


def schedule(base_lr: float, sched: Mapping[str, Any] | None, total_steps: int) -> np.ndarray:
    """All ``total_steps`` learning rates (float64), for plots, reports and checks."""
    p = check_schedule(sched, total_steps, base_lr)
    return np.array([_lr(t, float(base_lr), p, total_steps) for t in range(total_steps)], dtype=np.float64)


def group_lrs(step: int, base_lr: float, sched: Mapping[str, Any] | None, total_steps: int,
              multipliers: Sequence[float]) -> list[float]:
    """Learning rates of step ``step`` for parameter groups whose rate is ``multiplier * lr``.

    Group ``i`` gets exactly what torch gives a param group with ``lr = base_lr * m_i`` (and, for
    ``onecycle``, ``max_lr = max_lr * m_i``); ``eta_min`` is absolute and shared, as in torch.
    A multiplier of 0 gives a group a rate of 0 (``eta_min`` still applies to it).
    """
    p = check_schedule(sched, total_steps, base_lr)
    step = _check_step(step, total_steps)
    out = []
    for i, m in enumerate(multipliers):
        m = _real(f"multipliers[{i}]", m, low_open=False)
        q = dict(p)
        if p["name"] == "onecycle":
            q["max_lr"] = (float(base_lr) if p["max_lr"] is None else p["max_lr"]) * m
        out.append(_lr(step, float(base_lr) * m, q, total_steps))
    return out
