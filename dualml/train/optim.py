"""Optimizers defined once: one meaning of momentum, Nesterov, Adam's epsilon and weight decay,
realised with each framework's own optimizer class (torch.optim / paddle.optimizer).

Conventions (torch's, which paddle's classes match once configured as below):
- ``sgd``: v = momentum*v + g (+ weight_decay*p added to g first: coupled L2); Nesterov uses
  g + momentum*v. Paddle: ``SGD`` without momentum, ``Momentum(use_nesterov=...)`` with it.
- ``adam``: coupled L2 weight decay (added to the gradient), eps added to sqrt(v_hat).
- ``adamw``: decoupled decay p -= lr*weight_decay*p before the Adam step (paddle's ``coeff``).
- parameter groups carry a learning-rate *multiplier* of the scheduled base rate (paddle's group
  ``learning_rate`` is one natively; torch gets base*multiplier each step).

Optimizer state is stored canonically: slot arrays in the canonical weight layout (a paddle
Linear's Adam moments are transposed like its weight) plus the global step, so a run can resume
on the other backend with its momentum intact.
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..backend import float32_held
from ..errors import ConfigError, check_keys, not_allowed

OPTIMIZERS = ("sgd", "adam", "adamw")
_KEYS = {"name", "lr", "momentum", "nesterov", "betas", "eps", "weight_decay"}


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.0

    @property
    def slots(self) -> tuple[str, ...]:
        """Per-parameter state the optimizer keeps, by neutral slot name."""
        if self.name == "sgd":
            return ("momentum_buffer",) if self.momentum else ()
        return ("exp_avg", "exp_avg_sq")


def parse_optim(cfg: Mapping[str, Any]) -> OptimSpec:
    """``trainer.optimizer`` (a name or a mapping) -> OptimSpec, validated with one-line errors."""
    cfg = {"name": cfg} if isinstance(cfg, str) else dict(cfg)
    check_keys("trainer.optimizer", cfg, sorted(_KEYS))
    name = cfg.get("name", "adam")
    if name not in OPTIMIZERS:
        raise ConfigError(not_allowed("trainer.optimizer.name", name, OPTIMIZERS))
    # paddle's Momentum holds its coefficient and its fused L2 decay, and AdamW its decay coefficient, in
    # float32 (measured in float64 against torch: Nesterov curves 9.7e-9 apart, AdamW 5.9e-11, the
    # forecaster's sgd-momentum curve with decay 1e-4 6.7e-9 against 1.8e-15 at a decay exact in float32;
    # betas, eps, lr and SGD's/Adam's unfused decay are used unrounded): both backends get the rounded
    # values, which changes nothing in float32
    momentum, wd = float(cfg.get("momentum", 0.0)), float(cfg.get("weight_decay", 0.0))
    fused_decay = name == "adamw" or (name == "sgd" and momentum != 0)
    spec = OptimSpec(name=name, lr=float(cfg.get("lr", 1e-3)), momentum=float32_held(momentum),
                     nesterov=bool(cfg.get("nesterov", False)),
                     betas=tuple(float(b) for b in cfg.get("betas", (0.9, 0.999))),
                     eps=float(cfg.get("eps", 1e-8)), weight_decay=float32_held(wd) if fused_decay else wd)
    if spec.lr <= 0:
        raise ConfigError(f"trainer.optimizer.lr={spec.lr} is not allowed; allowed: > 0")
    if not 0 <= spec.momentum < 1:
        raise ConfigError(f"trainer.optimizer.momentum={spec.momentum} is not allowed; allowed: 0 <= momentum < 1")
    if spec.nesterov and (name != "sgd" or spec.momentum == 0):
        raise ConfigError("trainer.optimizer.nesterov=true is not allowed here; it needs name=sgd and momentum > 0")
    if len(spec.betas) != 2 or not all(0 <= b < 1 for b in spec.betas):
        raise ConfigError(f"trainer.optimizer.betas={list(spec.betas)} is not allowed; allowed: two values in [0, 1)")
    if spec.weight_decay < 0 or spec.eps <= 0:
        raise ConfigError("trainer.optimizer.weight_decay must be >= 0 and eps > 0")
    return spec


@dataclass
class ParamGroup:
    """Native parameter names (as in named_parameters) sharing one learning-rate multiplier."""

    native_names: list[str] = field(default_factory=list)
    lr_mult: float = 1.0
    label: str = "default"


def make_groups(index: Mapping[str, tuple[str, ...]], groups_cfg: list[Mapping[str, Any]] | None,
                freeze: list[str] | None, include_frozen: bool = False) -> tuple[list[ParamGroup], list[str]]:
    """Assign native parameters to groups by canonical-name glob patterns (first match wins) and
    list the frozen ones. ``index`` maps native parameter name -> canonical names it holds.

    ``include_frozen``: frozen parameters are also placed in their group (``trainer.unfreeze``): the
    optimizer is built over every parameter once, frozen ones get no gradient and so no update and no
    slot until they are made trainable, and then they train at their group's rate."""
    freeze = list(freeze or [])
    groups_cfg = list(groups_cfg or [])
    canon = [c for names in index.values() for c in names]
    for pattern in freeze + [g.get("params", "") for g in groups_cfg]:
        if not any(fnmatch.fnmatch(c, pattern) for c in canon):
            raise ConfigError(f"pattern '{pattern}' (trainer.freeze / trainer.param_groups) matches no parameter; "
                              f"parameters look like: {', '.join(canon[:6])}, ...")
    groups = [ParamGroup([], float(g.get("lr_mult", 1.0)), str(g.get("params"))) for g in groups_cfg]
    groups.append(ParamGroup([], 1.0, "default"))
    frozen: list[str] = []
    for native_name, names in index.items():
        if any(fnmatch.fnmatch(c, p) for c in names for p in freeze):
            frozen.append(native_name)
            if not include_frozen:
                continue
        hits = {i for i, g in enumerate(groups_cfg) for c in names if fnmatch.fnmatch(c, g.get("params", ""))}
        if len(hits) > 1:
            raise ConfigError(f"parameter {native_name} (canonical {', '.join(names)}) falls in several "
                              "trainer.param_groups; make the patterns disjoint")
        groups[min(hits) if hits else -1].native_names.append(native_name)
    return [g for g in groups if g.native_names], frozen
