"""The ensemble report as markdown and PNGs, written atomically beside report.json."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..checkpoint import atomic_write_bytes, atomic_write_text, png_bytes


def markdown(r: dict[str, Any]) -> str:
    if r["method"] == "gradient":
        return gradient_markdown(r)
    t = r["test"]
    lines = [f"# Ensemble `{r['name']}` ({r['method']}, combiner {r['combiner']['kind']}) on {r['data']}", "",
             f"split seed {r['seed']}: train {r['split']['train']}, val {r['split']['val']}, test {r['split']['test']}",
             "", "| member | source | val acc | test acc | weight |", "|---|---|---|---|---|"]
    weights = r["combiner"].get("weights")
    for m in r["members"]:
        w = f"{weights[m['index']]:.3f}" if weights else "-"
        lines.append(f"| {m['index']}: {m['name']} | {m.get('source', 'trained')} (seed {m.get('seed')}) | "
                     f"{m['val_acc']:.4f} | {m['test_acc']:.4f} | {w} |")
    lines += ["", f"**ensemble test accuracy {t['acc']:.4f}** (best member {r['best_member_test_acc']:.4f}, "
              f"{r['gain_over_best_member']:+.4f}); test log-loss {t['log_loss']:.4f}",
              f"mean confidence {t['mean_confidence']:.3f}, mean agreement {t['mean_agreement']:.3f}; unanimous on "
              f"{t['unanimous_share']:.1%} of the test rows (accuracy {t['acc_unanimous']:.4f}), split votes "
              f"accuracy {t['acc_split_vote']:.4f}"]
    if "bagging" in r:
        b = r["bagging"]
        lines += ["", f"bagging: out-of-bag accuracy {b['oob_accuracy']:.4f} on {b['oob_rows']}/{b['rows']} train rows "
                  f"({b['mean_members_per_row']:.2f} members per row) vs test accuracy {b['test_acc']:.4f} "
                  f"(difference {b['oob_minus_test']:+.4f})"]
    if "boosting" in r:
        lines += ["", f"boosting: {r['boosting']['resampling']}", "",
                  "| round | member | weighted error | member train error | alpha | ensemble train error |",
                  "|---|---|---|---|---|---|"]
        for row in r["boosting"]["rounds"]:
            ens = row.get("ensemble_train_error")
            lines.append(f"| {row['round']} | {row['member']} | {row['weighted_error']:.4f} | "
                         f"{row['member_train_error']:.4f} | {row['alpha']:.3f} | "
                         f"{'-' if ens is None else f'{ens:.4f}'} |")
    lines += onnx_lines(r)
    lines += [f"note: {n}" for n in r.get("notes", [])]
    return "\n".join(lines) + "\n"


def gradient_markdown(r: dict[str, Any]) -> str:
    """Gradient boosting: the running ensemble's masked errors after each round, then the baselines."""
    g = r["gradient"]
    lines = [f"# Ensemble `{r['name']}` (gradient boosting on residuals, shrinkage {g['shrinkage']}) on {r['data']}",
             "", f"split seed {r['seed']}: train {r['split']['train']}, val {r['split']['val']}, test "
             f"{r['split']['test']}; masked errors (missing readings left out) of the ensemble after each round", "",
             "| round | member | fits | train MAE | val MAE | test MAE | test RMSE |", "|---|---|---|---|---|---|---|"]
    for row, m in zip(g["rounds"], r["members"], strict=True):
        lines.append(f"| {row['round']} | {row['member']} | {m['fits']} | {row['train_mae']:.4f} | "
                     f"{row['val_mae']:.4f} | {row['test_mae']:.4f} | {row['test_rmse']:.4f} |")
    t = r["test"]
    lines += ["", f"**ensemble test MAE {t['mae']:.4f}** (RMSE {t['rmse']:.4f}, MAPE {t['mape']:.2f}%); round 1's "
              f"member alone {g['first_member_test_mae']:.4f}"]
    for name, b in (r.get("baselines") or {}).items():
        lines.append(f"baseline {name}: test MAE {b['all']['mae']:.4f}" if "all" in b else f"baseline {name}")
    lines += onnx_lines(r)
    return "\n".join(lines) + "\n"


def onnx_lines(r: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "onnx" in r:
        o = r["onnx"]
        lines += ["", f"ONNX: {o['file']} (opset {o['opset']}, {o['bytes']} bytes, {len(o['members'])} members); "
                  f"ONNX Runtime vs in-process outputs max abs diff {o['verification']['max_abs']:.2e} "
                  f"({'within' if o['verification']['passed'] else 'OVER'} the tolerance)"]
    return lines


def plot_boosting(rounds: list[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Training error by round: each member's weighted error and the ensemble's error so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [r["round"] for r in rounds]
    ax.plot(x, [r["weighted_error"] for r in rounds], "o-", label="member weighted error")
    ax.plot(x, [r["member_train_error"] for r in rounds], "s--", label="member train error (unweighted)")
    kept = [r for r in rounds if "ensemble_train_error" in r]
    ax.plot([r["round"] for r in kept], [r["ensemble_train_error"] for r in kept], "o-", lw=2,
            label="ensemble train error")
    ax.set_xlabel("boosting round")
    ax.set_ylabel("error")
    ax.set_title(title or "SAMME training error by round")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write_bytes(path, png_bytes(fig, dpi=100))


def plot_members(r: dict[str, Any], path: Path) -> Path:
    """Test accuracy of every member beside the ensemble's."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [m["name"] for m in r["members"]] + ["ensemble"]
    accs = [m["test_acc"] for m in r["members"]] + [r["test"]["acc"]]
    fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names)), 3.6))
    ax.bar(range(len(names)), accs, color=["C0"] * (len(names) - 1) + ["C3"])
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylim(max(0.0, min(accs) - 0.05), 1.0)
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{r['name']}: members vs ensemble ({r['combiner']['kind']})")
    fig.tight_layout()
    return atomic_write_bytes(path, png_bytes(fig, dpi=100))


def plot_gradient(r: dict[str, Any], path: Path) -> Path:
    """Masked MAE of the running ensemble by round (train, val, test), the baselines as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = r["gradient"]["rounds"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    x = [row["round"] for row in rounds]
    for split in ("train", "val", "test"):
        ax.plot(x, [row[f"{split}_mae"] for row in rounds], "o-", label=f"{split} MAE")
    for i, (name, b) in enumerate((r.get("baselines") or {}).items()):
        if "all" in b:
            ax.axhline(b["all"]["mae"], ls="--", color=f"C{i + 3}", label=f"{name} (test)")
    ax.set_xlabel("boosting round")
    ax.set_ylabel("masked MAE")
    ax.set_title(f"{r['name']}: gradient boosting on residuals")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return atomic_write_bytes(path, png_bytes(fig, dpi=100))


def write(r: dict[str, Any], out: Path) -> list[Path]:
    """report.json, report.md and the PNGs in ``out``: members.png, plus boosting.png (SAMME); gradient
    boosting: gradient.png instead of members.png (a residual member has no score of its own)."""
    paths = [atomic_write_text(out / "report.json", json.dumps(r, indent=2, default=str)),
             atomic_write_text(out / "report.md", markdown(r))]
    if r["method"] == "gradient":
        return [*paths, plot_gradient(r, out / "gradient.png")]
    paths.append(plot_members(r, out / "members.png"))
    if "boosting" in r:
        paths.append(plot_boosting(r["boosting"]["rounds"], out / "boosting.png"))
    return paths
