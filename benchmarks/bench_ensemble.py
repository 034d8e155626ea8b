"""Do ensembles of dualml members (both backends) beat the best single member on digits, and is the
exported file the ensemble?

For each ensemble seed (default 0, 1, 2) five members are trained with their shipped recipes (cnn: 20
epochs; mlp: 10), split across backends and models: cnn[torch], cnn[paddle], mlp[torch], mlp[paddle],
cnn[torch], with member seeds ``10 * seed + i``. The data split is fixed (split seed 0) so every
ensemble seed is scored on the same 360 test digits; the combiners are fitted on the 180-digit
validation split. Reported per combiner: test accuracy minus the best single member's, mean, std
(population) and min over seeds; nothing is tuned on the test split.

Also: the whole ensemble exported to one ONNX file (seed 0; soft and stacking), ONNX Runtime vs the
in-process probabilities; bagging (``--bags`` mlp members on bootstraps, alternating backends) with
its out-of-bag accuracy against the test accuracy, per seed; SAMME boosting (``--rounds`` rounds of
2-epoch mlp members, by resampling) with the training error by round (PNG); gradient boosting on residuals
(``--gb-rounds`` mlp members, mse, shrinkage 0.5) on a generated traffic set of ``--gb-nodes`` sensors x
``--gb-days`` days, masked MAE by round beside the no-model baselines.

Usage: ``python benchmarks/bench_ensemble.py [--seeds 0,1,2] [--bags 8] [--rounds 8] [--gb-rounds 4]
[--gb-nodes 20] [--gb-days 7] [--out reports/bench_ensemble]``.
Writes ``OUT/bench_ensemble.{json,md}`` and ``OUT/boosting.png``; prints where.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before any framework import: 2 shared cores here

import argparse  # noqa: E402
import json  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import _common  # noqa: E402  (imports dualml first: the zlib guard)
import numpy as np  # noqa: E402

from dualml.ensemble import Ensemble, fit_combiner  # noqa: E402
from dualml.ensemble.combine import COMBINERS  # noqa: E402
from dualml.ensemble.pipeline import fit_members  # noqa: E402
from dualml.ensemble.report import plot_boosting  # noqa: E402
from dualml.ensemble.resample import oob_scores  # noqa: E402
from dualml.train.data import load_dataset  # noqa: E402

MEMBERS = (("cnn", "torch"), ("cnn", "paddle"), ("mlp", "torch"), ("mlp", "paddle"), ("cnn", "torch"))


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": float(a.mean()), "std": float(a.std()), "min": float(a.min()), "max": float(a.max())}


def voting(ds: Any, seed: int, export_dir: Path | None) -> dict[str, Any]:
    specs = [{"model": m, "backend": b, "seed": 10 * seed + i} for i, (m, b) in enumerate(MEMBERS)]
    t0 = time.perf_counter()
    members = fit_members(specs, ds, progress=True).members
    train_s = time.perf_counter() - t0
    val = np.stack([m.probabilities(ds.val.x) for m in members])
    test = np.stack([m.probabilities(ds.test.x) for m in members])
    member_acc = [float((p.argmax(1) == ds.test.y).mean()) for p in test]
    best = max(member_acc)
    out: dict[str, Any] = {"seed": seed, "train_seconds": train_s,
                           "members": [{"name": f"{m.model_name}[{m.backend}]", "seed": m.info["seed"],
                                        "test_acc": a} for m, a in zip(members, member_acc, strict=True)],
                           "best_member_test_acc": best, "combiners": {}}
    for kind in COMBINERS:
        c = fit_combiner(kind, val, ds.val.y, seed=seed)
        acc = float((c.combine(test).argmax(1) == ds.test.y).mean())
        out["combiners"][kind] = {"test_acc": acc, "gain": acc - best, **c.describe()}
    if export_dir is not None:
        out["onnx"] = {}
        for kind in ("soft", "stacking"):
            ens = Ensemble(members, fit_combiner(kind, val, ds.val.y, seed=seed))
            r = ens.export(export_dir / f"ensemble-{kind}.onnx", ds.test.x)
            out["onnx"][kind] = {"max_abs": r["verification"]["max_abs"], "opset": r["opset"], "bytes": r["bytes"],
                                 "members": r["members"], "rows": len(ds.test.y)}
    return out


def bagging(ds: Any, seed: int, bags: int) -> dict[str, Any]:
    specs = [{"model": "mlp", "backend": "torch", "seed": 100 * seed}, {"model": "mlp", "backend": "paddle",
                                                                          "seed": 100 * seed + 50}]
    f = fit_members(specs, ds, method="bagging", rounds=bags, seed=seed, progress=True)
    train = np.stack([m.probabilities(ds.train.x) for m in f.members])
    test = np.stack([m.probabilities(ds.test.x) for m in f.members])
    oob = oob_scores(train, f.rows, ds.train.y)
    acc = float((test.mean(axis=0).argmax(1) == ds.test.y).mean())
    return {"seed": seed, **oob, "test_acc": acc, "oob_minus_test": oob["oob_accuracy"] - acc,
            "member_test_acc": [float((p.argmax(1) == ds.test.y).mean()) for p in test]}


def boosting(ds: Any, rounds: int) -> dict[str, Any]:
    specs = [{"model": "mlp", "backend": "torch", "seed": 0, "trainer": {"epochs": 2}},
             {"model": "mlp", "backend": "paddle", "seed": 100, "trainer": {"epochs": 2}}]
    f = fit_members(specs, ds, method="boosting", rounds=rounds, seed=0, progress=True)
    test = np.stack([m.probabilities(ds.test.x) for m in f.members])
    a = np.array(f.alphas)
    c = fit_combiner("hard", test, ds.test.y, weights=a / a.sum())  # SAMME's vote: fixed weights, no fitting
    acc = float((c.combine(test).argmax(1) == ds.test.y).mean())
    return {"rounds": f.rounds, "test_acc": acc, "member_test_acc": [float((p.argmax(1) == ds.test.y).mean())
                                                                     for p in test]}


def gradient(rounds: int, nodes: int, days: int) -> dict[str, Any]:
    """Gradient boosting on residuals on a small traffic set (mlp members, mse, shrinkage 0.5)."""
    from dualml.ensemble.gradient import boost

    ds = load_dataset({"name": "traffic", "nodes": nodes, "days": days}, seed=0)
    size = [f"model.in_features={int(np.prod(ds.input_shape))}", f"model.num_classes={ds.num_classes}",
            "trainer.loss=mse"]
    specs = [{"model": "mlp", "backend": "torch", "seed": 0}, {"model": "mlp", "backend": "paddle", "seed": 100}]
    b = boost(specs, ds, size, rounds, 0.5, progress=True)
    return {"nodes": nodes, "days": days, "split": [len(ds.train.y), len(ds.val.y), len(ds.test.y)],
            "rounds": b.rounds, "baselines": {k: v["all"] for k, v in (ds.baselines or {}).items()}}


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"# bench_ensemble ({m['cpu_count']} CPUs, load {m['loadavg_1m_start']:.1f}, torch {m['torch']}, paddle "
             f"{m['paddle']}; ensemble seeds {r['seeds']}, {r['seconds']:.0f} s)", "",
             "| combiner | test acc mean | std | min | gain over best member: mean | std | min |",
             "|---|---|---|---|---|---|---|"]
    for kind, s in r["summary"]["combiners"].items():
        lines.append(f"| {kind} | {s['acc']['mean']:.4f} | {s['acc']['std']:.4f} | {s['acc']['min']:.4f} | "
                     f"{s['gain']['mean']:+.4f} | {s['gain']['std']:.4f} | {s['gain']['min']:+.4f} |")
    b = r["summary"]["best_member"]
    lines += ["", f"best single member: {b['mean']:.4f} +- {b['std']:.4f} (min {b['min']:.4f})"]
    for kind, o in r["voting"][0].get("onnx", {}).items():
        lines.append(f"ONNX ({kind}, opset {o['opset']}, {o['bytes']} bytes) vs in-process on {o['rows']} test rows: "
                     f"max abs {o['max_abs']:.2e}")
    for g in r["bagging"]:
        lines.append(f"bagging seed {g['seed']}: OOB {g['oob_accuracy']:.4f} vs test {g['test_acc']:.4f} "
                     f"({g['oob_minus_test'] * 100:+.2f} points)")
    lines += ["", "| round | member | weighted error | alpha | ensemble train error |", "|---|---|---|---|---|"]
    for row in r["boosting"]["rounds"]:
        lines.append(f"| {row['round']} | {row['member']} | {row['weighted_error']:.4f} | {row['alpha']:.3f} | "
                     f"{row.get('ensemble_train_error', float('nan')):.4f} |")
    lines.append(f"boosted test accuracy {r['boosting']['test_acc']:.4f}")
    g = r["gradient"]
    lines += ["", f"gradient boosting on residuals, traffic {g['nodes']} sensors x {g['days']} days "
              f"(split {g['split']}):",
              "", "| round | member | train MAE | val MAE | test MAE |", "|---|---|---|---|---|"]
    lines += [f"| {row['round']} | {row['member']} | {row['train_mae']:.4f} | {row['val_mae']:.4f} | "
              f"{row['test_mae']:.4f} |" for row in g["rounds"]]
    lines += [f"baseline {k}: test MAE {v['mae']:.4f}" for k, v in g["baselines"].items()]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--bags", type=int, default=8)
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--gb-rounds", type=int, default=4)
    p.add_argument("--gb-nodes", type=int, default=20)
    p.add_argument("--gb-days", type=int, default=7)
    p.add_argument("--out", default="reports/bench_ensemble")
    a = p.parse_args()
    import torch

    torch.set_num_threads(1)
    seeds = [int(s) for s in a.seeds.split(",")]
    out = Path(a.out)
    ds = load_dataset({"name": "digits"}, seed=0)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-ensemble-") as tmp:
        vote = [voting(ds, s, Path(tmp) if i == 0 else None) for i, s in enumerate(seeds)]
    bags = [bagging(ds, s, a.bags) for s in seeds]
    boost = boosting(ds, a.rounds)
    grad = gradient(a.gb_rounds, a.gb_nodes, a.gb_days)
    summary = {"best_member": _stats([v["best_member_test_acc"] for v in vote]),
               "combiners": {k: {"acc": _stats([v["combiners"][k]["test_acc"] for v in vote]),
                                 "gain": _stats([v["combiners"][k]["gain"] for v in vote])} for k in COMBINERS},
               "oob_minus_test_points": _stats([100 * g["oob_minus_test"] for g in bags])}
    report = {"seeds": seeds, "split_seed": 0, "data": "digits", "members": [f"{m}[{b}]" for m, b in MEMBERS],
              "machine": _common.machine_info(), "seconds": time.perf_counter() - t0, "summary": summary,
              "voting": vote, "bagging": bags, "boosting": boost, "gradient": grad}
    _common.atomic_write(out / "bench_ensemble.json", json.dumps(report, indent=2, default=str).encode())
    _common.atomic_write(out / "bench_ensemble.md", markdown(report).encode())
    plot_boosting(boost["rounds"], out / "boosting.png", "SAMME on digits: mlp members (2 epochs), by resampling")
    print(markdown(report))
    print(f"wrote {out / 'bench_ensemble.json'}, {out / 'bench_ensemble.md'}, {out / 'boosting.png'} "
          f"({report['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
