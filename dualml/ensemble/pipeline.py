"""``dualml ensemble``: get the members (load, train, bag or boost), fit the combiner on the validation
split, score everything on the test split, export one ONNX file and write the report. Regression data
goes to gradient boosting on residuals (``gradient.py``), scored with the masked forecast errors.

The split is the ensemble's (``data`` + ``seed``), shared by every member trained here, so the
validation split the combiner is fitted on and the test split it is scored on were seen by no member
in training. Members loaded from runs were split by their own run's seed: the report flags a member
whose run used another seed (its training rows may be in this test split). A run's data config is not
compared: a member trained on other data is the user's call (its class count is still checked).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DualmlError
from ..quiet import progress_bar
from .combine import Combiner, fit_combiner, hard_vote
from .members import Member, check_compatible, from_checkpoint, member_config, train_member
from .model import Ensemble
from .resample import bootstrap_rows, oob_scores, samme_step, weighted_rows
from .spec import check_ensemble


@dataclass
class Fitted:
    """What :func:`fit_members` produced: the members, and for bagging the train rows each saw, for
    boosting the SAMME rounds and alphas."""

    members: list[Member]
    rows: list[np.ndarray] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)
    alphas: list[float] = field(default_factory=list)


def _template(specs: list[dict[str, Any]], r: int) -> tuple[dict[str, Any], int]:
    """Member template of round ``r`` (the list is cycled) and its training seed (its own + the round:
    each round's member starts from different weights)."""
    spec = specs[r % len(specs)]
    return spec, int(spec.get("seed") or 0) + r


def fit_members(specs: Sequence[dict[str, Any]], dataset: Any, overrides: Sequence[str] = (), method: str = "vote",
                rounds: int | None = None, seed: int = 0, progress: bool = True) -> Fitted:
    """Members for ``method``: ``vote`` loads or trains each spec (seed: the spec's, else its index);
    ``bagging`` trains ``rounds`` members (default: one per spec, the list cycled) each on a bootstrap
    of the train split drawn from (``seed``, member); ``boosting`` runs SAMME for ``rounds`` rounds by
    weighted resampling of the train split. ``overrides`` are command-line settings every trained
    member's config starts from (``trainer.max_steps=50``...)."""
    specs = [dict(s) for s in specs]
    if method == "vote":
        # trained members come from runs and checkpoints first: a missing one fails before any training
        members: dict[int, Member] = {}
        for i, s in enumerate(specs):
            if s.get("model") is None:
                key = "run" if s.get("run") is not None else "checkpoint"
                members[i] = from_checkpoint(str(s[key]), s.get("backend"), key=f"ensemble.members[{i}].{key}")
        configs = {i: member_config(overrides, s, int(s["seed"]) if s.get("seed") is not None else i)
                   for i, s in enumerate(specs) if i not in members}
        for i, cfg in progress_bar(configs.items(), desc="ensemble members", unit="member", enabled=progress):
            members[i] = train_member(cfg, dataset, info={"index": i})
        return Fitted([members[i] for i in range(len(specs))])
    n = len(dataset.train.y)
    count = rounds or len(specs)
    if method == "bagging":
        fitted = Fitted([])
        for r in progress_bar(range(count), desc="bagging members", unit="member", enabled=progress):
            spec, s = _template(specs, r)
            rows = bootstrap_rows(n, seed, r)
            fitted.members.append(train_member(member_config(overrides, spec, s), dataset, rows,
                                               info={"index": r, "bootstrap": {"seed": [seed, r], "unique_rows":
                                                                               int(len(np.unique(rows)))}}))
            fitted.rows.append(rows)
        return fitted
    return _boost(specs, dataset, overrides, count, seed, progress)


def _boost(specs: list[dict[str, Any]], dataset: Any, overrides: Sequence[str], count: int, seed: int,
           progress: bool) -> Fitted:
    """SAMME with neural members, boosting by resampling (see ``resample.py`` for why)."""
    y = dataset.train.y
    k = int(dataset.num_classes)
    w = np.full(len(y), 1.0 / len(y))
    fitted = Fitted([])
    votes: list[np.ndarray] = []
    for r in progress_bar(range(count), desc="boosting rounds", unit="round", enabled=progress):
        spec, s = _template(specs, r)
        rows = weighted_rows(w, seed, r)
        m = train_member(member_config(overrides, spec, s), dataset, rows,
                         info={"index": r, "resample": {"seed": [seed, r], "unique_rows": int(len(np.unique(rows)))}})
        p = m.probabilities(dataset.train.x)[None]
        wrong = p[0].argmax(axis=1) != y
        step = samme_step(w, wrong, k)
        row = {"round": r + 1, "member": m.label, "weighted_error": step.error,
               "member_train_error": float(wrong.mean()), "alpha": step.alpha, "kept": step.alpha > 0}
        if step.alpha > 0:
            fitted.members.append(m)
            fitted.alphas.append(step.alpha)
            votes.append(p[0])
            a = np.array(fitted.alphas)
            row["ensemble_train_error"] = float((hard_vote(np.stack(votes), a / a.sum()).argmax(1) != y).mean())
        fitted.rounds.append(row)
        w = step.weights
        if step.stop:
            break
    if not fitted.members:
        raise DualmlError(f"boosting stopped at round 1: the member's weighted train error "
                          f"{fitted.rounds[0]['weighted_error']:.3f} is no better than chance (1 - 1/{k}); train "
                          "the members longer (trainer.epochs / trainer.max_steps)")
    return fitted


def run_ensemble(cfg: Any, overrides: Sequence[str], out: str | Path, progress: bool = True) -> dict[str, Any]:
    """Everything ``dualml ensemble`` does except printing: returns the report (also written by the CLI)."""
    from omegaconf import OmegaConf

    from ..train.data import load_dataset

    e = check_ensemble(OmegaConf.to_container(cfg.ensemble, resolve=True))
    out = Path(out)
    ds = load_dataset(OmegaConf.to_container(cfg.data, resolve=True), seed=int(cfg.seed))
    want = "regression" if e["method"] == "gradient" else "classification"
    if ds.task != want:
        raise ConfigError(f"data.name={cfg.data.name} ({ds.task}) is not allowed with ensemble.method={e['method']}; "
                          f"allowed: {want} data" + (" (data=traffic)" if want == "regression" else
                                                     " (or ensemble=gradient: boosting on residuals)"))
    specs = [{**s, "backend": s.get("backend") or (None if s.get("model") is None else str(cfg.backend))}
             for s in e["members"]]
    if e["method"] == "gradient":
        return _run_gradient(e, ds, specs, overrides, int(cfg.seed), out, progress)
    fitted = fit_members(specs, ds, overrides, e["method"], e["rounds"], int(cfg.seed), progress)
    members = fitted.members
    check_compatible(members, int(ds.num_classes))
    val = np.stack([m.probabilities(ds.val.x) for m in members])
    if e["method"] == "boosting":
        a = np.array(fitted.alphas)
        combiner = Combiner("samme", a / a.sum())
    else:
        combiner = fit_combiner(e["combiner"], val, ds.val.y, weights=e["weights"], eta=float(e["eta"]),
                                seed=int(cfg.seed))
    ens = Ensemble(members, combiner)
    test = ens.member_probs(ds.test.x)
    rows = []
    for i, m in enumerate(members):
        rows.append({"index": i, "name": m.label, "model": m.model_name, "backend": m.backend,
                     **{k: v for k, v in m.info.items() if k not in ("index",)},
                     "val_acc": float((val[i].argmax(1) == ds.val.y).mean()),
                     "test_acc": float((test[i].argmax(1) == ds.test.y).mean())})
    flags = [f"member {r['index']} ({r['name']}) was trained with seed {r.get('seed')}, the ensemble splits with "
             f"seed {cfg.seed}: its training rows may be in this test split" for r in rows
             if r.get("source", "trained") != "trained" and r.get("seed") != int(cfg.seed)]
    report: dict[str, Any] = {
        "name": e["name"], "method": e["method"], "data": ds.name, "seed": int(cfg.seed),
        "split": {"train": len(ds.train.y), "val": len(ds.val.y), "test": len(ds.test.y)},
        "members": rows, "combiner": combiner.describe(),
        "val": ens.score(ds.val.x, ds.val.y), "test": ens.score(ds.test.x, ds.test.y),
        "best_member_test_acc": max(r["test_acc"] for r in rows), "notes": flags,
    }
    report["gain_over_best_member"] = report["test"]["acc"] - report["best_member_test_acc"]
    if fitted.rows:
        train = np.stack([m.probabilities(ds.train.x) for m in members])
        oob = oob_scores(train, fitted.rows, ds.train.y)
        report["bagging"] = {**oob, "test_acc": report["test"]["acc"],
                             "oob_minus_test": oob["oob_accuracy"] - report["test"]["acc"]}
    if fitted.rounds:
        report["boosting"] = {"resampling": "boosting by resampling: each round trains on rows drawn with the "
                                            "SAMME sample weights (the Trainer's loss takes no sample weights)",
                              "rounds": fitted.rounds}
    out.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(members):
        m.save(out / "members" / f"m{i}-{m.model_name}-{m.backend}.safetensors")
    if e["export"]:
        report["onnx"] = ens.export(out / "ensemble.onnx", ds.test.x[:64], metadata={"ensemble": e["name"]})
    return report


def _run_gradient(e: dict[str, Any], ds: Any, specs: list[dict[str, Any]], overrides: Sequence[str], seed: int,
                  out: Path, progress: bool) -> dict[str, Any]:
    """``method=gradient``: boosting on residuals (``gradient.py``), scored with the masked errors of a
    forecast (targets 0 = missing readings are left out), beside the data's no-model baselines."""
    from ..train.metrics import horizon_metrics
    from .gradient import boost

    b = boost(specs, ds, overrides, e["rounds"] or len(specs), float(e["shrinkage"]), progress)
    ens = Ensemble(b.members, b.combiner())
    pred = ens.predict_proba(ds.test.x).reshape(ds.test.y.shape)
    h = horizon_metrics(pred, ds.test.y) if ds.test.y.ndim == 3 else {"all": horizon_metrics(
        pred[:, None], ds.test.y[:, None])["all"]}
    members = [{"index": i, "name": m.label, "model": m.model_name, "backend": m.backend, **m.info}
               for i, m in enumerate(b.members)]
    report: dict[str, Any] = {
        "name": e["name"], "method": "gradient", "data": ds.name, "seed": seed,
        "split": {"train": len(ds.train.y), "val": len(ds.val.y), "test": len(ds.test.y)},
        "members": members, "combiner": ens.combiner.describe(),
        "test": {**h["all"], "horizons": {k: v for k, v in h.items() if k != "all"}},
        "gradient": {"shrinkage": float(e["shrinkage"]), "rounds": b.rounds,
                     "first_member_test_mae": b.rounds[0]["test_mae"]},
        "baselines": ds.baselines, "notes": []}
    out.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(b.members):
        m.save(out / "members" / f"m{i}-{m.model_name}-{m.backend}.safetensors")
    if e["export"]:
        report["onnx"] = ens.export(out / "ensemble.onnx", ds.test.x[:64], metadata={"ensemble": e["name"]})
    return report
