"""``dualml ensemble``: build the ensemble `ensemble` (configs/ensemble/*.yaml) from members on either
backend, score it and export it as one ONNX file; prints where the report went.

The work is dualml.ensemble's; this file runs it and writes the report.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

from ..ensemble.pipeline import run_ensemble
from ..ensemble.report import write
from .log import keep_in, result, say

#: the one-line description in ``dualml --help``
HELP = 'build the ensemble `ensemble` (configs/ensemble/*.yaml) from members on either backend, export one ONNX'
#: config sections (or keys) ``dualml ensemble --help`` lists
KEYS = ('backend', 'seed', 'out_dir', 'data', 'trainer', 'ensemble')
SECTION = None
#: this command's config group: configs/ensemble/soft.yaml unless ``ensemble=NAME`` is given
GROUP_DEFAULTS = ("ensemble=soft",)


def cmd_ensemble(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml ensemble ensemble=NAME [ensemble.combiner=... trainer.max_steps=...]``."""
    out = Path(cfg.out_dir) / "ensemble" / str(cfg.ensemble.name)
    keep_in(out)
    report = run_ensemble(cfg, overrides, out)
    t = report["test"]
    if report["method"] == "gradient":
        say(f"ensemble {report['name']} (gradient boosting, {len(report['members'])} rounds): test MAE "
            f"{t['mae']:.4f}, round 1's member alone {report['gradient']['first_member_test_mae']:.4f}")
    else:
        say(f"ensemble {report['name']} ({report['method']}, {report['combiner']['kind']}): test accuracy "
            f"{t['acc']:.4f}, best member {report['best_member_test_acc']:.4f}; mean confidence "
            f"{t['mean_confidence']:.3f}, agreement {t['mean_agreement']:.3f}")
    if "bagging" in report:
        say(f"out-of-bag accuracy {report['bagging']['oob_accuracy']:.4f} vs test {t['acc']:.4f}")
    if "onnx" in report:
        say(f"ONNX Runtime vs in-process max abs diff {report['onnx']['verification']['max_abs']:.2e}")
    paths = write(report, out)
    onnx_file = f", {report['onnx']['file']}" if "onnx" in report else ""
    result(f"report: {', '.join(str(p) for p in paths)}{onnx_file} (members in {out / 'members'})")
    return 0 if report.get("onnx", {}).get("verification", {}).get("passed", True) else 1
