"""Train model=forecaster on data=traffic at a reduced size on both backends and compare its masked MAE
with the historical-average and last-value baselines (issue #17). Not a test: a few minutes on a CPU.

``python benchmarks/bench_forecaster.py [--nodes 20] [--days 7] [--embed-dim 32] [--steps 400]
[--backends torch,paddle] [--day-of-week] [--out benchmarks/results]``. Writes ``OUT/bench_forecaster.{json,png}`` and
prints where they went. The reduced size: embed_dim 32, 4 heads, depths 1/1/1/1, gated fusion,
sinusoidal positions, 20 sensors and 7 generated days (the default data set is 207 sensors, 14 days),
Adam 3e-3 with a cosine schedule, batch 32; everything else is the zoo default.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import atomic_write, machine_info  # noqa: E402

from dualml.config import load_config  # noqa: E402


def overrides(args: argparse.Namespace, backend: str) -> list[str]:
    return ["model=forecaster", "data=traffic", f"backend={backend}", f"data.nodes={args.nodes}",
            f"data.days={args.days}", "data.batch_size=32", f"model.nodes={args.nodes}",
            f"model.embed_dim={args.embed_dim}", "model.num_heads=4", "model.temporal_depth_1=1",
            "model.spatial_depth_1=1", "model.temporal_depth_2=1", "model.spatial_depth_2=1",
            "trainer.loss=mae", f"trainer.max_steps={args.steps}", "trainer.optimizer.name=adam",
            "trainer.optimizer.lr=0.003", "trainer.schedule.name=cosine", f"seed={args.seed}",
            f"data.day_of_week={str(args.day_of_week).lower()}", f"model.in_features={3 if args.day_of_week else 2}"]


def train(args: argparse.Namespace, backend: str) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """The run's metrics, and the test forecasts and targets in mph."""
    from dualml.train.trainer import Trainer

    t = Trainer(load_config(overrides(args, backend)), write=False, progress=False)
    m = t.fit()
    be, x = t.be, t.data.test.x
    be.set_train(t.net, False)
    with be.no_grad():
        out = np.concatenate([be.numpy(t.net(be.tensor(x[i:i + 256]))) for i in range(0, len(x), 256)])
    mean, std = t.data.target_scale
    return m, out * std + mean, t.data.test.y


def plot(path: Path, runs: dict[str, Any], forecasts: dict[str, np.ndarray], y: np.ndarray) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dualml.checkpoint import atomic_write_bytes, png_bytes

    sensors, day = (0, 1, 2), min(288, len(y))
    fig, axes = plt.subplots(1, len(sensors) + 1, figsize=(5 * (len(sensors) + 1), 3.6))
    t = np.arange(day) / 12.0
    for ax, s in zip(axes, sensors):   # the 60-minute-ahead forecast issued at each 5-minute step
        true = y[:day, -1, s].astype(float)
        true[true == 0] = np.nan
        ax.plot(t, true, "k", lw=1, label="true")
        for b, f in forecasts.items():
            ax.plot(t, f[:day, -1, s], lw=0.9, label=f"forecast ({b})")
        ax.set(title=f"sensor {s}, 60 min ahead", xlabel="hours into the test period", ylabel="mph")
        ax.legend(fontsize=7)
    ax = axes[-1]
    hs = [3, 6, 12]
    base = runs[next(iter(runs))]["baselines"]
    for b, m in runs.items():
        ax.plot(hs, [m["test_horizons"][str(h)]["mae"] for h in hs], "o-", label=f"forecaster ({b})")
    for name in ("historical_average", "last_value"):
        ax.plot(hs, [base[name][str(h)]["mae"] for h in hs], "s--", label=name)
    ax.set(title="masked MAE by horizon", xlabel="horizon (5-min steps)", ylabel="MAE (mph)", xticks=hs)
    ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig, dpi=90))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--days", type=int, default=7)
    ap.add_argument("--embed-dim", type=int, default=32)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backends", default="torch,paddle")
    ap.add_argument("--day-of-week", action="store_true", help="add the day of the week as a third input feature")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    runs, forecasts, y = {}, {}, None
    for b in args.backends.split(","):
        m, f, y = train(args, b)
        runs[b], forecasts[b] = m, f
        print(f"{b}: {m['steps']} steps in {m['seconds']:.0f} s, test masked MAE@12 "
              f"{m['test_horizons']['12']['mae']:.3f} mph", flush=True)
    base = runs[next(iter(runs))]["baselines"]
    ha12 = base["historical_average"]["12"]["mae"]
    table = {b: {"mae": {h: m["test_horizons"][h]["mae"] for h in ("3", "6", "12")},
                 "rmse_12": m["test_horizons"]["12"]["rmse"], "mape_12": m["test_horizons"]["12"]["mape"],
                 "seconds": m["seconds"], "steps": m["steps"],
                 "improvement_vs_historical_average_12": 1 - m["test_horizons"]["12"]["mae"] / ha12}
             for b, m in runs.items()}
    report = {"config": {**vars(args), "overrides": overrides(args, "<backend>")},
              "results": table, "baselines": {k: {h: v[h]["mae"] for h in ("3", "6", "12")} for k, v in base.items()},
              "target": "forecaster masked MAE@12 at least 20% below the historical average",
              "machine": machine_info(), "elapsed_s": time.perf_counter() - t0}
    atomic_write(out / "bench_forecaster.json", json.dumps(report, indent=2).encode())
    try:
        plot(out / "bench_forecaster.png", runs, forecasts, y)
    except Exception as exc:  # the figure is a bonus; the numbers are the result
        print(f"figure not written: {exc}")
    print("| backend | MAE@3 | MAE@6 | MAE@12 | vs historical average @12 | steps | seconds |")
    print("|---|---|---|---|---|---|---|")
    for b, r in table.items():
        print(f"| {b} | {r['mae']['3']:.3f} | {r['mae']['6']:.3f} | {r['mae']['12']:.3f} | "
              f"{100 * r['improvement_vs_historical_average_12']:.1f}% better | {r['steps']} | {r['seconds']:.0f} |")
    for k, v in report["baselines"].items():
        print(f"| {k} | {v['3']:.3f} | {v['6']:.3f} | {v['12']:.3f} | | | |")
    print(f"report written to {(out / 'bench_forecaster.json').resolve()} (and .png) ({report['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
