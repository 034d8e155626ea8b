"""Training-curve parity over the whole matrix: mlp, cnn, transformer, a narrow resnet x SGD+momentum,
Nesterov, Adam, AdamW at their usual and a high lr, 100 steps, torch vs paddle.

float64 (the authority): max relative per-step loss difference, pass at 1e-9. float32: the
cross-backend divergence against the one-ulp self-divergence envelope measured in the same run, the
ratio, the first step where the backends part by more than 1e-6 and the kink found there.
Writes reports/bench_curves/report.{json,md} and curves.png (cross vs self divergence per case).

    python benchmarks/bench_curves.py [--models mlp,cnn] [--optimizers adam,adam-hi] [--dtypes float64,float32]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import atomic_write, machine_info
from tqdm import tqdm

from dualml.cpu import describe_cpu
from dualml.evidence.curves import MODELS, OPTIMIZERS, as_dict, markdown, plot, run_curve


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--optimizers", default=",".join(OPTIMIZERS))
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--out", default="reports/bench_curves")
    args = ap.parse_args()
    jobs = [(m, o, d) for m in args.models.split(",") for o in args.optimizers.split(",")
            for d in args.dtypes.split(",")]
    results = []
    t0 = time.perf_counter()
    for m, o, d in tqdm(jobs, desc="curves", unit="case"):
        results.append(as_dict(run_curve(f"{m}/{o}", [*MODELS[m], *OPTIMIZERS[o]], steps=args.steps, dtype=d)))
    report = {"machine": machine_info(), "cpu": describe_cpu(), "steps": args.steps,
              "seconds": time.perf_counter() - t0, "results": results,
              "failed": [f"{r['label']} [{r['dtype']}]" for r in results if not r["passed"]]}
    out = Path(args.out)
    atomic_write(out / "report.json", json.dumps(report, indent=2).encode())
    atomic_write(out / "report.md", markdown(report).encode())
    atomic_write(out / "curves.png", plot(results))
    print(markdown(report))
    print(f"report: {out / 'report.json'}, {out / 'report.md'}, {out / 'curves.png'}")


if __name__ == "__main__":
    main()
