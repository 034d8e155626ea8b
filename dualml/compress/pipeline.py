"""``dualml compress``: a pipeline of passes from ``configs/compress/<name>.yaml``, run on one backend,
measured after every pass, reported as a table, JSON and a PNG.

The whole pipeline is validated before any training time is spent: pass names, their keys and
values, layer names against the model, pass/backend support and the order (nothing may change the
weights after quantization). Between passes the model is neutral (a Module and canonical weights,
plus sparsity masks); quantization turns it into a native quantized model, after which only
``export`` may follow. Every stage is exported to ONNX and measured the same way: parameters,
non-zero parameters, FLOPs, ONNX file size (and gzip size, which shows unstructured sparsity),
test accuracy natively and in ONNX Runtime, and ORT latency timed side by side for all stages.
"""
from __future__ import annotations

import copy
import gzip
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, check_keys, did_you_mean, not_allowed
from ..module import Module, named_leaves

#: pass -> its keys with defaults (None: required or optional as the pass says)
PASSES: dict[str, dict[str, Any]] = {
    "prune": {"method": "l1", "ratio": 0.5, "layers": None, "selection": "backend"},
    "sparsity": {"ratio": 0.5, "layers": None, "scope": "layer", "gradual_epochs": 0},
    "nm": {"n": 2, "m": 4, "layers": None},
    "lowrank": {"rank": None, "energy": None, "layers": None},
    "fold_bn": {},
    "finetune": {"epochs": 3, "lr": None, "batch_size": None},
    "distill": {"student": None, "teacher_backend": None, "temperature": 4.0, "alpha": 0.7, "epochs": 10,
                "lr": None, "batch_size": None},
    "quantize": {"mode": "static", "epochs": 1, "lr": None, "calib_batches": 8},
    "export": {},
}
QUANT_MODES = ("dynamic", "static", "qat")
PRUNE_SELECTION = ("backend", "numpy")


@dataclass
class Step:
    name: str
    params: dict[str, Any]
    index: int

    @property
    def label(self) -> str:
        shown = {k: v for k, v in self.params.items() if v is not None and k != "student"}
        if self.name == "quantize":  # only what the mode reads
            unused = {"qat": ("calib_batches",), "static": ("epochs", "lr")}.get(shown.get("mode"),
                                                                                ("calib_batches", "epochs", "lr"))
            shown = {k: v for k, v in shown.items() if k not in unused}
        if self.params.get("student"):
            shown["student"] = dict(self.params["student"]).get("name")
        args = ", ".join(f"{k}={v}" for k, v in shown.items())
        return f"{self.index + 1}:{self.name}" + (f"({args})" if shown else "")


@dataclass
class State:
    """What flows between passes: the neutral model and canonical weights (with masks to keep
    re-applied while training), or, after quantization, the native quantized model."""

    model: Module
    weights: dict[str, np.ndarray]
    masks: dict[str, np.ndarray] = field(default_factory=dict)
    qnet: Any = None
    quant_mode: str | None = None


# ----------------------------------------------------------------------------- validation
#: the keys of a compress file (configs/compress/*.yaml); what each pass takes is checked per step
SPEC_KEYS = ("name", "checkpoint", "latency_repeats", "steps")


def parse_steps(spec: Any, model: Module, backend: str) -> list[Step]:
    """Validate the ``compress`` config against the model and backend; one clear error, up front."""
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(spec, resolve=True) if not isinstance(spec, (dict, list)) else spec
    if isinstance(raw, dict):
        check_keys("compress", raw, SPEC_KEYS, " (pass settings go in compress.steps.N)")
        repeats = raw.get("latency_repeats", 1)
        if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
            raise ConfigError(f"compress.latency_repeats={repeats!r} is not allowed; allowed: an integer >= 1 "
                              "(interleaved ONNX Runtime repeats per stage)")
    steps_raw = raw.get("steps") if isinstance(raw, dict) else None
    if not isinstance(steps_raw, list) or not steps_raw:
        raise ConfigError("compress.steps must be a non-empty list of {pass: NAME, ...} entries; allowed passes: "
                          + ", ".join(PASSES))
    leaves = dict(named_leaves(model))
    steps: list[Step] = []
    quantized_at = None
    for i, item in enumerate(steps_raw):
        where = f"compress.steps.{i}"
        if not isinstance(item, dict) or "pass" not in item:
            raise ConfigError(f"{where} must be a mapping with a 'pass' key; allowed passes: {', '.join(PASSES)}")
        name = item["pass"]
        if name not in PASSES:
            raise ConfigError(f"{where}: {not_allowed('pass', name, PASSES)}")
        params = dict(PASSES[name])
        for k, v in item.items():
            if k == "pass":
                continue
            if k not in params:
                allowed = ", ".join(PASSES[name]) or "no keys"
                raise ConfigError(f"{where}: unknown key '{k}' for pass {name}{did_you_mean(k, PASSES[name])}; "
                                  f"allowed: {allowed}")
            params[k] = v
        _check_step(where, name, params, leaves, backend)
        if quantized_at is not None and name != "export":
            raise ConfigError(f"{where}: pass {name} after quantize ({quantized_at}) is not allowed: a quantized "
                              "model's weights are fixed; put pruning, factorization and fine-tuning before "
                              "quantize (only export may follow it)")
        if name == "quantize":
            quantized_at = where
        steps.append(Step(name, params, i))
    return steps


def _ratio(where: str, key: str, v: Any) -> None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < float(v) < 1.0:
        raise ConfigError(f"{where}.{key}={v!r} is not allowed; allowed: a number in (0, 1)")


def _epochs(where: str, key: str, v: Any, low: int = 1) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < low:
        raise ConfigError(f"{where}.{key}={v!r} is not allowed; allowed: an integer >= {low}")


def _layers(where: str, v: Any, leaves: dict[str, Any], kinds: tuple[str, ...]) -> None:
    if v is None:
        return
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}.layers={v!r} is not allowed; allowed: null or a list of layer names")
    allowed = [p for p, leaf in leaves.items() if leaf.kind in kinds]
    for name in v:
        if name not in allowed:
            what = f"is a {leaves[name].kind}" if name in leaves else "does not exist"
            raise ConfigError(f"{where}.layers: layer '{name}' {what}{did_you_mean(name, allowed)}; allowed "
                              f"({'/'.join(kinds)} layers): {', '.join(allowed) or 'none'}")


def _check_step(where: str, name: str, p: dict[str, Any], leaves: dict[str, Any], backend: str) -> None:
    from .prune import METHODS

    if name == "prune":
        if p["method"] not in METHODS:
            raise ConfigError(f"{where}: {not_allowed('method', p['method'], METHODS)}")
        _ratio(where, "ratio", p["ratio"])
        _layers(where, p["layers"], leaves, ("Conv2d",))
        if p["selection"] not in PRUNE_SELECTION:
            raise ConfigError(f"{where}: {not_allowed('selection', p['selection'], PRUNE_SELECTION)}")
        if p["selection"] == "backend":
            from ..backend import get_backend

            problem = get_backend(backend).filter_selection_support()
            if problem:
                raise ConfigError(f"{where}: prune selection=backend is not supported on backend={backend}: {problem}; "
                                  "allowed: selection=numpy (dualml's own l1 | l2 | fpgm on canonical weights)")
    elif name == "sparsity":
        _ratio(where, "ratio", p["ratio"])
        _layers(where, p["layers"], leaves, ("Conv2d", "Linear", "Conv1d"))
        _epochs(where, "gradual_epochs", p["gradual_epochs"], 0)
        if p["scope"] not in ("layer", "global"):
            raise ConfigError(f"{where}: {not_allowed('scope', p['scope'], ('layer', 'global'))}")
    elif name == "nm":
        for k in ("n", "m"):
            _epochs(where, k, p[k])
        if p["n"] >= p["m"]:
            raise ConfigError(f"{where}: n={p['n']} must be smaller than m={p['m']} (e.g. 2:4)")
        _layers(where, p["layers"], leaves, ("Conv2d", "Linear", "Conv1d"))
    elif name == "lowrank":
        from .factorize import choose_rank

        choose_rank(np.ones(2), p["rank"], p["energy"])  # validates rank xor energy
        _layers(where, p["layers"], leaves, ("Linear",))
    elif name in ("finetune", "distill", "quantize"):
        _epochs(where, "epochs", p["epochs"], 0 if name == "quantize" else 1)
        if p.get("lr") is not None and (isinstance(p["lr"], bool) or not isinstance(p["lr"], (int, float))
                                        or p["lr"] <= 0):
            raise ConfigError(f"{where}.lr={p['lr']!r} is not allowed; allowed: null (the trainer's) or a number > 0")
        if p.get("batch_size") is not None:
            _epochs(where, "batch_size", p["batch_size"])
    if name == "distill":
        from ..backend import available_backends
        from .distill import kd_loss

        kd_loss(lambda x: x, p["temperature"], p["alpha"])  # validates temperature and alpha
        if not isinstance(p["student"], dict) or "name" not in p["student"]:
            raise ConfigError(f"{where}.student must be a model config with a name, e.g. "
                              "{name: cnn, channels: [4, 8]}")
        if p["teacher_backend"] is not None and p["teacher_backend"] not in available_backends():
            raise ConfigError(f"{where}: {not_allowed('teacher_backend', p['teacher_backend'], available_backends())}")
    if name == "quantize":
        if p["mode"] not in QUANT_MODES:
            raise ConfigError(f"{where}: {not_allowed('mode', p['mode'], QUANT_MODES)}")
        _epochs(where, "calib_batches", p["calib_batches"])
        from ..backend import get_backend

        problem = get_backend(backend).quantization_support(p["mode"])
        if problem:
            raise ConfigError(f"{where}: quantize mode={p['mode']} is not supported on backend={backend}: {problem}")


# ----------------------------------------------------------------------------- running
@dataclass
class Context:
    cfg: Any
    backend: str
    dataset: Any
    out: Path
    teacher: Any = None


def _trainer_cfg(cfg: Any, epochs: int, lr: float | None, model_cfg: dict | None = None,
                 batch_size: int | None = None) -> Any:
    from omegaconf import OmegaConf

    c = copy.deepcopy(cfg)
    if batch_size is not None:
        OmegaConf.update(c, "data.batch_size", int(batch_size), merge=False)
    OmegaConf.update(c, "trainer.epochs", int(epochs), merge=False)
    OmegaConf.update(c, "trainer.max_steps", None, merge=False)
    # fine-tuning inside the pipeline stays on the host: its passes (torch.ao / PaddleSlim quantization,
    # masks, a native teacher) are CPU code that was never run against a model on a GPU
    OmegaConf.update(c, "trainer.device", "cpu", merge=False)
    if lr is not None:
        OmegaConf.update(c, "trainer.optimizer.lr", float(lr), merge=False)
    if model_cfg is not None:
        OmegaConf.update(c, "model", model_cfg, merge=False)
    return c


def _train(ctx: Context, state: State, epochs: int, lr: float | None, model: Module | None = None,
           weights: dict | None = None, loss_fn: Any = None, model_cfg: dict | None = None,
           gradual: dict | None = None, batch_size: int | None = None) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Fine-tune with the normal Trainer (no run folder), keeping ``state.masks`` applied after every
    update; ``gradual`` grows magnitude masks along Zhu & Gupta's schedule while training."""
    from ..build import get_weights, set_weights
    from ..train.trainer import Trainer
    from .prune import apply_masks, gradual_ratio, magnitude_masks

    def after(tr: Trainer) -> None:
        if gradual is not None:
            r = gradual_ratio(tr.step, gradual["steps"], gradual["ratio"])
            if r > 0:
                current = get_weights(tr.net)
                state.masks.update(magnitude_masks({k: current[k] for k in gradual["names"]}, r,
                                                   scope=gradual["scope"]))
        if state.masks:
            set_weights(tr.net, apply_masks({k: v for k, v in get_weights(tr.net).items() if k in state.masks},
                                            state.masks), strict=False)

    trainer = Trainer(_trainer_cfg(ctx.cfg, epochs, lr, model_cfg, batch_size), model=model or state.model,
                      dataset=ctx.dataset, write=False, progress=True, weights=weights or state.weights,
                      loss_fn=loss_fn, after_step=after if (state.masks or gradual) else None)
    if gradual is not None:
        gradual["steps"] = trainer.total_steps
    metrics = trainer.fit()
    return get_weights(trainer.net), {"epochs": epochs, "steps": metrics["steps"],
                                      "trainer_test_acc": metrics["test_acc"]}


def _apply(step: Step, state: State, ctx: Context) -> tuple[State, dict[str, Any]]:
    p = step.params
    be = ctx.backend
    if step.name == "prune":
        from .prune import prune_channels

        res = prune_channels(state.model, state.weights, p["ratio"], p["method"], p["layers"],
                             backend=be if p["selection"] == "backend" else None, trace_backend=be)
        if state.masks:
            raise ConfigError(f"compress.steps.{step.index}: structured pruning after sparsity masks is not "
                              "supported; prune channels first")
        return State(res.model, res.weights), res.summary()
    if step.name == "sparsity":
        from .prune import apply_masks, magnitude_masks, prunable_weights

        names = prunable_weights(state.weights, state.model) if p["layers"] is None else None
        if p["gradual_epochs"]:
            names = names or list(magnitude_masks(state.weights, p["ratio"], p["layers"], model=state.model))
            gradual = {"ratio": float(p["ratio"]), "names": names, "scope": p["scope"]}
            w, info = _train(ctx, state, p["gradual_epochs"], None, gradual=gradual)
            state = State(state.model, w, dict(state.masks))
            return state, {"schedule": "gradual (Zhu & Gupta cubic)", **info}
        masks = magnitude_masks(state.weights, p["ratio"], p["layers"], model=state.model, scope=p["scope"])
        return State(state.model, apply_masks(state.weights, masks), {**state.masks, **masks}), {
            "schedule": "one-shot", "masked": sorted(masks)}
    if step.name == "nm":
        from .prune import apply_masks, nm_masks

        masks = nm_masks(state.weights, p["n"], p["m"], p["layers"], model=state.model)
        return State(state.model, apply_masks(state.weights, masks), {**state.masks, **masks}), {
            "pattern": f"{p['n']}:{p['m']}", "masked": sorted(masks)}
    if step.name in ("lowrank", "fold_bn"):
        from .factorize import fold_bn, lowrank

        if state.masks:
            raise ConfigError(f"compress.steps.{step.index}: {step.name} after sparsity masks is not supported "
                              "(it would densify the masked weights)")
        res = (lowrank(state.model, state.weights, p["rank"], p["energy"], p["layers"]) if step.name == "lowrank"
               else fold_bn(state.model, state.weights, backend=ctx.backend))
        return State(res.model, res.weights), {"changed": res.changed, "skipped": res.skipped}
    if step.name == "finetune":
        w, info = _train(ctx, state, p["epochs"], p["lr"], batch_size=p["batch_size"])
        return State(state.model, w, state.masks), info
    if step.name == "distill":
        return _distill(step, state, ctx)
    if step.name == "quantize":
        return _quantize(step, state, ctx)
    return state, {}  # export: every stage is exported anyway; this marks the pipeline's deliverable


def _distill(step: Step, state: State, ctx: Context) -> tuple[State, dict[str, Any]]:
    from ..zoo import create_model
    from .distill import kd_loss, native_teacher

    p = step.params
    teacher_backend = p["teacher_backend"] or ctx.backend
    teacher = native_teacher(state.model, state.weights, teacher_backend)
    student_cfg = dict(p["student"])
    name = student_cfg.pop("name")
    student = create_model(name, **student_cfg)
    w, info = _train(ctx, State(student, {}), p["epochs"], p["lr"], model=student,
                     weights=_seeded(student, ctx.cfg.seed), loss_fn=kd_loss(teacher, p["temperature"], p["alpha"]),
                     model_cfg={"name": name, **student_cfg}, batch_size=p["batch_size"])
    return State(student, w), {"teacher_backend": teacher_backend, "student": p["student"], **info}


def _seeded(model: Module, seed: int) -> dict[str, np.ndarray]:
    from ..module import init_weights

    return init_weights(model, seed)


def _quantize(step: Step, state: State, ctx: Context) -> tuple[State, dict[str, Any]]:
    from ..build import build
    from ..onnx.int8 import calibration_batches
    from . import quantization as Q

    p = step.params
    net = build(state.model, ctx.backend, weights=state.weights)
    if p["mode"] == "qat":
        qnet = Q.qat_train(net, ctx.backend, ctx.dataset, epochs=max(1, p["epochs"]),
                           lr=p["lr"] or float(ctx.cfg.trainer.optimizer.lr) * 0.1,
                           batch_size=int(ctx.cfg.data.batch_size), seed=int(ctx.cfg.seed))
    else:
        calib = calibration_batches(ctx.dataset.train.x, p["calib_batches"], int(ctx.cfg.data.batch_size),
                                    int(ctx.cfg.seed)) if p["mode"] == "static" else None
        qnet = Q.quantize(net, ctx.backend, p["mode"], calib)
    return State(state.model, state.weights, state.masks, qnet, p["mode"]), {"mode": p["mode"]}


# ----------------------------------------------------------------------------- measuring
def _measure(state: State, ctx: Context, path: Path) -> dict[str, Any]:
    """Export the stage to ONNX (QDQ when quantized) and measure what the report shows."""
    from ..build import build
    from ..module import manifest
    from ..onnx import ort
    from ..onnx.export import eager, export_model
    from ..onnx.int8 import initializer_bytes, onnx_logits
    from .measure import count_params, flops, nonzero_params

    test = ctx.dataset.test
    sample = np.ascontiguousarray(test.x[:8])
    if state.qnet is None:
        net = build(state.model, ctx.backend, weights=state.weights)
        native = eager(net, ctx.backend, test.x)
        export_model(state.model, ctx.backend, state.weights, path, sample, metadata={"stage": path.stem})
    else:
        from ..backend import get_backend
        from . import quantization as Q

        native = Q.native_logits(state.qnet, ctx.backend, test.x)
        get_backend(ctx.backend).export_quantized_onnx(state.qnet, sample, str(path))
    ran = onnx_logits(ort.session(path), test.x)
    ops = ort.op_histogram(path)
    f = flops(state.model, (1, *test.x.shape[1:]), ctx.backend)
    data = path.read_bytes()
    trainable = [k for k, v in manifest(state.model).items() if v.trainable]
    return {"params": count_params(state.model), "nonzero_params": nonzero_params(state.weights, trainable),
            "macs": f["macs"], "flops": f["flops"], "onnx_bytes": len(data),
            "onnx_gzip_bytes": len(gzip.compress(data)), "weight_bytes": initializer_bytes(path),
            "native_test_acc": float((native.argmax(1) == test.y).mean()),
            "ort_test_acc": float((ran.argmax(1) == test.y).mean()),
            # how closely the file computes what the native model computes (int8 arithmetic differs by rounding)
            "ort_vs_native_max_abs": float(np.abs(ran - native).max()),
            "ort_vs_native_disagree": int((ran.argmax(1) != native.argmax(1)).sum()),
            "native_max_abs_output": float(np.abs(native).max()),
            "quantized": state.quant_mode,
            "int8_ops": sum(v for k, v in ops.items() if "quant" in k.lower() or "QLinear" in k
                            or k in ("MatMulInteger", "ConvInteger")),
            "onnx": str(path)}


def _latencies(rows: list[dict[str, Any]], x: np.ndarray, repeats: int) -> None:
    """ORT latency of every stage's file at batch 1 and 64, all timed interleaved in one loop."""
    from ..onnx import ort
    from ..timing import interleaved

    for batch in (1, 64):
        xb = np.ascontiguousarray(np.resize(x, (batch, *x.shape[1:])).astype(x.dtype))
        sess = {r["stage"]: ort.session(r["onnx"]) for r in rows}
        t = interleaved({k: (lambda s=s: ort.run(s, xb)) for k, s in sess.items()}, repeats=repeats, warmup=3,
                        min_seconds=0.01)
        for r in rows:
            r[f"latency_ms_b{batch}"] = t[r["stage"]]["median_ms"]


def run_pipeline(cfg: Any, out: Path) -> dict[str, Any]:
    """Baseline (a checkpoint, or trained now), then each step; every stage measured; report dict."""
    from omegaconf import OmegaConf

    from ..config import model_params
    from ..quiet import progress_bar
    from ..train.data import load_dataset
    from ..zoo import create_model

    name, params = model_params(cfg)
    model = create_model(name, **params)
    backend = cfg.backend
    spec = cfg.compress
    steps = parse_steps(spec, model, backend)
    ds = load_dataset(OmegaConf.to_container(cfg.data, resolve=True),
                      input_shape=tuple(model.input_spec(1)[0].shape[1:]), seed=cfg.seed)
    ctx = Context(cfg, backend, ds, out)
    baseline_info: dict[str, Any]
    if spec.checkpoint:
        from ..onnx.export import checkpoint_model, resolve_checkpoint

        ckpt = resolve_checkpoint(str(spec.checkpoint))
        name, params, weights, meta = checkpoint_model(cfg, ckpt, explicit_model=False)
        model = create_model(name, **params)
        baseline_info = {"checkpoint": str(ckpt), "trained_on": meta.get("backend")}
    else:
        weights, info = _train(ctx, State(model, _seeded(model, cfg.seed)), int(cfg.trainer.epochs), None)
        baseline_info = {"trained": info}
    state = State(model, weights)
    rows = []
    stages = [("0:baseline", None)] + [(s.label, s) for s in steps]
    for i, (label, step) in enumerate(progress_bar(stages, desc=f"compress [{backend}]", unit="pass")):
        info = baseline_info
        if step is not None:
            state, info = _apply(step, state, ctx)
        row = {"stage": label, "pass": step.name if step else "baseline", "info": info}
        row.update(_measure(state, ctx, out / f"stage{i}-{step.name if step else 'baseline'}.onnx"))
        rows.append(row)
    _latencies(rows, ds.test.x[:64], int(spec.latency_repeats))
    base = rows[0]
    for r in rows:
        r["acc_drop_points"] = 100.0 * (base["ort_test_acc"] - r["ort_test_acc"])
        r["flops_cut"] = 1.0 - r["flops"] / base["flops"]
        r["size_ratio"] = r["onnx_bytes"] / base["onnx_bytes"]
        r["weight_bytes_ratio"] = r["weight_bytes"] / base["weight_bytes"]
        r["params_ratio"] = r["params"] / base["params"]
    return {"pipeline": str(spec.name), "backend": backend, "model": name, "model_config": params,
            "data": OmegaConf.to_container(cfg.data, resolve=True), "stages": rows}


def table(report: dict[str, Any]) -> str:
    head = ("| stage | params | nonzero | MFLOPs | ONNX KiB | weights KiB | gzip KiB | acc native | acc ORT | "
            "drop pts | ORT ms b1 | b64 |")
    lines = [f"## {report['pipeline']}: {report['model']} on {report['backend']}", "", head,
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["stages"]:
        lines.append(f"| {r['stage']} | {r['params']} | {r['nonzero_params']} | {r['flops'] / 1e6:.3f} | "
                     f"{r['onnx_bytes'] / 1024:.1f} | {r['weight_bytes'] / 1024:.1f} | "
                     f"{r['onnx_gzip_bytes'] / 1024:.1f} | {r['native_test_acc']:.4f} | "
                     f"{r['ort_test_acc']:.4f} | {r['acc_drop_points']:+.2f} | {r['latency_ms_b1']:.3f} | "
                     f"{r['latency_ms_b64']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> None:
    """Accuracy against file size and against latency, one point per stage."""
    import matplotlib

    from ..checkpoint import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import atomic_write_bytes

    rows = report["stages"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "onnx_bytes", "ONNX file KiB"),
                           (axes[1], "latency_ms_b1", "ORT latency ms (b1)")):
        xs = [r[key] / (1024 if key == "onnx_bytes" else 1) for r in rows]
        ys = [100 * r["ort_test_acc"] for r in rows]
        ax.plot(xs, ys, "o-", color="tab:blue")
        for x, y, r in zip(xs, ys, rows):
            ax.annotate(r["stage"].split("(")[0], (x, y), fontsize=8, xytext=(4, 4), textcoords="offset points")
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy % (ONNX Runtime)")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{report['pipeline']}: {report['model']} on {report['backend']}")
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))
