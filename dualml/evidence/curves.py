"""Training-curve parity: the same config and seed trained on two backends, judged so that the verdict
means the same on every CPU.

float64 is the authority: there the two backends must train the same to ``FLOAT64_RTOL`` per step
(measured ~1e-13 over 100 steps for mlp, cnn, transformer and a narrow resnet, any optimizer and lr).

In float32 the curves agree for a while and then may part: kernel choice (AVX2 vs AVX512, oneDNN)
changes the last bits, and a max-pool window whose top two values are within rounding, or a ReLU
input within rounding of zero, sends the run down one of two trajectories. How far that can go is
a property of the trajectory, not of the library, so it is measured in the same run: each backend is
trained again from its initial weights nudged by one ulp (``self`` divergence). The cross-backend
curve passes when its first ``EARLY_STEPS`` steps agree within ``EARLY_RTOL`` and it never leaves
``ENVELOPE_MULTIPLE`` times the self-divergence envelope (floored at ``EARLY_RTOL``: anything smaller
is float32 noise). The report names the first step where the backends part by more than
``PART_RTOL`` and, where one is found in the steps just before it, the kink that did it.
"""
from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..kinks import kinks
from ..train.trainer import TrainingDiverged

FLOAT64_RTOL = 1e-9
EARLY_STEPS = 10
EARLY_RTOL = 1e-5
ENVELOPE_MULTIPLE = 10.0
PART_RTOL = 1e-6


def _sgd(lr: float, **kw: Any) -> list[str]:
    extra = [f"trainer.optimizer.{k}={v}" for k, v in kw.items()]
    return ["trainer.optimizer.name=sgd", f"trainer.optimizer.lr={lr}", "trainer.optimizer.momentum=0.9", *extra]


def _adam(name: str, lr: float, wd: float) -> list[str]:
    return [f"trainer.optimizer.name={name}", f"trainer.optimizer.lr={lr}", f"trainer.optimizer.weight_decay={wd}"]


#: the optimizer settings every curve check runs, each at its usual lr and at a high one
OPTIMIZERS: dict[str, list[str]] = {
    "sgd-momentum": _sgd(0.05, weight_decay=1e-4), "sgd-momentum-hi": _sgd(0.1, weight_decay=1e-4),
    "sgd-nesterov": _sgd(0.05, nesterov="true"), "sgd-nesterov-hi": _sgd(0.1, nesterov="true"),
    "adam": _adam("adam", 1e-3, 1e-4), "adam-hi": _adam("adam", 1e-2, 1e-4),
    "adamw": _adam("adamw", 1e-3, 0.01), "adamw-hi": _adam("adamw", 1e-2, 0.01),
}
#: the models, on digits: the transformer reads the 8 image rows as 8 feature tokens; ``resnet`` is
#: ResNet-18's topology at width 8 (0.18M params) on 1x8x8 inputs
MODELS: dict[str, list[str]] = {
    "mlp": ["model=mlp"], "cnn": ["model=cnn"],
    "transformer": ["model=transformer", "model.vocab_size=null"],
    "resnet": ["model=resnet18", "model.width=8", "model.in_channels=1", "model.image_size=8", "model.num_classes=10"],
    # regression (issue #17): the forecaster at width 8, depths 1/1/1/1, on 6 generated sensors over 2 days,
    # masked MAE in mph (its recipe's loss); every block kind, gated fusion and sinusoidal positions
    "forecaster": ["model=forecaster", "data=traffic", "data.nodes=6", "data.days=2", "data.batch_size=32",
                   "model.nodes=6", "model.embed_dim=8", "model.num_heads=2", "model.temporal_depth_1=1",
                   "model.spatial_depth_1=1", "model.temporal_depth_2=1", "model.spatial_depth_2=1"],
}


@dataclass
class CurveResult:
    label: str
    dtype: str
    backends: tuple[str, str]
    losses: dict[str, list[float]] = field(default_factory=dict)
    cross: list[float] = field(default_factory=list)       # |a - b| / |a| per step
    self_div: list[float] = field(default_factory=list)    # max over backends of |x - x_nudged| / |x|
    max_cross: float = 0.0
    max_self: float = 0.0
    ratio: float = 0.0                                     # max_cross / max(max_self, EARLY_RTOL)
    early_max: float = 0.0
    first_part: int | None = None                          # 1-based step where cross > PART_RTOL first
    cause: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)      # runs whose loss became NaN/inf, and where
    criterion: str = ""
    passed: bool = False


def _nudged(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every floating weight moved one ulp towards +inf: a perturbation below any kernel's rounding."""
    return {k: (np.nextafter(v, np.inf).astype(v.dtype) if np.issubdtype(v.dtype, np.floating) else v)
            for k, v in weights.items()}


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(a - b) / np.maximum(np.abs(a), 1e-30)


def _batches(t: Any, steps: int):
    """The Trainer's own batch sequence (epoch order seeded by (seed, epoch)), as fit() draws it."""
    epoch = 0
    while True:
        t.loader.set_epoch(epoch)
        for batch in t.loader:
            if t.step >= steps:
                return
            yield [batch]
        epoch += 1
        t.epoch = epoch


def _trainer(overrides: list[str], backend: str, dtype: str, steps: int,
             weights: dict[str, np.ndarray] | None = None) -> Any:
    from ..config import load_config
    from ..train.trainer import Trainer

    cfg = load_config([f"backend={backend}", f"trainer.max_steps={steps}", f"trainer.dtype={dtype}", *overrides])
    return Trainer(cfg, write=False, progress=False, weights=weights)


def run_curve(label: str, overrides: list[str], backends: tuple[str, str] = ("torch", "paddle"),
              steps: int = 100, dtype: str = "float32") -> CurveResult:
    """Train ``overrides`` on both backends in lockstep (and, in float32, each once more from weights
    nudged by one ulp) and judge the cross-backend curve (see the module docstring)."""
    res = CurveResult(label, dtype, backends)
    ta, tb = (_trainer(overrides, b, dtype, steps) for b in backends)
    from ..build import build, get_weights

    w0 = get_weights(ta.net)  # canonical, so the same start on both backends
    recent: deque = deque(maxlen=3)  # (step, weights of a, batch) before each of the last updates
    la, lb = [], []
    for batches in _batches(ta, steps):
        recent.append((ta.step, get_weights(ta.net), batches[0][0]))
        for name, t, out in ((backends[0], ta, la), (backends[1], tb, lb)):
            try:
                out.append(t.train_step(batches)["loss"])
            except TrainingDiverged:
                res.diverged.append(f"{name} at step {t.step + 1}")
        if res.diverged:  # a NaN loss is not a curve to compare; the report says who and where
            n = min(len(la), len(lb))
            res.losses = {backends[0]: la, backends[1]: lb}
            res.cross = _rel(np.array(la[:n]), np.array(lb[:n])).tolist()
            res.max_cross = max(res.cross, default=0.0)
            res.criterion = f"the loss became NaN/inf: {', '.join(res.diverged)}; lower the lr"
            return res
        if res.first_part is None and abs(la[-1] - lb[-1]) > PART_RTOL * abs(la[-1]):
            res.first_part = len(la)
            for step, w, x in recent:  # the forward passes whose gradients led here
                net = build(ta.model, backends[0], weights=w, dtype=dtype)
                res.cause += [f"step {step + 1}: {k}" for k in kinks(net, [x], train=True)]
    a, b = np.array(la), np.array(lb)
    res.losses = {backends[0]: la, backends[1]: lb}
    cross = _rel(a, b)
    res.cross, res.max_cross = cross.tolist(), float(cross.max())
    res.early_max = float(cross[:EARLY_STEPS].max())
    if dtype == "float64":
        res.criterion = f"every step within {FLOAT64_RTOL:g} relative (float64 is the authority)"
        res.passed = res.max_cross <= FLOAT64_RTOL
        return res
    selfs = []
    for bk in backends:
        tn = _trainer(overrides, bk, dtype, steps, weights=_nudged(w0))
        try:
            tn.fit()
        except TrainingDiverged:
            res.diverged.append(f"{bk}+1ulp at step {tn.step + 1}")
            res.criterion = f"the loss became NaN/inf: {', '.join(res.diverged)}; lower the lr"
            return res
        nudged = np.array([r["loss"] for r in tn.history.steps])
        res.losses[f"{bk}+1ulp"] = nudged.tolist()
        selfs.append(_rel(a if bk == backends[0] else b, nudged))
    self_div = np.maximum(*selfs)
    res.self_div, res.max_self = self_div.tolist(), float(self_div.max())
    envelope = max(res.max_self, EARLY_RTOL)
    res.ratio = res.max_cross / envelope
    # the early bar moves only where the run itself is that sensitive from the start (Adam at a high lr:
    # gradients below eps turn rounding into steps), measured the same way
    early_bar = max(EARLY_RTOL, ENVELOPE_MULTIPLE * float(self_div[:EARLY_STEPS].max()))
    res.criterion = (f"first {EARLY_STEPS} steps within max({EARLY_RTOL:g}, {ENVELOPE_MULTIPLE:g}x their self-"
                     f"divergence) = {early_bar:.2e}; every step within {ENVELOPE_MULTIPLE:g}x the one-ulp "
                     f"self-divergence envelope max({res.max_self:.2e}, {EARLY_RTOL:g})")
    res.passed = res.early_max <= early_bar and res.max_cross <= ENVELOPE_MULTIPLE * envelope
    return res


def as_dict(res: CurveResult) -> dict[str, Any]:
    return asdict(res)


def plot(results: list[dict[str, Any]]) -> bytes:
    """One panel per float32 case: the cross-backend and the one-ulp self divergence per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import png_bytes

    fp32 = [r for r in results if r["dtype"] == "float32"]
    cols = max(1, min(4, len(fp32)))
    rows = max(1, -(-len(fp32) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(max(4 * cols, 8), 2.6 * rows + 0.4), squeeze=False)
    for ax, r in zip(axes.flat, fp32):
        ax.semilogy([max(v, 1e-12) for v in r["cross"]], lw=0.9, label=" vs ".join(r["backends"]))
        ax.semilogy([max(v, 1e-12) for v in r["self_div"]], lw=0.9, label="one-ulp self")
        ax.set_title(f"{r['label']} ({'pass' if r['passed'] else 'FAIL'})", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(fp32):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle("float32 loss-curve divergence per step (relative): across backends vs the run's own "
                 "one-ulp sensitivity", fontsize=9)
    fig.tight_layout()
    return png_bytes(fig, dpi=90)


def markdown(report: dict[str, Any]) -> str:
    """A row per case: float64 figure, float32 cross/self/ratio, where they part and why."""
    cpu = report["cpu"]
    pair = " vs ".join(report["results"][0]["backends"]) if report["results"] else ""
    lines = [f"# Training-curve parity ({report['steps']} steps, {pair}) on {cpu['cpu_flags']} "
             f"(kernel limits: {cpu['kernel_limits']})", "",
             "| model | optimizer | float64 max rel | float32 cross max | self (1 ulp) max | ratio | parts >1e-6 at | "
             "cause found | float64 | float32 |", "|---|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for r in report["results"]:
        by.setdefault(r["label"], {})[r["dtype"]] = r
    verdict = lambda r: "-" if r is None else ("pass" if r["passed"] else "FAIL")  # noqa: E731
    for label, d in by.items():
        f64, f32 = d.get("float64"), d.get("float32")
        model, opt = label.split("/", 1)
        row = [model, opt, f"{f64['max_cross']:.1e}" if f64 else "-"]
        row += ([f"{f32['max_cross']:.1e}", f"{f32['max_self']:.1e}", f"{f32['ratio']:.2f}",
                 str(f32["first_part"] or "-"), "; ".join(f32["diverged"] + f32["cause"][:1]) or "-"]
                if f32 else ["-"] * 5)
        lines.append("| " + " | ".join([*row, verdict(f64), verdict(f32)]) + " |")
    return "\n".join(lines) + "\n"
