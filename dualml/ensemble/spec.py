"""The ``ensemble`` config group (configs/ensemble/*.yaml), checked before anything trains.

Why a checker of its own: ``ensemble`` is an open section for the config loader (members are a list of
mappings whose keys depend on where a member comes from), so unknown keys, a bad combiner name, weights
off the simplex or a pre-trained member given to boosting are refused here, in one line each, naming
the key, the value and what is allowed.
"""
from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from ..backend import available_backends
from ..errors import ConfigError, check_keys, is_int, not_allowed
from .combine import COMBINERS, check_weights
from .members import MEMBER_KEYS

#: every key of the ensemble group, with its default
ENSEMBLE_KEYS: dict[str, Any] = {"name": "ensemble", "method": "vote", "combiner": "soft", "weights": None,
                                 "eta": 1.0, "rounds": None, "shrinkage": 0.5, "members": [], "export": True}
#: how members are obtained: as listed, on bootstrap resamples, by SAMME boosting, or (regression) by
#: gradient boosting on residuals
METHODS = ("vote", "bagging", "boosting", "gradient")
#: the combiner each boosting method uses (its own), and only it
OWN_COMBINER = {"boosting": "samme", "gradient": "sum"}



def check_ensemble(section: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the ``ensemble`` group and return it with defaults filled in (ConfigError otherwise)."""
    given = dict(section or {})
    check_keys("ensemble", given, ENSEMBLE_KEYS)
    e = {k: given.get(k, v) for k, v in ENSEMBLE_KEYS.items()}
    if e["method"] not in METHODS:
        raise ConfigError(not_allowed("ensemble.method", e["method"], METHODS))
    own = OWN_COMBINER.get(e["method"])
    allowed = (own,) if own else COMBINERS
    if e["combiner"] not in allowed:
        why = f" (method {e['method']} combines its members its own way)" if own else ""
        raise ConfigError(not_allowed("ensemble.combiner", e["combiner"], allowed) + why)
    members = e["members"]
    if not isinstance(members, list) or not members:
        raise ConfigError(f"ensemble.members={members!r} is not allowed; allowed: a list of at least one member, "
                          "e.g. [{model: mlp, backend: torch, seed: 0}, {run: runs/RUN}]")
    for i, m in enumerate(members):
        _check_member(i, m, e["method"])
    rounds = e["rounds"]
    if rounds is not None:
        if e["method"] == "vote":
            raise ConfigError(f"ensemble.rounds={rounds} is not allowed with ensemble.method=vote; allowed: null "
                              "(or method bagging/boosting/gradient, which cycle through the members list)")
        if not is_int(rounds) or rounds < 1:
            raise ConfigError(f"ensemble.rounds={rounds!r} is not allowed; allowed: null or an integer >= 1")
    count = len(members) if rounds is None else int(rounds)
    if e["weights"] is not None:
        if e["combiner"] not in ("hard", "soft"):
            raise ConfigError(f"ensemble.weights is not allowed with ensemble.combiner={e['combiner']} (it fits its "
                              "own); allowed: with combiner hard or soft, or weights=null")
        e["weights"] = [float(v) for v in check_weights(e["weights"], count)]
    eta = e["eta"]
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not eta >= 0:
        raise ConfigError(f"ensemble.eta={eta!r} is not allowed; allowed: a number >= 0")
    rate = e["shrinkage"]
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 < rate <= 1:
        raise ConfigError(f"ensemble.shrinkage={rate!r} is not allowed; allowed: a number > 0 and <= 1")
    if not isinstance(e["export"], bool):
        raise ConfigError(f"ensemble.export={e['export']!r} is not allowed; allowed: true, false")
    return e


def _check_member(i: int, m: Any, method: str) -> None:
    key = f"ensemble.members[{i}]"
    if not isinstance(m, Mapping):
        raise ConfigError(f"{key}={m!r} is not allowed; allowed: a mapping such as {{model: mlp, backend: torch, "
                          "seed: 0}} or {run: runs/RUN}")
    check_keys(key, m, MEMBER_KEYS)
    sources = [k for k in ("model", "run", "checkpoint") if m.get(k) is not None]
    if len(sources) != 1:
        raise ConfigError(f"{key} has {', '.join(sources) or 'none'} of model/run/checkpoint; allowed: exactly one "
                          "(model: train it here; run/checkpoint: use trained weights)")
    if sources[0] != "model" and method != "vote":
        what = {"boosting": "cannot take sample weights", "bagging": "cannot be trained on a bootstrap resample",
                "gradient": "cannot be trained on residuals"}[method]
        raise ConfigError(f"{key}.{sources[0]}={m[sources[0]]} is not allowed with ensemble.method={method}: a "
                          f"pre-trained member {what}; allowed: {{model, backend, seed, trainer}} members trained "
                          "by the ensemble")
    if m.get("backend") is not None and m["backend"] not in available_backends():
        raise ConfigError(not_allowed(f"{key}.backend", m["backend"], available_backends()))
    if m.get("seed") is not None and (not is_int(m["seed"]) or m["seed"] < 0):
        raise ConfigError(f"{key}.seed={m['seed']!r} is not allowed; allowed: an integer >= 0")
    if m.get("trainer") is not None:
        if sources[0] != "model":
            raise ConfigError(f"{key}.trainer is not allowed with {key}.{sources[0]}: that member is already trained")
        if not isinstance(m["trainer"], Mapping):
            raise ConfigError(f"{key}.trainer={m['trainer']!r} is not allowed; allowed: a mapping of trainer "
                              "settings, e.g. {epochs: 5}")
