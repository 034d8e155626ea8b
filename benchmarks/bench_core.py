"""Does dualml cost anything at run time? dualml-built models vs the same models written by hand.

dualml's promise is that a built model *is* a native ``torch.nn.Module`` / ``paddle.nn.Layer``, so
it should run as fast as hand-written code. This script checks that claim for the four zoo models:
for each model and backend it times

* ``forward``: eval mode under no_grad;
* ``train_step``: forward, cross-entropy vs random int labels, backward, SGD step with the
  framework's own optimizer,

for the dualml-built model and the hand-written twin (``tests/fixtures/handwritten_<backend>.py``), loaded with
identical weights (hand-written init imported with ``dualml.import_native``). The two are timed
interleaved, swapping who goes first every repeat, so clock/thermal drift and cache effects cancel
in the ratio. It also times the root ``__call__`` wrapper dualml installs for error diagnosis,
directly against the framework's base ``__call__``.

Each backend runs in its own subprocess: importing paddle sets ``OMP_NUM_THREADS=1`` for the
process and both frameworks keep OpenMP worker pools, so torch timed next to a loaded paddle (or the
reverse) is not what a user of one framework sees. The parent imports no framework.

Batch sizes: mlp 64 ([64, 64]), cnn 64 ([64, 1, 8, 8]), resnet18 8 at image_size=64
([8, 3, 64, 64], not 224, to stay within the time budget on 2 CPU cores; the graph is the full
ResNet-18), transformer 32 ([32, 8] token ids).

Usage: ``python benchmarks/bench_core.py [--models mlp,cnn] [--repeats 30] [--warmup 5] [--out DIR]``
Writes ``DIR/bench_core.json``, ``DIR/bench_core.md`` and ``DIR/bench_core.png``.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import atomic_write, run_workers, threads
from tqdm import tqdm

import dualml
from dualml import zoo

BACKENDS = ("torch", "paddle")
PHASES = ("forward", "train_step")
BATCH = {"mlp": 64, "cnn": 64, "resnet18": 8, "transformer": 32}
MODEL_KWARGS: dict[str, dict[str, Any]] = {"resnet18": {"image_size": 64}}
SEED = 0
LR = 0.01


def _handwritten(backend: str) -> dict[str, Callable[..., Any]]:
    if backend == "torch":
        from fixtures.handwritten_torch import HANDWRITTEN
    else:
        from fixtures.handwritten_paddle import HANDWRITTEN
    return HANDWRITTEN


class Runner:
    """Forward and train-step closures for one native model, framework specifics kept in one place."""

    def __init__(self, model: Any, backend: str, x: np.ndarray, labels: np.ndarray) -> None:
        self.model, self.backend = model, backend
        self.be = dualml.get_backend(backend)
        self.x = self.be.tensor(x)
        self.y = self.be.tensor(labels)
        if backend == "torch":
            import torch
            self.opt = torch.optim.SGD(model.parameters(), lr=LR)
            self.loss_fn = torch.nn.functional.cross_entropy
        else:
            import paddle
            self.opt = paddle.optimizer.SGD(learning_rate=LR, parameters=model.parameters())
            self.loss_fn = paddle.nn.functional.cross_entropy

    def forward(self) -> None:
        with self.be.no_grad():
            self.model(self.x)

    def train_step(self) -> None:
        loss = self.loss_fn(self.model(self.x), self.y)
        if self.backend == "torch":
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        else:
            loss.backward()
            self.opt.step()
            self.opt.clear_grad()
        float(loss)  # the step is done (and CPU work synchronised) once the loss value is read

    def prepare(self, phase: str) -> None:
        self.be.set_train(self.model, phase == "train_step")


def time_pair(a: Callable[[], None], b: Callable[[], None], repeats: int, warmup: int) -> tuple[list, list]:
    """Time ``a`` and ``b`` alternately (a-b, b-a, ...) in ms; interleaving cancels drift in a/b."""
    for _ in range(warmup):
        a()
        b()
    ta: list[float] = []
    tb: list[float] = []
    gc.collect()
    for r in range(repeats):
        order = ((a, ta), (b, tb)) if r % 2 == 0 else ((b, tb), (a, ta))
        for fn, out in order:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return ta, tb


def stats(ms: list[float]) -> dict[str, float]:
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1)}


def identical_pair(model: dualml.Module, native: Any, backend: str) -> tuple[Any, str]:
    """The dualml-built model carrying the hand-written model's weights, and how they got there.

    ``import_native`` is the intended path. If it fails (as it did for BatchNorm models on torch
    before commit 73f0844 kept 0-d ``num_batches_tracked`` 0-d), fall back to the other direction,
    dualml init exported with ``export_native`` into the hand-written model, and say so in the report
    (``weights_via``) rather than skip the model: timing does not depend on whose init is shared.
    """
    try:
        return dualml.build(model, backend, weights=dualml.import_native(model, native, backend)), "import_native"
    except Exception as exc:  # noqa: BLE001 - recorded in the report, not swallowed
        built = dualml.build(model, backend)
        state = dualml.export_native(model, dualml.get_weights(built), backend)
        if backend == "torch":
            import torch
            native.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
        else:
            native.set_state_dict(state)
        first = str(exc).splitlines()[0] if str(exc) else ""
        return built, f"export_native (import_native failed: {type(exc).__name__}: {first})"


def bench_model(name: str, backend: str, repeats: int, warmup: int) -> dict[str, Any]:
    """Both phases for one model on one backend, dualml-built vs hand-written, identical weights."""
    be = dualml.get_backend(backend)
    kwargs = MODEL_KWARGS.get(name, {})
    model = zoo.ZOO[name](**kwargs)
    be.seed(SEED)
    native = _handwritten(backend)[name](**kwargs)
    built, via = identical_pair(model, native, backend)
    rng = np.random.default_rng(SEED)
    (spec,) = model.input_spec(batch=BATCH[name])
    x = spec.sample(rng)
    labels = rng.integers(0, 10 if name != "resnet18" else 1000, size=(BATCH[name],)).astype("int64")
    runners = {"dualml": Runner(built, backend, x, labels), "native": Runner(native, backend, x, labels)}
    out: dict[str, Any] = {"input_shape": list(x.shape), "weights_via": via}
    for phase in PHASES:
        for r in runners.values():
            r.prepare(phase)
        td, tn = time_pair(getattr(runners["dualml"], phase), getattr(runners["native"], phase), repeats, warmup)
        sd, sn = stats(td), stats(tn)
        out[phase] = {"dualml_ms": sd["median"], "dualml_iqr_ms": sd["iqr"], "native_ms": sn["median"],
                      "native_iqr_ms": sn["iqr"], "ratio": sd["median"] / sn["median"]}
    return out


def bench_call_wrapper(backend: str, repeats: int, calls: int = 500) -> dict[str, float]:
    """Per-call cost of dualml's root ``__call__`` (try/except around the base ``__call__``), measured
    on the smallest zoo model at batch 1 so the wrapper is not lost in kernel time. The difference is
    a fraction of a microsecond, so both the median and the minimum (least noisy) are reported."""
    be = dualml.get_backend(backend)
    built = dualml.build(zoo.MLP(), backend)
    x = be.tensor(np.zeros((1, 64), "float32"))
    base = be.module_base.__call__

    def wrapped() -> None:
        for _ in range(calls):
            built(x)

    def direct() -> None:
        for _ in range(calls):
            base(built, x)

    with be.no_grad():
        tw, td = time_pair(wrapped, direct, repeats, warmup=3)
    w, d = stats(tw)["median"] * 1e3 / calls, stats(td)["median"] * 1e3 / calls
    wmin, dmin = min(tw) * 1e3 / calls, min(td) * 1e3 / calls
    return {"wrapped_us": w, "base_call_us": d, "overhead_us": w - d, "overhead_pct": 100 * (w - d) / d,
            "wrapped_min_us": wmin, "base_call_min_us": dmin, "overhead_min_us": wmin - dmin}






def markdown(report: dict[str, Any]) -> str:
    cfg, lines = report["config"], []
    lines += ["# dualml core benchmark: dualml-built vs hand-written", "",
              f"Median ms over {cfg['repeats']} interleaved repeats (after {cfg['warmup']} warm-up), IQR in "
              "parentheses; ratio = dualml / native (1.00 = no overhead). resnet18 runs at image_size 64.", "",
              "| model | input | backend | phase | dualml ms | native ms | ratio |",
              "|---|---|---|---|---|---|---|"]
    for name, per in report["results"].items():
        for backend in BACKENDS:
            r = per[backend]
            for phase in PHASES:
                p = r[phase]
                lines.append(f"| {name} | {r['input_shape']} | {backend} | {phase} | {p['dualml_ms']:.3f} "
                             f"({p['dualml_iqr_ms']:.3f}) | {p['native_ms']:.3f} ({p['native_iqr_ms']:.3f}) | "
                             f"{p['ratio']:.3f} |")
    fallbacks = [f"{n}/{b}: {per[b]['weights_via']}" for n, per in report["results"].items() for b in BACKENDS
                 if per[b]["weights_via"] != "import_native"]
    if fallbacks:
        lines += ["", "Weights shared via a fallback (see `identical_pair`):", ""] + [f"- {f}" for f in fallbacks]
    lines += ["", "## torch / paddle (median time ratio; < 1 means torch is faster)", "",
              "| model | phase | native | dualml |", "|---|---|---|---|"]
    for name, per in report["results"].items():
        for phase in PHASES:
            tp = per["torch_over_paddle"][phase]
            lines.append(f"| {name} | {phase} | {tp['native']:.3f} | {tp['dualml']:.3f} |")
    lines += ["", "## root `__call__` wrapper (built MLP, batch 1, per call)", "",
              "| backend | wrapped us | base __call__ us | overhead us (median) | overhead % | overhead us (min) |",
              "|---|---|---|---|---|---|"]
    for backend, c in report["call_wrapper"].items():
        lines.append(f"| {backend} | {c['wrapped_us']:.2f} | {c['base_call_us']:.2f} | {c['overhead_us']:.2f} | "
                     f"{c['overhead_pct']:.1f} | {c['overhead_min_us']:.2f} |")
    m = report["machine"]
    threads = ", ".join(f"{b}: {t}" for b, t in m["threads"].items())
    lines += ["", f"Machine: {m['platform']}, {m['cpu_count']} CPUs, python {m['python']}, torch {m['torch']}, "
              f"paddle {m['paddle']}, numpy {m['numpy']}; intra-op threads ({threads}); each backend in its own "
              f"process; 1-min load average {m['loadavg_1m_start']:.2f} at start (the minute before the run: well "
              f"above 0 means other work was competing for the CPUs), {m['loadavg_1m_end']:.2f} at end (includes "
              "this run).", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any]) -> bytes:
    import matplotlib

    from dualml.checkpoint import png_bytes
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["results"])
    series = [(b, p) for b in BACKENDS for p in PHASES]
    width = 0.8 / len(series)
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(names)), 4))
    for i, (b, p) in enumerate(series):
        vals = [report["results"][n][b][p]["ratio"] for n in names]
        ax.bar(np.arange(len(names)) + (i - (len(series) - 1) / 2) * width, vals, width, label=f"{b} {p}")
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax.set_xticks(np.arange(len(names)), names)
    ax.set_ylabel("time ratio dualml / hand-written")
    ax.set_title("dualml overhead (1.0 = none)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig, dpi=120)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(zoo.ZOO), help="comma-separated zoo models (default: all)")
    ap.add_argument("--repeats", type=int, default=30, help="timed repeats per model (default 30)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed warm-up repeats (default 5)")
    ap.add_argument("--out", default="reports/bench_core", help="report directory")
    ap.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)  # internal: one backend, JSON to --out
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in zoo.ZOO]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; allowed: {', '.join(zoo.ZOO)}")
    if args.repeats < 1 or args.warmup < 0:
        ap.error("--repeats must be >= 1 and --warmup >= 0")
    return args




def worker(args: argparse.Namespace) -> None:
    """One backend in this process: every model, then the wrapper micro-benchmark, as JSON."""
    backend = args.worker
    warnings.filterwarnings("ignore", category=UserWarning)  # paddle's BatchNorm "always track" notice
    dualml.get_backend(backend)  # import the framework (paddle after zlib) before timing anything
    results = {}
    for name in tqdm(args.models, desc=f"bench_core {backend}", unit="model", file=sys.stderr):
        results[name] = bench_model(name, backend, args.repeats, args.warmup)
    out = {"results": results, "call_wrapper": bench_call_wrapper(backend, args.repeats),
           "threads": threads(backend)}
    atomic_write(Path(args.out), json.dumps(out).encode())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    parts, machine = run_workers(__file__, ["--models", ",".join(args.models), "--repeats", str(args.repeats),
                                            "--warmup", str(args.warmup)], BACKENDS)
    results: dict[str, Any] = {n: {b: parts[b]["results"][n] for b in BACKENDS} for n in args.models}
    for per in results.values():
        per["torch_over_paddle"] = {p: {k: per["torch"][p][f"{k}_ms"] / per["paddle"][p][f"{k}_ms"]
                                        for k in ("native", "dualml")} for p in PHASES}
    report = {
        "config": {"models": args.models, "repeats": args.repeats, "warmup": args.warmup, "batch": BATCH,
                   "model_kwargs": MODEL_KWARGS, "optimizer": f"SGD lr={LR}", "seed": SEED,
                   "notes": "resnet18 at image_size=64 (not 224) to fit the time budget; medians in ms; "
                            "ratio = dualml/native; dualml and native timed interleaved; one process per backend"},
        "machine": machine,
        "results": results,
        "call_wrapper": {b: parts[b]["call_wrapper"] for b in BACKENDS},
        "elapsed_s": time.perf_counter() - started,
    }
    atomic_write(out / "bench_core.json", json.dumps(report, indent=2).encode())
    atomic_write(out / "bench_core.md", markdown(report).encode())
    atomic_write(out / "bench_core.png", plot(report))
    print(markdown(report))
    print(f"reports written to {out.resolve()}/bench_core.{{json,md,png}} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
