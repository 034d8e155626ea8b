"""Ensemble members: a zoo model, its canonical weights and the backend that runs it.

Why canonical weights rather than a native module: a member trained on torch can then run on paddle
(and the reverse) with the same numbers, which is what the parity check holds the ensemble to; the
native module is built on first use. A member comes from a run folder or checkpoint (``{run: RUN}``,
``{checkpoint: RUN/best}``) or is trained here by the neutral Trainer (``{model: cnn, backend: torch,
seed: 0}``) on the ensemble's own split, possibly on a resample of its train split (bagging, boosting).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import get_backend
from ..build import build, get_weights
from ..checkpoint import load_weights, model_weights, save_weights
from ..config import leaves, load_config
from ..errors import ConfigError, DualmlError
from ..module import Module
from ..zoo import create_model

#: what a member entry in ``ensemble.members`` may hold
MEMBER_KEYS = ("model", "backend", "seed", "run", "checkpoint", "trainer")


@dataclass
class Member:
    """One member: zoo model ``model_name(**params)`` with canonical ``weights``, run on ``backend``.
    ``info`` carries what the report records (source, seed, bootstrap seed, accuracies)."""

    model_name: str
    params: dict[str, Any]
    weights: dict[str, np.ndarray]
    backend: str
    info: dict[str, Any] = field(default_factory=dict)
    _model: Module | None = field(default=None, repr=False)
    _net: Any = field(default=None, repr=False)

    @property
    def model(self) -> Module:
        if self._model is None:
            self._model = create_model(self.model_name, **self.params)
        return self._model

    @property
    def label(self) -> str:
        """``cnn[paddle]``: how reports, plots and the ONNX metadata name the member."""
        return f"{self.model_name}[{self.backend}]"

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The per-sample shape the member takes (no batch dimension)."""
        return tuple(int(d) for d in self.model.input_spec(1)[0].shape[1:])

    @property
    def net(self) -> Any:
        if self._net is None:
            self._net = build(self.model, self.backend, weights=self.weights)
        return self._net

    def on(self, backend: str) -> Member:
        """The same member (same weights) run on ``backend``."""
        return Member(self.model_name, self.params, self.weights, backend, {**self.info, "backend": backend})

    def probabilities(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        """Softmax of the member's outputs on ``x`` (reshaped to its sample shape), computed natively
        by its backend in eval mode, batch by batch; float32 like the member."""
        return self._forward(x, batch, softmax=True)

    def outputs(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        """The member's raw outputs on ``x``, flattened per sample to [n, outputs] (regression members)."""
        out = self._forward(x, batch, softmax=False)
        return out.reshape(len(out), -1)

    def _forward(self, x: np.ndarray, batch: int, softmax: bool) -> np.ndarray:
        be = get_backend(self.backend)
        net = self.net
        be.set_train(net, False)
        x = np.ascontiguousarray(x.reshape((len(x), *self.input_shape)))
        out = []
        with be.no_grad():
            for i in range(0, len(x), batch):
                y = net(be.tensor(x[i:i + batch]))
                out.append(be.numpy(be.ops.softmax(y, dim=-1) if softmax else y))
        return np.concatenate(out)

    def num_classes(self) -> int:
        return int(self.probabilities(np.zeros((1, *self.input_shape), np.float32)).shape[1])

    def save(self, path: str | Path) -> Path:
        """Canonical weights + the model config, readable back as ``{checkpoint: path}``."""
        meta = {"kind": "dualml-ensemble-member", "backend": self.backend, "model": self.model_name,
                "config": {"model": {"name": self.model_name, **self.params}},
                "info": {k: v for k, v in self.info.items() if not isinstance(v, np.ndarray)}}
        return save_weights(path, self.weights, meta)


def resolve(spec: str, key: str) -> Path:
    """``RUN`` -> ``RUN/best.safetensors``; ``RUN/best`` -> ``RUN/best.safetensors``; a file as is."""
    p = Path(spec)
    for candidate in (p, p.with_name(p.name + ".safetensors"), p / "best.safetensors", p / "last.safetensors"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{key}={spec} is not allowed; no run folder with best.safetensors or last.safetensors, "
                      f"and no checkpoint file {p} or {p}.safetensors (allowed: a run folder, RUN/best, RUN/last "
                      "or a .safetensors file)")


def from_checkpoint(spec: str, backend: str | None = None, key: str = "checkpoint") -> Member:
    """A member from a training run or checkpoint (``dualml train``'s, or one this module saved). The
    member runs on ``backend`` when given, else on the backend it was trained on. ``key`` names the
    config key in error messages (``ensemble.members[2].run``)."""
    path = resolve(spec, key)
    try:
        arrays, meta = load_weights(path)
    except DualmlError as exc:
        raise ConfigError(f"{key}={spec} is not allowed; {exc}") from None
    model_cfg = dict((meta.get("config") or {}).get("model") or {})
    if "name" not in model_cfg:
        raise ConfigError(f"{key}={spec} is not allowed; {path} names no model config (allowed: a checkpoint "
                          "written by dualml train or by dualml ensemble)")
    weights = model_weights(arrays)
    name = model_cfg.pop("name")
    trained_on = meta.get("backend") or (meta.get("config") or {}).get("backend") or "torch"
    info = {"source": f"{key.rsplit('.', 1)[-1]}: {spec}", "file": str(path), "trained_on": trained_on,
            "seed": (meta.get("config") or {}).get("seed", meta.get("seed"))}
    return Member(name, model_cfg, weights, backend or trained_on, info)


def member_config(overrides: Sequence[str], spec: dict[str, Any], seed: int) -> Any:
    """The training config of one member: the command line's overrides (data, trainer, ...), then the
    member's model, backend, seed and ``trainer`` block, validated like any command line."""
    extra = [f"model={spec['model']}", f"seed={seed}"]
    if spec.get("backend"):
        extra.append(f"backend={spec['backend']}")
    block = leaves(spec.get("trainer") or {}, "trainer")
    extra += [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in block]
    keep = [o for o in overrides if not o.split("=", 1)[0].startswith("ensemble")]
    return load_config([*keep, *extra])


def train_member(cfg: Any, dataset: Any, rows: np.ndarray | None = None, progress: bool = False,
                 info: dict[str, Any] | None = None) -> Member:
    """Train ``cfg.model`` on ``cfg.backend`` with the Trainer (nothing written) on ``dataset``, its
    train split replaced by ``dataset.train[rows]`` when ``rows`` is given (a bootstrap or a weighted
    resample). Returns the member with its final weights."""
    from ..config import model_params
    from ..train.data import Split
    from ..train.data import _reshape as reshape_dataset  # the data module's own reshape of all splits
    from ..train.trainer import Trainer

    name, params = model_params(cfg)
    model = create_model(name, **params)
    ds = reshape_dataset(dataset, tuple(model.input_spec(1)[0].shape[1:]))
    if rows is not None:
        ds = replace(ds, train=Split(ds.train.x[rows], ds.train.y[rows]))
    t = Trainer(cfg, model=model, dataset=ds, write=False, progress=progress, model_name=name)
    metrics = t.fit()
    # the native net is rebuilt from the weights on first use, on the host: the Trainer's may sit on trainer.device
    return Member(name, params, get_weights(t.net), str(cfg.backend),
                  {"source": "trained", "seed": int(cfg.seed), "steps": metrics["steps"], **(info or {})}, model)


def check_compatible(members: Sequence[Member], num_classes: int | None = None) -> tuple[tuple[int, ...], int]:
    """All members must take the same sample (the same number of values: the ONNX graph reshapes the one
    input for each) and give the same number of classes. Returns (input shape, classes) of member 0."""
    if not members:
        raise ConfigError("ensemble.members=[] is not allowed; allowed: a list of at least one member")
    shape0 = members[0].input_shape
    size0 = int(np.prod(shape0))
    k0 = members[0].num_classes()
    for i, m in enumerate(members[1:], start=1):
        shape = m.input_shape
        if int(np.prod(shape)) != size0:
            raise ConfigError(f"ensemble.members[{i}] (model {m.model_name}) takes input {list(shape)} "
                              f"({int(np.prod(shape))} values) but ensemble.members[0] (model {members[0].model_name})"
                              f" takes {list(shape0)} ({size0} values); allowed: members taking the same sample")
        k = m.num_classes()
        if k != k0:
            raise ConfigError(f"ensemble.members[{i}] (model {m.model_name}) outputs {k} classes but "
                              f"ensemble.members[0] (model {members[0].model_name}) outputs {k0}; allowed: members "
                              "with the same classes")
    if num_classes is not None and k0 != num_classes:
        raise ConfigError(f"ensemble members output {k0} classes but the data has {num_classes}; allowed: members "
                          f"trained on this data (model.num_classes={num_classes})")
    return shape0, k0
