"""Transfer learning on digits (issue #18): does a pretrained body help, does DANN help, do checkpoints cross?

(a) fine-tune: a cnn with a 5-class head is trained on digits 0-4, then ``trainer.init_from`` starts a cnn with a
    new 10-class head on digits 5-9 from it, with few labels (``--shots`` per class); the same model from its
    seeded init is trained on the same batches with the same steps and lr ("scratch"), and a third arm starts
    from the checkpoint with the body frozen and unfrozen after ``--unfreeze-at`` epochs (``trainer.unfreeze``).
    Accuracy per epoch on held-out 5-9 digits (curves), final test accuracy, over ``--seeds``.
(b) DANN: target = the other half of the digits rotated 30-45 degrees; source-only training vs DANN (the
    paper's lambda schedule, and the same at 0.1 of its strength) on the same batches and steps; accuracy on the
    target test split (target labels only score).
(c) cross-backend: the seed-0 checkpoint of (a), pretrained on ``--backend``, fine-tuned on the other backend.

Writes reports/transfer/bench_transfer.json, transfer_curves.png, dann.png (and prints where);
``--record`` also copies them to benchmarks/results/bench_transfer{.json,_transfer_curves.png,_dann.png}.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

import dualml  # before paddle (the zlib guard)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import atomic_write, machine_info  # noqa: E402

from dualml.checkpoint import png_bytes  # noqa: E402
from dualml.train.data import Dataset, Split  # noqa: E402
from dualml.zoo import CNN  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8), y.astype(np.int64)


def few_shot(x: np.ndarray, y: np.ndarray, shots: int, seed: int) -> Dataset:
    """``shots`` labelled training images per class; the rest split in half: val (the curves) and test."""
    rng = np.random.default_rng([seed, 18])
    train, rest = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        train.append(idx[:shots])
        rest.append(idx[shots:])
    tr, rest = np.sort(np.concatenate(train)), rng.permutation(np.concatenate(rest))
    va, te = np.sort(rest[: len(rest) // 2]), np.sort(rest[len(rest) // 2:])
    return Dataset("digits5-9", Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]), 10)


def fine_tune_part(args: argparse.Namespace, out: Path) -> dict:
    x, y = _digits()
    lo, hi = y < 5, y >= 5
    optim = {"name": "adam", "lr": args.lr}
    runs: dict[str, list[dict]] = {"init_from": [], "scratch": [], "init_from+unfreeze": []}
    pre_acc, reports = [], []
    for seed in args.seeds:
        pre = out / "runs" / f"pre-{args.backend}-seed{seed}"
        shutil.rmtree(pre, ignore_errors=True)
        t = dualml.fit(CNN(num_classes=5), (x[lo], y[lo]), args.backend, seed=seed, epochs=args.pre_epochs,
                       optimizer=optim, run_dir=pre, progress=False)
        pre_acc.append(t.metrics["test_acc"])
        data = few_shot(x[hi], y[hi], args.shots, seed)
        common = dict(seed=seed, batch_size=args.batch, epochs=args.epochs, optimizer=optim, progress=False)
        arms = {"init_from": dict(init_from=f"{pre}/best"), "scratch": {},
                "init_from+unfreeze": dict(init_from=f"{pre}/best", freeze=["conv*", "bn*"],
                                           unfreeze=[{"at_epoch": args.unfreeze_at, "params": "conv*"},
                                                     {"at_epoch": args.unfreeze_at, "params": "bn*"}])}
        for arm, keys in arms.items():
            t0 = time.perf_counter()
            t = dualml.fit(CNN(num_classes=10), data, args.backend, **common, **keys)
            runs[arm].append({"seed": seed, "test_acc": t.metrics["test_acc"], "steps": t.metrics["steps"],
                              "val_acc_by_epoch": [r["val_acc"] for r in t.history.epochs],
                              "seconds": round(time.perf_counter() - t0, 2)})
            if arm == "init_from" and t.init_report is not None:
                reports.append(t.init_report.as_dict())
        print(f"seed {seed}: pretrain(0-4) test {pre_acc[-1]:.3f}; 5-9 with {args.shots} shots/class: " + ", ".join(
            f"{a} {runs[a][-1]['test_acc']:.3f}" for a in runs), flush=True)
    summary = {}
    for a, rs in runs.items():
        acc = [r["test_acc"] for r in rs]
        early = [r["val_acc_by_epoch"][args.unfreeze_at - 1] for r in rs]  # the curves at a smaller budget
        summary[a] = {"mean": float(np.mean(acc)), "std": float(np.std(acc)), "min": float(np.min(acc)),
                      "max": float(np.max(acc)), f"held_out_acc_epoch{args.unfreeze_at}_mean": float(np.mean(early)),
                      f"held_out_acc_epoch{args.unfreeze_at}_std": float(np.std(early))}
    wins = sum(i["test_acc"] > s["test_acc"] for i, s in zip(runs["init_from"], runs["scratch"], strict=True))
    _plot_curves(runs, args, out / "transfer_curves.png")
    return {"pretrain_test_acc_0to4": pre_acc, "runs": runs, "summary": summary,
            "init_from_beats_scratch_seeds": f"{wins}/{len(args.seeds)}",
            "init_from_report_seed0": {k: reports[0][k] for k in ("loaded", "skipped", "new")} if reports else None,
            "setup": {"pretrain": f"cnn 5-class, digits 0-4, {args.pre_epochs} epochs",
                      "fine_tune": f"cnn 10-class head, digits 5-9, {args.shots} labelled/class, {args.epochs} epochs "
                                   f"of batch {args.batch}", "optimizer": optim, "schedule": "cosine (default)",
                      "unfreeze_at": args.unfreeze_at}}


def _plot_curves(runs: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, color in zip(runs, ("C0", "C3", "C2"), strict=True):
        curves = np.array([r["val_acc_by_epoch"] for r in runs[arm]])
        ep = np.arange(1, curves.shape[1] + 1)
        for c in curves:
            ax.plot(ep, c, color=color, lw=0.6, alpha=0.35)
        ax.plot(ep, curves.mean(0), color=color, lw=2, label=f"{arm} (mean of {len(curves)} seeds)")
    ax.axvline(args.unfreeze_at + 0.5, color="C2", ls=":", lw=1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy, digits 5-9")
    ax.set_title(f"cnn on digits 5-9, {args.shots} labels/class [{args.backend}]: pretrained on 0-4 vs scratch")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, png_bytes(fig, dpi=100))


def dann_part(args: argparse.Namespace, out: Path) -> dict:
    from dualml.train.dann import DANN, dann_fit, shifted_digits
    from dualml.zoo import CNNBody

    arms = {"source_only": dict(adapt=False), "dann": dict(adapt=True, lambda_max=1.0),
            "dann_lambda0.1": dict(adapt=True, lambda_max=0.1)}
    res: dict[str, list[dict]] = {a: [] for a in arms}
    for seed in args.seeds:
        dom = shifted_digits(seed)
        for arm, keys in arms.items():
            t0 = time.perf_counter()
            t = dann_fit(DANN(CNNBody(), 32), dom, args.backend, seed=seed, epochs=args.dann_epochs,
                         optimizer={"name": "adam", "lr": args.lr}, progress=False, **keys)
            res[arm].append({"seed": seed, "target_test_acc": t.metrics["test_acc"], "steps": t.metrics["steps"],
                             "seconds": round(time.perf_counter() - t0, 2)})
        print(f"seed {seed}: target accuracy " + ", ".join(f"{a} {res[a][-1]['target_test_acc']:.3f}" for a in arms),
              flush=True)
    summary = {a: {"mean": float(np.mean([r["target_test_acc"] for r in rs])),
                   "std": float(np.std([r["target_test_acc"] for r in rs]))} for a, rs in res.items()}
    _plot_dann(res, args, out / "dann.png")
    return {"runs": res, "summary": summary,
            "setup": {"source": "digits half A", "target": "digits half B rotated U(30, 45) degrees",
                      "epochs": args.dann_epochs, "batch": 64, "optimizer": {"name": "adam", "lr": args.lr},
                      "lambda": "lambda_max * (2 / (1 + exp(-10 p)) - 1)"}}


def _plot_dann(res: dict, args: argparse.Namespace, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4))
    arms = list(res)
    for i, a in enumerate(arms):
        accs = [r["target_test_acc"] for r in res[a]]
        ax.bar(i, np.mean(accs), yerr=np.std(accs), color=f"C{i}", alpha=0.7, capsize=4)
        ax.plot([i] * len(accs), accs, "k.", ms=6)
    ax.set_xticks(range(len(arms)), arms)
    ax.set_ylabel("target (rotated digits) test accuracy")
    ax.set_title(f"DANN vs source-only, {len(args.seeds)} seeds, {args.dann_epochs} epochs [{args.backend}]")
    fig.tight_layout()
    atomic_write(path, png_bytes(fig, dpi=100))


def cross_part(args: argparse.Namespace, out: Path) -> dict:
    other = [b for b in ("torch", "paddle") if b != args.backend][0]
    x, y = _digits()
    seed = args.seeds[0]
    pre = out / "runs" / f"pre-{args.backend}-seed{seed}"
    data = few_shot(x[y >= 5], y[y >= 5], args.shots, seed)
    accs = {}
    for be in (args.backend, other):
        t = dualml.fit(CNN(num_classes=10), data, be, seed=seed, batch_size=args.batch, epochs=args.epochs,
                       optimizer={"name": "adam", "lr": args.lr}, progress=False, init_from=f"{pre}/best")
        accs[be] = {"test_acc": t.metrics["test_acc"], "loaded": len(t.init_report.loaded),
                    "final_loss": t.history.steps[-1]["loss"]}
    print(f"cross-backend: pretrained on {args.backend}, fine-tuned: " + ", ".join(
        f"{b} {v['test_acc']:.3f} ({v['loaded']} tensors loaded)" for b, v in accs.items()), flush=True)
    return {"pretrained_on": args.backend, "fine_tuned": accs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backend", default="torch", choices=("torch", "paddle"))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--shots", type=int, default=10, help="labelled training images per class for the fine-tune")
    ap.add_argument("--epochs", type=int, default=20, help="fine-tune epochs (the same for every arm)")
    ap.add_argument("--pre-epochs", type=int, default=10)
    ap.add_argument("--unfreeze-at", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--dann-epochs", type=int, default=15)
    ap.add_argument("--out", default=str(ROOT / "reports" / "transfer"))
    ap.add_argument("--record", action="store_true", help="also write benchmarks/results/bench_transfer.json")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for b in ("torch", "paddle"):  # one thread each: the two frameworks share 2 cores here
        dualml.get_backend(b).set_threads(1)
    t0 = time.perf_counter()
    report = {"machine": machine_info(), "backend": args.backend, "seeds": args.seeds,
              "command": " ".join(["python", "benchmarks/bench_transfer.py", *sys.argv[1:]])}
    report.update({"fine_tune": fine_tune_part(args, out), "dann": dann_part(args, out),
                   "cross_backend": cross_part(args, out)})
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=2)
    atomic_write(out / "bench_transfer.json", text.encode())
    if args.record:  # the committed copy (reports/ is not tracked); the README shows these PNGs
        atomic_write(ROOT / "benchmarks" / "results" / "bench_transfer.json", text.encode())
        for name in ("transfer_curves.png", "dann.png"):
            atomic_write(ROOT / "benchmarks" / "results" / f"bench_transfer_{name}", (out / name).read_bytes())
    for part in ("fine_tune", "dann"):
        print(part, json.dumps(report[part]["summary"]))
    print(f"report: {out / 'bench_transfer.json'}, {out / 'transfer_curves.png'}, {out / 'dann.png'} "
          f"({report['seconds']} s)")


if __name__ == "__main__":
    main()
