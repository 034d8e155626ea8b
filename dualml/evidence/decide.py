"""``dualml decide``: the weighted decision matrix that picks a backend, from evidence where there is some.

The seeds chose their framework with a matrix of four criteria, weights 0.30/0.25/0.25/0.20, scores
1..5 and a threshold of 3.5, all typed in by hand. Here the matrix lives in
``configs/decision/<name>.yaml`` and only the criteria that are judgements (team familiarity,
community) are typed in; the measurable ones are computed from the ``dualml bench`` report, so the
decision moves when the measurements move and says which measurements moved it.

Scoring (every score is in 1..5; total = sum of weight * score; pick = the highest total if it is at
or above the threshold, else none; an exact tie goes to the backend listed first):

* ``performance`` (mapping ``performance``): for each of ``train_step_ms``, ``eager_ms_b1`` and
  ``eager_ms_b64`` the backend's median time ``t`` is compared with the fastest backend's ``t_min``:
  ``score = clip(5 - 2 * log2(t / t_min), 1, 5)`` (2 points per doubling, so 1.41x slower = 4, 2x = 3,
  4x or worse = 1), then averaged. A log scale because "twice as slow" should cost the same whether
  the step takes 1 ms or 1 s, and it is continuous, so a small change in timing is a small change in
  score.
* ``deployment`` (mapping ``deployment``): ``1 + points``, up to 4 points: 1.00 if the ONNX export
  works (``export.ok``); 0.75 for ORT-vs-own-eager fidelity (``export.ort_max_abs``: full at <= 1e-5,
  none at >= 1e-3, linear in log10 between); 0.25 for cross-backend ONNX parity
  (``parity.onnx_max_abs``, same ramp, shared, only for a backend whose export works); 0.50 each for
  INT8 ``dynamic`` and ``static``; 1.00 for serving latency (``ort_ms_b1`` and ``ort_ms_b64`` scored
  as in ``performance``, averaged, 1..5 mapped onto 0..1; 0 without an export). ORT latency is
  scored here rather than under performance because it measures the exported graph, i.e. the
  deployment path, and counting it twice would overweight it.
* ``source: config`` criteria take their per-backend scores from the YAML (validated to 1..5).

Sensitivity: totals are linear in any one weight when the other weights are rescaled
proportionally to keep the sum 1 (``T_b(x) = A_b + x * (s_bk - A_b)``, ``A_b`` the weighted mean of
the other criteria), so the weights at which the outcome changes (two totals cross, or a total
crosses the threshold) are solved for exactly, and the nearest one that really changes the pick is
reported per criterion.

``backend=auto`` (``dualml.cli.auto.resolve_auto``, run by the command line before any command) reads
the latest ``<out_dir>/decide/decision.json`` and re-decides when it is missing or stale (:func:`stale`:
matrix changed, bench report gone or re-run, measured for another model or data), running the
bench when no report exists. This module imports no framework and runs no benchmark.
"""
from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import png_bytes
from ..errors import ConfigError, DualmlError, check_keys, did_you_mean, not_allowed

#: criterion -> the mapping that measures it (None: a judgement, only ``source: config``)
CRITERIA: dict[str, str | None] = {"team_familiarity": None, "deployment": "deployment",
                                   "performance": "performance", "community": None}
SOURCES = ("config", "measured")
PERF_METRICS = ("train_step_ms", "eager_ms_b1", "eager_ms_b64")
SERVING_METRICS = ("ort_ms_b1", "ort_ms_b64")
#: deployment component -> points (sum 4, so 1 + points spans 1..5)
DEPLOY_POINTS = {"export_ok": 1.0, "ort_fidelity": 0.75, "onnx_parity": 0.25, "int8_dynamic": 0.5,
                 "int8_static": 0.5, "serving_latency": 1.0}
FULL_AT, NONE_AT = 1e-5, 1e-3   # max-abs ramp for the fidelity points
WEIGHT_TOL = 1e-6
EPS = 1e-9                      # totals this close to the threshold count as reaching it


# ----------------------------------------------------------------------------- the matrix config
@dataclass
class Criterion:
    name: str
    weight: float
    source: str
    scores: dict[str, float] | None = None
    mapping: str | None = None


@dataclass
class Matrix:
    name: str
    threshold: float
    backends: list[str]
    criteria: list[Criterion]

    @property
    def weights(self) -> dict[str, float]:
        return {c.name: c.weight for c in self.criteria}

    def as_config(self) -> dict[str, Any]:
        """The validated matrix as a decision stores it (to tell later whether the matrix changed)."""
        return {"name": self.name, "threshold": self.threshold, "backends": self.backends,
                "criteria": {c.name: {k: v for k, v in asdict(c).items() if k != "name"} for c in self.criteria}}


def _number(where: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ConfigError(f"{where}={v!r} is not allowed; expected a number")
    return float(v)


def _plain(spec: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, (DictConfig, ListConfig)) else spec


def parse_matrix(spec: Any) -> Matrix:
    """Validate the ``decision`` config (a DictConfig or dict) and return it; the first problem is one
    ``ConfigError`` naming the key, the value and what is allowed, before anything is measured."""
    from ..backend import available_backends

    raw = _plain(spec)
    if not isinstance(raw, dict):
        raise ConfigError("decision must be a mapping with threshold, backends and criteria")
    check_keys("decision", raw, ("name", "threshold", "backends", "criteria"))
    threshold = _number("decision.threshold", raw.get("threshold"))
    if not 1 <= threshold <= 5:
        raise ConfigError(f"decision.threshold={threshold:g} is outside 1-5 (the score range)")
    backends = raw.get("backends")
    known = available_backends()
    if not isinstance(backends, list) or not backends or len(set(backends)) != len(backends):
        raise ConfigError(f"decision.backends={backends!r} is not allowed; expected a list of distinct backends "
                          f"from: {', '.join(sorted(known))}")
    for b in backends:
        if b not in known:
            raise ConfigError(not_allowed("decision.backends entry", b, known))
    criteria_raw = raw.get("criteria")
    if not isinstance(criteria_raw, dict) or not criteria_raw:
        raise ConfigError(f"decision.criteria must map criterion names to {{weight, source, ...}}; "
                          f"allowed criteria: {', '.join(CRITERIA)}")
    criteria = [_criterion(name, c, backends) for name, c in criteria_raw.items()]
    total = sum(c.weight for c in criteria)
    if abs(total - 1.0) > WEIGHT_TOL:
        listed = ", ".join(f"{c.name} {c.weight:g}" for c in criteria)
        raise ConfigError(f"decision weights sum to {total:.6g}, not 1 (tolerance {WEIGHT_TOL:g}): {listed}; "
                          "change them so they add up to 1")
    return Matrix(str(raw.get("name") or "custom"), threshold, list(backends), criteria)


def _criterion(name: str, c: Any, backends: list[str]) -> Criterion:
    where = f"decision.criteria.{name}"
    if name not in CRITERIA:
        raise ConfigError(f"unknown criterion '{name}'{did_you_mean(name, CRITERIA)}; allowed criteria: "
                          f"{', '.join(CRITERIA)}")
    if not isinstance(c, dict):
        raise ConfigError(f"{where} must be a mapping with weight and source")
    check_keys(where, c, ("weight", "source", "scores", "mapping"))
    weight = _number(f"{where}.weight", c.get("weight"))
    if not 0 <= weight <= 1:
        raise ConfigError(f"{where}.weight={weight:g} is outside 0-1")
    source = c.get("source")
    if source not in SOURCES:
        raise ConfigError(not_allowed(f"{where}.source", source, SOURCES))
    if source == "measured":
        allowed = [CRITERIA[name]] if CRITERIA[name] else []
        if not allowed:
            raise ConfigError(f"{where}.source=measured is not allowed: {name} is a judgement no bench measurement "
                              f"maps to; give source: config and scores per backend (measured criteria: "
                              f"{', '.join(k for k, v in CRITERIA.items() if v)})")
        mapping = c.get("mapping", allowed[0])
        if mapping not in allowed:
            raise ConfigError(not_allowed(f"{where}.mapping", mapping, allowed))
        if c.get("scores") is not None:
            raise ConfigError(f"{where} is measured, so it takes no scores; use source: config to score it by hand")
        return Criterion(name, weight, source, mapping=mapping)
    if c.get("mapping") is not None:
        raise ConfigError(f"{where}.mapping is only for source: measured")
    scores = c.get("scores")
    if not isinstance(scores, dict):
        raise ConfigError(f"{where}.scores must map each backend ({', '.join(backends)}) to a score 1-5")
    for b in scores:
        if b not in backends:
            raise ConfigError(f"{where}.scores.{b} is not allowed: {b} is not in decision.backends "
                              f"({', '.join(backends)})")
    out = {}
    for b in backends:
        if b not in scores:
            raise ConfigError(f"{where}.scores has no score for {b}; every backend in decision.backends needs one")
        v = _number(f"{where}.scores.{b}", scores[b])
        if not 1 <= v <= 5:
            raise ConfigError(f"{where}.scores.{b}={v:g} is outside 1-5 (criterion {name}, backend {b})")
        out[b] = v
    return Criterion(name, weight, source, scores=out)


# ----------------------------------------------------------------------------- measurements -> scores
def _key(report: Mapping[str, Any], dotted: str, file: str, criterion: str) -> Any:
    node: Any = report
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise DualmlError(f"bench report {file} has no '{dotted}' (needed by measured criterion {criterion}); "
                              "re-run `dualml bench` to write a complete report")
        node = node[part]
    return node


def _time(report: Mapping[str, Any], dotted: str, file: str, criterion: str, required: bool) -> float | None:
    stats = _key(report, dotted, file, criterion)
    if stats is None and not required:
        return None
    v = _key(report, f"{dotted}.median_ms", file, criterion) if stats is not None else None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
        raise DualmlError(f"bench report {file}: '{dotted}.median_ms' is {v!r}, not a positive time "
                          f"(needed by measured criterion {criterion})")
    return float(v)


def speed_scores(times: Mapping[str, float | None]) -> dict[str, float | None]:
    """``clip(5 - 2 * log2(t / fastest), 1, 5)`` per backend; a backend without a time gets None."""
    known = [t for t in times.values() if t is not None]
    if not known:
        return {b: None for b in times}
    fastest = min(known)
    return {b: None if t is None else min(5.0, max(1.0, 5.0 - 2.0 * math.log2(t / fastest)))
            for b, t in times.items()}


def fidelity(max_abs: float | None) -> float:
    """1 at <= 1e-5, 0 at >= 1e-3 (or unknown), linear in log10 between: a share of the points."""
    if max_abs is None or isinstance(max_abs, bool) or not isinstance(max_abs, (int, float)) \
            or not math.isfinite(max_abs):
        return 0.0
    if max_abs <= FULL_AT:
        return 1.0
    if max_abs >= NONE_AT:
        return 0.0
    return (math.log10(NONE_AT) - math.log10(max_abs)) / (math.log10(NONE_AT) - math.log10(FULL_AT))


Scored = tuple[dict[str, float], dict[str, dict[str, Any]]]


def performance(report: Mapping[str, Any], backends: list[str], file: str) -> Scored:
    """Mean over PERF_METRICS of each backend's speed score; evidence holds the times and ratios."""
    scores: dict[str, list[float]] = {b: [] for b in backends}
    evidence: dict[str, dict[str, Any]] = {b: {} for b in backends}
    for metric in PERF_METRICS:
        times = {b: _time(report, f"backends.{b}.{metric}", file, "performance", True) for b in backends}
        fastest = min(t for t in times.values() if t is not None)
        for b, s in speed_scores(times).items():
            scores[b].append(s)
            evidence[b][metric] = {"median_ms": times[b], "x_fastest": times[b] / fastest, "score": s}
    return {b: sum(v) / len(v) for b, v in scores.items()}, evidence


def deployment(report: Mapping[str, Any], backends: list[str], file: str) -> Scored:
    """``1 + points`` (DEPLOY_POINTS); evidence holds each component's value and points."""
    crit = "deployment"
    parity = _key(report, "parity.onnx_max_abs", file, crit)
    facts: dict[str, dict[str, Any]] = {}
    for b in backends:
        ok = _key(report, f"backends.{b}.export.ok", file, crit) is True
        facts[b] = {"export_ok": ok, "ort_fidelity": _key(report, f"backends.{b}.export.ort_max_abs", file, crit),
                    "onnx_parity": parity,
                    "int8_dynamic": _key(report, f"backends.{b}.int8.dynamic", file, crit) is True,
                    "int8_static": _key(report, f"backends.{b}.int8.static", file, crit) is True}
    serving = {b: [] for b in backends}
    for metric in SERVING_METRICS:
        times = {b: _time(report, f"backends.{b}.{metric}", file, crit, False) for b in backends}
        times = {b: t if facts[b]["export_ok"] else None for b, t in times.items()}
        for b, s in speed_scores(times).items():
            serving[b].append(1.0 if s is None else s)
            facts[b][metric + ".median_ms"] = times[b]
    scores, evidence = {}, {}
    for b in backends:
        f, ok = facts[b], facts[b]["export_ok"]
        share = {"export_ok": float(ok), "ort_fidelity": fidelity(f["ort_fidelity"]) if ok else 0.0,
                 "onnx_parity": fidelity(parity) if ok else 0.0, "int8_dynamic": float(f["int8_dynamic"]),
                 "int8_static": float(f["int8_static"]),
                 "serving_latency": (sum(serving[b]) / len(serving[b]) - 1.0) / 4.0}
        points = {k: DEPLOY_POINTS[k] * share[k] for k in DEPLOY_POINTS}
        scores[b] = 1.0 + sum(points.values())
        evidence[b] = {k: {"value": f.get(k), "points": points[k], "max": DEPLOY_POINTS[k]} for k in DEPLOY_POINTS}
        evidence[b]["serving_latency"]["value"] = {m: f[m + ".median_ms"] for m in SERVING_METRICS}
    return scores, evidence


MAPPINGS: dict[str, Callable[[Mapping[str, Any], list[str], str], Scored]] = {
    "performance": performance, "deployment": deployment}


# ----------------------------------------------------------------------------- totals, pick, sensitivity
def choose(totals: Mapping[str, float], threshold: float, order: list[str]) -> str | None:
    """The highest total at or above the threshold (a tie goes to the first in ``order``), else None."""
    best = max(order, key=lambda b: totals[b])
    return best if totals[best] >= threshold - EPS else None


def totals_for(weights: Mapping[str, float], scores: Mapping[str, Mapping[str, float]],
               backends: list[str]) -> dict[str, float]:
    """sum of weight * score per backend (the only place totals are formed, so tests can recompute them)."""
    return {b: sum(w * scores[c][b] for c, w in weights.items()) for b in backends}


def _first_change(bounds: list[float], outcome: Callable[[float], str | None],
                  current: str | None) -> dict[str, Any] | None:
    """Walk the intervals between outcome-change candidates; the first whose inside differs from the
    current outcome starts at the flip point."""
    for lo, hi in zip(bounds, bounds[1:]):
        if lo == hi:
            continue
        new = outcome((lo + hi) / 2)
        if new != current:
            return {"weight": lo, "outcome": new}
    return None


def sensitivity(weights: Mapping[str, float], scores: Mapping[str, Mapping[str, float]], threshold: float,
                backends: list[str]) -> list[dict[str, Any]]:
    """Per criterion, the nearest weight (others rescaled proportionally) that changes the outcome,
    solved from the linear totals; ``up``/``down`` are the nearest changes in each direction."""
    names = list(weights)
    current = choose(totals_for(weights, scores, backends), threshold, backends)
    out = []
    for k in names:
        w = weights[k]
        others = [j for j in names if j != k]
        if not others:
            out.append({"criterion": k, "weight": w, "up": None, "down": None, "nearest": None,
                        "text": f"{k} is the only criterion; its weight cannot change"})
            continue
        rest = 1.0 - w
        share = {j: (weights[j] / rest if rest > 1e-12 else 1.0 / len(others)) for j in others}
        base = {b: sum(share[j] * scores[j][b] for j in others) for b in backends}
        slope = {b: scores[k][b] - base[b] for b in backends}

        def outcome(x: float, base: dict = base, slope: dict = slope) -> str | None:
            return choose({b: base[b] + x * slope[b] for b in backends}, threshold, backends)

        cands = {(threshold - base[b]) / slope[b] for b in backends if slope[b] != 0}
        cands |= {(base[b] - base[a]) / (slope[a] - slope[b]) for a in backends for b in backends
                  if a < b and slope[a] != slope[b]}
        up = _first_change([w, *sorted(c for c in cands if w < c < 1), 1.0], outcome, current) if w < 1 else None
        down = _first_change([w, *sorted((c for c in cands if 0 < c < w), reverse=True), 0.0], outcome, current) \
            if w > 0 else None
        found = [c for c in (up, down) if c is not None]
        nearest = min(found, key=lambda c: abs(c["weight"] - w)) if found else None
        out.append({"criterion": k, "weight": w, "up": up, "down": down, "nearest": nearest,
                    "text": _describe(k, w, nearest, current, threshold)})
    return out


def _describe(name: str, w: float, change: dict[str, Any] | None, current: str | None, threshold: float) -> str:
    if change is None:
        return f"no change of the {name} weight (0..1) changes the pick"
    x, new = change["weight"], change["outcome"]
    what = (f"leaves none at or above {threshold:g}" if new is None
            else f"makes {new} the pick" if current is None else f"flips to {new}")
    return f"{name} weight {w:.3f} -> {x:.3f} ({x - w:+.3f}) {what}"


# ----------------------------------------------------------------------------- bench report
def bench_file(cfg: Any) -> Path:
    """``decide.bench`` if given (``latest``: the newest report of any model), else the report
    ``dualml bench`` writes for ``model``: the evidence should come from the model being decided for."""
    from omegaconf import OmegaConf

    given = OmegaConf.select(cfg, "decide.bench")
    if given == "latest":
        return Path(cfg.out_dir) / "bench" / "latest.json"
    return Path(given) if given else Path(cfg.out_dir) / "bench" / str(cfg.model.name) / "report.json"


def load_bench(path: Path) -> dict[str, Any]:
    """The bench report as a dict; a broken file is a one-line error telling to re-run the bench."""
    try:
        report = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DualmlError(f"bench report {path} is not readable JSON ({exc}); re-run `dualml bench`") from exc
    if not isinstance(report, dict):
        raise DualmlError(f"bench report {path} is not a JSON object; re-run `dualml bench`")
    return report


# ----------------------------------------------------------------------------- deciding
def evaluate(matrix: Matrix, bench: Mapping[str, Any] | None, file: str | None) -> dict[str, Any]:
    """Scores, totals, pick and sensitivity for ``matrix``; measured criteria read ``bench``."""
    scores: dict[str, dict[str, float]] = {}
    evidence: dict[str, Any] = {}
    for c in matrix.criteria:
        if c.source == "config":
            scores[c.name] = dict(c.scores or {})
            continue
        if bench is None:
            raise DualmlError(f"criterion {c.name} is measured but there is no bench report; run `dualml bench`")
        scores[c.name], evidence[c.name] = MAPPINGS[c.mapping](bench, matrix.backends, str(file))
    weights = matrix.weights
    totals = totals_for(weights, scores, matrix.backends)
    pick = choose(totals, matrix.threshold, matrix.backends)
    rows = [{"criterion": c.name, "weight": c.weight, "source": c.source, "mapping": c.mapping,
             "scores": scores[c.name], "weighted": {b: c.weight * scores[c.name][b] for b in matrix.backends}}
            for c in matrix.criteria]
    return {"matrix": matrix.name, "threshold": matrix.threshold, "backends": matrix.backends, "rows": rows,
            "totals": totals, "pick": pick, "reason": reason(totals, pick, matrix.threshold, matrix.backends),
            "sensitivity": sensitivity(weights, scores, matrix.threshold, matrix.backends),
            "evidence": evidence, "config": matrix.as_config()}


def reason(totals: Mapping[str, float], pick: str | None, threshold: float, backends: list[str]) -> str:
    """``torch 4.12 vs paddle 3.58, threshold 3.5`` (highest first), or why none qualifies."""
    listed = " vs ".join(f"{b} {totals[b]:.2f}" for b in sorted(backends, key=lambda b: -totals[b]))
    return f"{listed}, threshold {threshold:g}" + (", none reaches it" if pick is None else "")


def decide(cfg: Any, run_bench: Callable[[Any, Path], None] | None = None) -> dict[str, Any]:
    """Validate the matrix, find the bench report when a criterion is measured, score it. A missing report
    is made by ``run_bench(cfg, path)`` when the caller passes one (the command line does:
    ``dualml.cli.auto.run_bench``) and ``decide.run_bench`` allows it; this module never runs a benchmark
    itself, so it depends on the bench report's schema only, not on the code that measures."""
    from omegaconf import OmegaConf

    matrix = parse_matrix(cfg.decision)
    measured = [c.name for c in matrix.criteria if c.source == "measured"]
    path, bench = bench_file(cfg), None
    if measured:
        if not path.is_file():
            if (OmegaConf.select(cfg, "decide.bench") or not OmegaConf.select(cfg, "decide.run_bench")
                    or run_bench is None):
                raise DualmlError(f"no bench report at {path}, which the measured criteria ({', '.join(measured)}) "
                                  f"need; run `dualml bench model={cfg.model.name}` or set decide.bench=FILE")
            run_bench(cfg, path)
        bench = load_bench(path)
    decision = evaluate(matrix, bench, str(path) if bench is not None else None)
    decision["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    decision["bench"] = None if bench is None else {
        "path": str(path), "created": bench.get("created"), "model": bench.get("model"),
        "data": bench.get("data"), "repeats": bench.get("repeats"), "machine": bench.get("machine")}
    return decision


def decision_file(cfg: Any) -> Path:
    """The latest decision, the one ``backend=auto`` reads: one fixed place per ``out_dir``."""
    return Path(cfg.out_dir) / "decide" / "decision.json"


def write_decision(decision: dict[str, Any], path: Path) -> dict[str, Path]:
    """decision.json, decision.md and decision.png next to each other, each written atomically."""
    from ..checkpoint import atomic_write_text

    md = markdown(decision)
    atomic_write_text(path, json.dumps(decision, indent=2, default=str))
    atomic_write_text(path.with_suffix(".md"), md)
    plot(decision, path.with_suffix(".png"))
    return {"json": path, "md": path.with_suffix(".md"), "png": path.with_suffix(".png")}


def markdown(decision: dict[str, Any]) -> str:
    """The table (weight, score and weighted score per backend, totals), the pick, the sensitivity and
    the measurements behind the measured scores, so the decision can be checked from the page alone."""
    bs = decision["backends"]
    lines = [f"## Decision matrix `{decision['matrix']}` (threshold {decision['threshold']:g})", "",
             "| criterion | source | weight | " + " | ".join(f"{b} score | {b} weighted" for b in bs) + " |",
             "|---|---|---|" + "---|---|" * len(bs)]
    for r in decision["rows"]:
        cells = " | ".join(f"{r['scores'][b]:.2f} | {r['weighted'][b]:.3f}" for b in bs)
        lines.append(f"| {r['criterion']} | {r['source']} | {r['weight']:.2f} | {cells} |")
    total_w = sum(r["weight"] for r in decision["rows"])
    lines.append(f"| **total** | | {total_w:.2f} | " + " | ".join(f" | **{decision['totals'][b]:.3f}**" for b in bs)
                 + " |")
    pick = decision["pick"]
    lines += ["", f"**{'pick: ' + pick if pick else 'none qualifies'}** ({decision['reason']})",
              "", "Sensitivity (one weight changed, the others rescaled to keep the sum 1):", ""]
    lines += [f"- {s['text']}" for s in decision["sensitivity"]]
    rows = decision["rows"]
    for b in bs:  # why no re-weighting can matter: one backend scores at least as high on every criterion
        if len(bs) > 1 and all(r["scores"][b] >= max(r["scores"][o] for o in bs) for r in rows):
            lines.append(f"- ({b} scores at least as high as every other backend on every criterion, so no "
                         f"re-weighting makes another backend the pick)")
            break
    if decision.get("bench"):
        b = decision["bench"]
        lines += ["", f"Evidence: bench report {b['path']} (model {b['model']}, created {b['created']})", ""]
        lines += [f"- {line}" for line in evidence_lines(decision)]
    return "\n".join(lines) + "\n"


def evidence_lines(decision: dict[str, Any]) -> list[str]:
    """One line per measured criterion and backend: the measurements behind its score."""
    out = []
    for crit, per_backend in decision.get("evidence", {}).items():
        for b, ev in per_backend.items():
            if crit == "performance":
                parts = [f"{m} {e['median_ms']:.3g} ms ({e['x_fastest']:.2f}x) -> {e['score']:.2f}"
                         for m, e in ev.items()]
            else:
                parts = [f"{k} {_fmt(e['value'])} {e['points']:.2f}/{e['max']:.2f}" for k, e in ev.items()]
            out.append(f"{crit} [{b}]: " + "; ".join(parts))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return "/".join(_fmt(x) for x in v.values()) + " ms"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def plot(decision: dict[str, Any], path: Path) -> None:
    """Stacked bars of weighted scores per backend with the threshold line: which criterion carries
    each total, and how far each total is from qualifying."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..checkpoint import atomic_write_bytes

    bs = decision["backends"]
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * len(bs), 4.2))
    bottom = [0.0] * len(bs)
    for r in decision["rows"]:
        heights = [r["weighted"][b] for b in bs]
        label = f"{r['criterion']} ({r['weight']:.2f}, {r['source']})"
        ax.bar(bs, heights, bottom=bottom, label=label, width=0.55, hatch="//" if r["source"] == "measured" else None)
        bottom = [a + h for a, h in zip(bottom, heights)]
    for i, b in enumerate(bs):
        ax.annotate(f"{decision['totals'][b]:.2f}", (i, bottom[i]), ha="center", va="bottom", fontsize=9)
    ax.axhline(decision["threshold"], color="black", linestyle="--", linewidth=1,
               label=f"threshold {decision['threshold']:g}")
    ax.set_ylim(0, 5.4)
    ax.set_ylabel("weighted score (total 1..5)")
    ax.set_title(f"decision `{decision['matrix']}`: " + (f"pick {decision['pick']}" if decision["pick"]
                                                           else "none qualifies"), fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2, frameon=False)
    fig.tight_layout()
    atomic_write_bytes(path, png_bytes(fig))


# ----------------------------------------------------------------------------- backend=auto
def stale(decision: Any, cfg: Any) -> str | None:
    """Why the stored decision cannot be reused for this config, or None when it can."""
    from omegaconf import OmegaConf

    if not isinstance(decision, dict) or "pick" not in decision or "config" not in decision:
        return "the stored decision is unreadable"
    current = parse_matrix(cfg.decision).as_config()
    if decision["config"] != current:
        return "the decision matrix changed"
    bench = decision.get("bench")
    if bench is None:
        return None if all(c["source"] == "config" for c in current["criteria"].values()) else "it has no bench report"
    given = OmegaConf.select(cfg, "decide.bench")
    if given and bench_file(cfg) != Path(bench["path"]):
        return f"decide.bench={given} differs from its report {bench['path']}"
    if not Path(bench["path"]).is_file():
        return f"its bench report {bench['path']} is gone"
    if not given and bench.get("model") != cfg.model.name:  # decide.bench=FILE or latest: the user's choice
        return (f"it was measured for model {bench.get('model')} ({bench['path']}), not model={cfg.model.name}; "
                f"the evidence must be this model's")
    data = OmegaConf.select(cfg, "data.name")
    if not given and bench.get("data") not in (None, data):
        return f"it was measured on data {bench.get('data')}, not data={data}"
    if load_bench(Path(bench["path"])).get("created") != bench.get("created"):
        return f"its bench report {bench['path']} was re-run"
    return None
