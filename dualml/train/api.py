"""Training from Python without config files: ``dualml.fit(model, (x, y), backend="paddle", epochs=5)``.

The config files stay the one source of defaults (configs/trainer/default.yaml); keyword settings are
applied over them with the same validation as command-line overrides, so a typo gets the same
"did you mean" and the run is exactly what ``dualml train`` would do with those keys.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import OmegaConf

from ..config import load_config
from ..errors import ConfigError, did_you_mean
from ..module import Module
from .data import Dataset, from_arrays
from .trainer import Trainer


def fit(model: Module, data: Dataset | tuple[Any, Any], backend: str = "torch", *, seed: int = 0,
        batch_size: int = 64, val_fraction: float = 0.1, test_fraction: float = 0.2,
        run_dir: str | Path | None = None, progress: bool = True,
        loss_fn: Callable[[Any, Any, Any, np.ndarray], Any] | None = None,
        after_step: Callable[[Trainer], None] | None = None, **trainer: Any) -> Trainer:
    """Train ``model`` (any ``dualml.Module``; no ``input_spec`` needed) on ``data`` (``(x, y)`` numpy
    arrays, split stratified by ``seed``, or a ``Dataset``) on ``backend``. ``trainer`` keys are those of
    configs/trainer/default.yaml (``epochs=5``, ``optimizer={"name": "sgd", "lr": 0.1}``, ``dtype="float64"``,
    ...). With ``run_dir`` the run folder is written as by ``dualml train``. Returns the Trainer after
    ``fit()``: ``.net`` is the native model, ``.metrics`` the test metrics, ``.history`` the curves.
    ``loss_fn``/``after_step`` are the Trainer's (a custom loss such as DANN's, a per-step hook), so a method
    built on them (``dualml.train.dann``) gets the same config handling as any other run."""
    cfg = load_config([f"backend={backend}", f"seed={seed}", f"data.batch_size={batch_size}"])
    for key, value in trainer.items():
        if key not in cfg.trainer:
            raise ConfigError(f"fit({key}=...) is not a trainer setting; allowed: {', '.join(cfg.trainer)}"
                              f"{did_you_mean(key, list(cfg.trainer))}")
        OmegaConf.update(cfg, f"trainer.{key}", value, merge=True)
    if run_dir is not None:
        cfg.trainer.run_dir = str(run_dir)
    ds = data if isinstance(data, Dataset) else from_arrays(*data, val_fraction=val_fraction,
                                                           test_fraction=test_fraction, seed=seed)
    t = Trainer(cfg, model=model, dataset=ds, write=run_dir is not None, progress=progress,
                model_name=type(model).__name__, loss_fn=loss_fn, after_step=after_step)
    t.metrics = t.fit()
    return t
