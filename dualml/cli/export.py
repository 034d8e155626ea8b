"""``dualml export``: export `backend`'s model (from export.checkpoint) to ONNX, verify it in ONNX Runtime.

Exporting, verifying and quantizing are dualml.onnx (export, int8); this file turns a config and the
command line into one export and its report.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import atomic_write_text
from ..cpu import REDUCE_RANGE_CHOICES
from ..errors import ConfigError, DualmlError, VerificationError, not_allowed
from ..module import Module
from ..onnx.export import (
    QUANTIZE,
    checkpoint_model,
    config_hash,
    export_model,
    resolve_checkpoint,
    sample_batch,
)
from ..onnx.int8 import calibration_batches, compare_int8, quantize_onnx
from ..train.data import load_dataset
from ..zoo import create_model
from .log import error, keep_in, result, say, warn

#: the one-line description in ``dualml --help``
HELP = "export `backend`'s model (from export.checkpoint) to ONNX, verify it in ONNX Runtime"
#: config sections (or keys) ``dualml export --help`` lists
KEYS = ('backend', 'seed', 'out_dir', 'model', 'data', 'export')
#: this command's own section: its keys may be given bare (``export.x=1`` as ``x=1``); a bare word is ``export.model``
SECTION = 'export'


def explicit_model(overrides: Sequence[str]) -> bool:
    """Whether the command line named the model (``model=...`` or ``model.key=...``): then it wins over the
    checkpoint's recorded model."""
    return any(o.split("=", 1)[0] == "model" or o.startswith("model.") for o in overrides)


def cmd_export(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml export backend=... checkpoint=... out=...``: export, verify, optionally quantize."""
    e = cfg.export
    if e.quantize not in QUANTIZE:
        raise ConfigError(not_allowed("export.quantize", e.quantize, QUANTIZE))
    if str(e.get("reduce_range", "auto")).lower() not in REDUCE_RANGE_CHOICES:
        raise ConfigError(not_allowed("export.reduce_range", e.reduce_range, REDUCE_RANGE_CHOICES))
    if e.opset is not None and (not isinstance(e.opset, int) or e.opset < 7):
        raise ConfigError(f"export.opset={e.opset} is not allowed; allowed: null or an integer >= 7")
    if int(e.verify_batch) < 2:
        raise ConfigError(f"export.verify_batch={e.verify_batch} is not allowed; allowed: an integer >= 2")
    config = OmegaConf.to_container(cfg, resolve=True)
    if e.checkpoint:
        ckpt = resolve_checkpoint(str(e.checkpoint))
        name, params, weights, meta = checkpoint_model(cfg, ckpt, explicit_model(overrides))
        config = meta.get("config") or config
        source = {"checkpoint": str(ckpt), "checkpoint_sha256": meta.get("sha256"),
                  "trained_on": meta.get("backend"), "step": meta.get("step")}
        if any(np.asarray(v).dtype == np.float64 for v in weights.values()):
            # a float64 (reference-mode) run deploys as a float32 graph: narrowed here on purpose, and said so
            weights = {k: (np.asarray(v, np.float32) if np.asarray(v).dtype == np.float64 else v)
                       for k, v in weights.items()}
            source["weights_narrowed"] = "float64 -> float32"
            warn(f"{ckpt} holds float64 weights (trainer.dtype=float64); exported as float32")
    else:
        name, params = config["model"]["name"], {k: v for k, v in config["model"].items() if k != "name"}
        weights, source = None, {"checkpoint": None, "initial_weights_seed": cfg.seed}
    model = create_model(name, **params)
    out = Path(e.out or Path(cfg.out_dir) / "export" / f"{name}-{cfg.backend}.onnx")
    x, x_source = sample_batch(cfg, model, int(e.verify_batch))
    metadata = {"model": name, "model_config": json.dumps({"name": name, **params}, sort_keys=True),
                "config_sha256": config_hash(config), "checkpoint_sha256": source.get("checkpoint_sha256")}
    final = out
    if e.quantize != "none":
        out = out.with_name(out.stem + ".fp32.onnx")
    try:
        report = export_model(model, cfg.backend, weights, out, x, e.opset, e.exporter, cfg.seed, metadata,
                              float(e.atol), float(e.rtol))
    except VerificationError as exc:
        error(str(exc))
        return 1
    report.update(source=source, sample=x_source)
    v = report["verification"]
    why = f" (dynamo failed: {report['fallback_reason']})" if report.get("fallback_reason") else ""
    result(f"exported {name} [{cfg.backend}] with {report['exporter']}{why}, opset {report['opset']}: {out} "
          f"({report['bytes'] / 1024:.1f} KiB, {sum(report['ops'].values())} nodes)")
    say(f"verified in ONNX Runtime on {x_source}: max abs diff {v['max_abs']:.2e}, max rel {v['max_rel']:.2e} "
          f"(atol {v['atol']}, rtol {v['rtol']}, batch {len(x)} and 1): pass")
    if e.quantize != "none":
        report["int8"] = _quantize(cfg, model, out, final, int(e.calib_batches))
        q = report["int8"]
        say(f"INT8 ({e.quantize}): {final} ({q['int8_bytes'] / 1024:.1f} KiB, {100 * q['size_ratio']:.0f}% of "
              f"fp32); test accuracy fp32 {q.get('fp32_accuracy', float('nan')):.4f} -> int8 "
              f"{q.get('int8_accuracy', float('nan')):.4f}; latency int8/fp32 batch 1 "
              f"{q.get('latency_ratio_b1', float('nan')):.2f}; {q['reduce_range_why']}")
    keep_in(final.parent, final.stem + ".log")
    path = atomic_write_text(final.with_suffix(".report.json"), json.dumps(report, indent=2, default=str))
    result(f"report: {path}")
    return 0


def _quantize(cfg: Any, model: Module, fp32: Path, out: Path, calib_batches: int) -> dict[str, Any]:
    spec = model.input_spec(1)[0]
    try:
        ds = load_dataset(cfg.data, input_shape=tuple(spec.shape[1:]), seed=cfg.seed)
    except DualmlError as exc:
        raise ConfigError(f"export.quantize={cfg.export.quantize} needs data that fits the model "
                          f"(calibration and test accuracy): {exc}") from None
    calib = calibration_batches(ds.train.x, calib_batches, int(cfg.data.batch_size), cfg.seed)
    info = quantize_onnx(fp32, out, cfg.export.quantize, calib if cfg.export.quantize == "static" else None,
                         reduce_range=str(cfg.export.get("reduce_range", "auto")).lower())
    return {**info, **compare_int8(fp32, out, ds.test.x, ds.test.y)}
