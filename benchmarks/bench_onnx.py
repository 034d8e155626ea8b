"""ONNX Runtime against eager inference, both backends, side by side in one run; and static INT8.

For each model, one set of canonical weights is built on torch and on paddle and exported by each
backend's exporter (dualml.onnx.export, verified against eager). Then, at batch 1 and batch 64,
four callables are timed interleaved (dualml.timing.interleaved): torch eager, ORT on the torch
export, paddle eager, ORT on the paddle export. Everything runs on one thread (torch
set_num_threads(1), paddle's own single OpenMP thread, ORT intra_op_num_threads=1) so the ratios
compare engines, not thread pools, on a 2-core shared box.

INT8: a cnn is trained on digits (dualml Trainer, default config, torch), exported from the same
checkpoint by both backends, statically quantized (QDQ, calibrated on train batches) by the one
ORT path (dualml.onnx.int8), and compared with its fp32 file: size, test accuracy, latency. Twice:
the default cnn (channels 16,32: a 22 KiB file where the Q/DQ graph overhead is large next to the
weights) and a wider one (64,128).

Usage: ``python benchmarks/bench_onnx.py [--models mlp,cnn,transformer] [--repeats 30] [--no-int8]
[--out reports/bench]``. Writes ``onnx.json``, ``onnx.md`` and ``onnx.png`` and prints their paths.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import atomic_write, machine_info  # noqa: E402

BACKENDS = ("torch", "paddle")


def _inference(name: str, batches: list[int], repeats: int, tmp: Path) -> dict[str, Any]:
    import torch

    from dualml import build
    from dualml.evidence.bench import eager_call, ort_call
    from dualml.module import init_weights
    from dualml.onnx import ort
    from dualml.onnx.export import export_model
    from dualml.timing import interleaved
    from dualml.zoo import create_model

    torch.set_num_threads(1)
    model = create_model(name)
    weights = init_weights(model, 0)
    rng = np.random.default_rng(0)
    sample = model.input_spec(4)[0].sample(rng)
    nets, sessions, exports = {}, {}, {}
    for b in BACKENDS:
        path = tmp / f"{name}-{b}.onnx"
        exports[b] = export_model(model, b, weights, path, sample, metadata={"model": name})
        nets[b] = build(model, b, weights=weights)
        sessions[b] = ort.session(path, threads=1)
    out: dict[str, Any] = {"export": {b: {k: exports[b][k] for k in ("exporter", "opset", "bytes", "export_seconds")}
                                      | {"vs_eager_max_abs": exports[b]["verification"]["max_abs"]}
                                      for b in BACKENDS}, "batches": {}}
    for n in batches:
        x = model.input_spec(n)[0].sample(rng)
        fns = {}
        for b in BACKENDS:
            fns[f"{b} eager"] = eager_call(nets[b], b, x)
            fns[f"{b} ort"] = ort_call(sessions[b], x)
        t = interleaved(fns, repeats=repeats, warmup=3, min_seconds=0.02)
        med = {k: v["median_ms"] for k, v in t.items()}
        out["batches"][n] = {"timings": t, "ratios": {
            "torch eager / torch ort": med["torch eager"] / med["torch ort"],
            "paddle eager / paddle ort": med["paddle eager"] / med["paddle ort"],
            "paddle eager / torch eager": med["paddle eager"] / med["torch eager"],
            "ort(paddle export) / ort(torch export)": med["paddle ort"] / med["torch ort"]}}
    return out


def _int8(channels: list[int], tmp: Path) -> dict[str, Any]:
    from dualml import get_weights
    from dualml.config import load_config
    from dualml.onnx.export import export_model
    from dualml.onnx.int8 import calibration_batches, compare_int8, quantize_onnx
    from dualml.train.data import load_dataset
    from dualml.train.trainer import Trainer

    cfg = load_config(["backend=torch", "model=cnn", "data=digits", f"model.channels=[{channels[0]},{channels[1]}]"])
    trainer = Trainer(cfg, write=False, progress=False)
    metrics = trainer.fit()
    weights = get_weights(trainer.net)
    ds = load_dataset(cfg.data, input_shape=(1, 8, 8), seed=cfg.seed)
    calib = calibration_batches(ds.train.x, 8, 64, 0)
    res: dict[str, Any] = {"channels": channels, "trained": {"backend": "torch", "test_acc": metrics["test_acc"],
                                                             "steps": metrics["steps"]}}
    for b in BACKENDS:
        fp32 = tmp / f"cnn{channels}-{b}.fp32.onnx"
        export_model(trainer.model, b, weights, fp32, ds.test.x[:8], metadata={"model": "cnn"})
        q = tmp / f"cnn{channels}-{b}.int8.onnx"
        info = quantize_onnx(fp32, q, "static", calib)
        res[b] = {"quantize": {k: v for k, v in info.items() if k != "ops"},
                  **compare_int8(fp32, q, ds.test.x, ds.test.y)}
    return res


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# ONNX Runtime vs eager (1 thread each)", "",
             "| model | batch | torch eager ms | torch ORT ms | paddle eager ms | paddle ORT ms | "
             "torch eager/ORT | paddle eager/ORT | paddle/torch eager |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["inference"].items():
        for n, br in r["batches"].items():
            m = {k: v["median_ms"] for k, v in br["timings"].items()}
            q = br["ratios"]
            lines.append(f"| {name} | {n} | {m['torch eager']:.3f} | {m['torch ort']:.3f} | {m['paddle eager']:.3f} | "
                         f"{m['paddle ort']:.3f} | {q['torch eager / torch ort']:.2f}x | "
                         f"{q['paddle eager / paddle ort']:.2f}x | {q['paddle eager / torch eager']:.2f} |")
    if report.get("int8"):
        lines += ["", "# Static INT8 (QDQ) cnn on digits vs fp32 ORT (1 thread)", "",
                  "| cnn channels | exported by | fp32 KiB | int8 KiB | size | fp32 acc | int8 acc | drop (points) | "
                  "latency int8/fp32 b1 | b64 |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in report["int8"]:
            for b in BACKENDS:
                c = r[b]
                lines.append(f"| {r['channels']} | {b} | {c['fp32_bytes'] / 1024:.1f} | {c['int8_bytes'] / 1024:.1f} | "
                             f"{100 * c['size_ratio']:.0f}% | {c['fp32_accuracy']:.4f} | {c['int8_accuracy']:.4f} | "
                             f"{c['accuracy_drop_points']:.2f} | {c['latency_ratio_b1']:.2f} | "
                             f"{c['latency_ratio_b64']:.2f} |")
    return "\n".join(lines) + "\n"


def _plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(f"{m}\nb{n}", br["timings"]) for m, r in report["inference"].items() for n, br in r["batches"].items()]
    keys = ["torch eager", "torch ort", "paddle eager", "paddle ort"]
    fig, ax = plt.subplots(figsize=(max(6, 1.4 * len(rows)), 4))
    w = 0.2
    for i, k in enumerate(keys):
        ax.bar([j + (i - 1.5) * w for j in range(len(rows))], [t[k]["median_ms"] for _, t in rows], w, label=k)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows])
    ax.set_yscale("log")
    ax.set_ylabel("median ms per call (log)")
    ax.set_title("eager vs ONNX Runtime, 1 thread")
    ax.legend()
    fig.tight_layout()
    from dualml.checkpoint import png_bytes

    atomic_write(path, png_bytes(fig))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mlp,cnn,transformer")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--no-int8", action="store_true")
    ap.add_argument("--int8-channels", default="16,32;64,128", help="cnn channel pairs for the INT8 table")
    ap.add_argument("--out", default="reports/bench")
    a = ap.parse_args(argv)
    from tqdm import tqdm

    report: dict[str, Any] = {"machine": machine_info(), "threads": 1, "inference": {}}
    with tempfile.TemporaryDirectory(prefix="dualml-bench-onnx-") as tmp:
        for name in tqdm(a.models.split(","), desc="ORT vs eager", unit="model"):
            report["inference"][name] = _inference(name, [int(b) for b in a.batches.split(",")], a.repeats,
                                                   Path(tmp))
        if not a.no_int8:
            report["int8"] = [_int8([int(c) for c in ch.split(",")], Path(tmp))
                              for ch in tqdm(a.int8_channels.split(";"), desc="INT8", unit="cnn")]
    out = Path(a.out)
    atomic_write(out / "onnx.json", json.dumps(report, indent=2, default=str).encode())
    atomic_write(out / "onnx.md", _markdown(report).encode())
    _plot(report, out / "onnx.png")
    print(_markdown(report))
    print(f"report: {out / 'onnx.json'}, {out / 'onnx.md'}, {out / 'onnx.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
