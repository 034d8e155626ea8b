"""`dualml decide` and `backend=auto`: the mapping from bench measurements to scores, the weighted
totals and pick, the sensitivity line, validation of the matrix and of the bench report, and
`backend=auto` resolving through the latest decision (re-deciding, and benchmarking, when needed).

Bench reports here are hand-made dicts of the schema `dualml bench` writes, with timings of the size
measured for cnn on this 2-core machine; they are fixtures, not measurements."""
import copy
import json
import math
import subprocess
import sys
import types

import pytest

from dualml.cli import auto, main
from dualml.config import load_config
from dualml.errors import DualmlError
from dualml.evidence import decide as d


def _stats(ms: float) -> dict:
    return {"median_ms": ms, "p10_ms": 0.95 * ms, "p90_ms": 1.1 * ms, "iqr_ms": 0.05 * ms, "n": 20}


def _backend(train, e1, e64, o1, o64, ok=True, ort_abs=3e-8, dynamic=True, static=True) -> dict:
    return {"train_step_ms": _stats(train), "eager_ms_b1": _stats(e1), "eager_ms_b64": _stats(e64),
            "ort_ms_b1": _stats(o1) if ok else None, "ort_ms_b64": _stats(o64) if ok else None,
            "peak_rss_mb": 300.0, "export": {"ok": ok, "seconds": 2.0, "exporter": "x", "error": None if ok else "boom",
                                              "ort_max_abs": ort_abs if ok else None},
            "int8": {"dynamic": dynamic, "static": static, "static_ms_b1": 0.03 if static else None},
            "weights_bytes": 1000, "onnx_bytes": 2000 if ok else None}


def bench_report(created: str = "2025-01-01T00:00:00+00:00", **paddle_kw) -> dict:
    paddle = dict(train=18.9, e1=0.307, e64=3.511, o1=0.025, o64=0.467) | paddle_kw
    return {"model": "cnn", "data": "digits", "repeats": 20, "created": created, "machine": {"cpu_count": 2},
            "backends": {"torch": _backend(11.6, 0.238, 2.048, 0.023, 0.469), "paddle": _backend(**paddle)},
            "parity": {"eager_max_abs": 1e-6, "onnx_max_abs": 2e-6}, "ratios": {}}


def write_bench(out_dir, report: dict | None = None, model: str = "cnn"):
    path = out_dir / "bench" / model / "report.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps((report or bench_report()) | {"model": model}))
    return path


MATRIX = {"name": "t", "threshold": 3.5, "backends": ["torch", "paddle"], "criteria": {
    "team_familiarity": {"weight": 0.3, "source": "config", "scores": {"torch": 4.5, "paddle": 3.0}},
    "deployment": {"weight": 0.25, "source": "measured", "mapping": "deployment"},
    "performance": {"weight": 0.25, "source": "measured", "mapping": "performance"},
    "community": {"weight": 0.2, "source": "config", "scores": {"torch": 5.0, "paddle": 3.5}}}}


# ----------------------------------------------------------------------------- the mapping
def test_speed_score_is_two_points_per_doubling_clipped_to_1_5():
    s = d.speed_scores({"a": 1.0, "b": 2.0, "c": math.sqrt(2), "d": 4.0, "e": 10.0, "f": None})
    assert s == pytest.approx({"a": 5.0, "b": 3.0, "c": 4.0, "d": 1.0, "e": 1.0, "f": None}, nan_ok=True)
    # continuous and monotone: a slightly slower time is a slightly lower score
    times = [1.0 + 0.01 * i for i in range(200)]
    scores = [d.speed_scores({"fast": 1.0, "x": t})["x"] for t in times]
    steps = [a - b for a, b in zip(scores, scores[1:])]
    assert min(steps) >= 0 and max(steps) < 0.03


def test_fidelity_ramp_full_at_1e5_none_at_1e3():
    assert [d.fidelity(v) for v in (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1.0, None, float("nan"))] == \
        pytest.approx([1, 1, 1, 0.5, 0, 0, 0, 0])


def test_performance_score_follows_the_measured_times():
    scores, ev = d.performance(bench_report(), ["torch", "paddle"], "r.json")
    assert scores["torch"] == 5.0
    expect = sum(5 - 2 * math.log2(p / t) for p, t in ((18.9, 11.6), (0.307, 0.238), (3.511, 2.048))) / 3
    assert scores["paddle"] == pytest.approx(expect)
    assert ev["paddle"]["train_step_ms"]["x_fastest"] == pytest.approx(18.9 / 11.6)
    # the facts move -> the number moves: a faster paddle step scores higher; faster everywhere -> 5 and torch drops
    faster, _ = d.performance(bench_report(train=14.0), ["torch", "paddle"], "r.json")
    assert scores["paddle"] < faster["paddle"] < 5
    flipped, _ = d.performance(bench_report(train=5.8, e1=0.119, e64=1.024), ["torch", "paddle"], "r.json")
    assert flipped["paddle"] == 5.0 and flipped["torch"] == pytest.approx(3.0)


def test_deployment_points_from_export_fidelity_int8_and_serving_latency():
    scores, ev = d.deployment(bench_report(), ["torch", "paddle"], "r.json")
    serving_paddle = ((5 - 2 * math.log2(0.025 / 0.023)) + 5) / 2
    serving_torch = (5 + (5 - 2 * math.log2(0.469 / 0.467))) / 2
    assert scores["paddle"] == pytest.approx(1 + 1 + 0.75 + 0.25 + 0.5 + 0.5 + (serving_paddle - 1) / 4)
    assert scores["torch"] == pytest.approx(1 + 1 + 0.75 + 0.25 + 0.5 + 0.5 + (serving_torch - 1) / 4)
    assert ev["paddle"]["serving_latency"]["value"] == {"ort_ms_b1": 0.025, "ort_ms_b64": 0.467}
    # ORT drifting from eager costs fidelity points continuously
    drift, _ = d.deployment(bench_report(ort_abs=1e-4), ["torch", "paddle"], "r.json")
    assert drift["paddle"] == pytest.approx(scores["paddle"] - 0.75 * 0.5)
    # a failed export loses everything that needs the ONNX file; INT8 facts stay as measured
    broken, ev = d.deployment(bench_report(ok=False, static=False), ["torch", "paddle"], "r.json")
    assert broken["paddle"] == pytest.approx(1 + 0.5)
    assert ev["paddle"]["export_ok"]["points"] == 0 and ev["paddle"]["serving_latency"]["points"] == 0
    assert broken["torch"] == pytest.approx(5.0)   # torch is now the only (so the fastest) ORT backend


# ----------------------------------------------------------------------------- totals, pick, sensitivity
def test_totals_are_the_weighted_sum_and_the_pick_needs_the_threshold():
    m = d.parse_matrix(MATRIX)
    dec = d.evaluate(m, bench_report(), "r.json")
    perf, _ = d.performance(bench_report(), m.backends, "r.json")
    dep, _ = d.deployment(bench_report(), m.backends, "r.json")
    for b, fam, com in (("torch", 4.5, 5.0), ("paddle", 3.0, 3.5)):
        assert dec["totals"][b] == pytest.approx(0.3 * fam + 0.25 * dep[b] + 0.25 * perf[b] + 0.2 * com)
    assert dec["pick"] == "torch" and dec["totals"]["torch"] > dec["totals"]["paddle"] > 3.5
    high = d.evaluate(d.parse_matrix(MATRIX | {"threshold": 4.9}), bench_report(), "r.json")
    assert high["pick"] is None and "none reaches it" in high["reason"]
    assert d.choose({"torch": 3.5 - 1e-12, "paddle": 1.0}, 3.5, ["torch", "paddle"]) == "torch"
    assert d.choose({"torch": 4.0, "paddle": 4.0}, 3.5, ["paddle", "torch"]) == "paddle"  # tie: listed first


def _outcome_at(weights: dict, k: str, x: float, scores: dict, threshold: float, backends: list) -> str | None:
    rest = 1 - weights[k]
    w = {j: (x if j == k else weights[j] * (1 - x) / rest) for j in weights}
    assert sum(w.values()) == pytest.approx(1)
    return d.choose(d.totals_for(w, scores, backends), threshold, backends)


SCORES = {"team_familiarity": {"torch": 3.0, "paddle": 5.0}, "deployment": {"torch": 5.0, "paddle": 4.97},
          "performance": {"torch": 5.0, "paddle": 3.77}, "community": {"torch": 5.0, "paddle": 4.5}}
WEIGHTS = {"team_familiarity": 0.3, "deployment": 0.25, "performance": 0.25, "community": 0.2}
BACKENDS = ["torch", "paddle"]


@pytest.mark.parametrize("threshold", [3.5, 4.45, 4.7])
def test_sensitivity_flip_points_are_exact_and_nearest(threshold):
    current = d.choose(d.totals_for(WEIGHTS, SCORES, BACKENDS), threshold, BACKENDS)
    rows = d.sensitivity(WEIGHTS, SCORES, threshold, BACKENDS)
    assert [r["criterion"] for r in rows] == list(WEIGHTS)
    flips = 0
    for r in rows:
        k, w = r["criterion"], r["weight"]
        for side, end in (("up", 1.0), ("down", 0.0)):
            change = r[side]
            # brute force: scan from the current weight towards the end; the first changed outcome must be
            # just past the analytic point and nothing before it
            grid = [w + (end - w) * i / 4000 for i in range(1, 4001)]
            seen = next(((x, o) for x in grid if (o := _outcome_at(WEIGHTS, k, x, SCORES, threshold, BACKENDS))
                         != current), None)
            if change is None:
                assert seen is None, (k, side, seen)
                continue
            flips += 1
            x = change["weight"]
            assert _outcome_at(WEIGHTS, k, x + (end - w) * 1e-7, SCORES, threshold, BACKENDS) == change["outcome"]
            assert _outcome_at(WEIGHTS, k, x - (end - w) * 1e-7, SCORES, threshold, BACKENDS) == current
            assert seen is not None and abs(seen[0] - x) <= abs(end - w) / 4000 + 1e-12 and seen[1] == change["outcome"]
        if r["nearest"] is not None:
            assert r["nearest"]["weight"] == min((c["weight"] for c in (r["up"], r["down"]) if c),
                                                 key=lambda v: abs(v - w))
    assert flips > 0


def test_sensitivity_text_names_weight_change_and_new_outcome():
    rows = {r["criterion"]: r for r in d.sensitivity(WEIGHTS, SCORES, 3.5, BACKENDS)}
    # paddle wins 4.58 to 4.40; more performance weight favours torch: solve 4.584 + ... by hand
    perf = rows["performance"]
    a_t = (0.3 * 3 + 0.25 * 5 + 0.2 * 5) / 0.75
    a_p = (0.3 * 5 + 0.25 * 4.97 + 0.2 * 4.5) / 0.75
    x = (a_p - a_t) / ((5 - a_t) - (3.77 - a_p))
    assert perf["up"]["weight"] == pytest.approx(x) and perf["up"]["outcome"] == "torch"
    assert perf["text"] == f"performance weight 0.250 -> {x:.3f} ({x - 0.25:+.3f}) flips to torch"
    # torch wins every criterion but familiarity at >= 3.0: with a threshold of 4.9 none qualifies, and
    # only moving weight onto torch's fives can make it qualify
    none = {r["criterion"]: r for r in d.sensitivity(WEIGHTS, SCORES, 4.9, BACKENDS)}
    assert "makes torch the pick" in none["performance"]["text"]
    torch_only = {"c": {"torch": 5.0, "paddle": 1.0}, "e": {"torch": 4.0, "paddle": 2.0}}
    row = d.sensitivity({"c": 0.5, "e": 0.5}, torch_only, 3.5, BACKENDS)[0]
    assert row["up"] is None and row["text"] == "no change of the c weight (0..1) changes the pick"
    assert row["down"] is None  # torch >= 4 whatever the split


def test_sensitivity_reports_falling_below_the_threshold():
    scores = {"a": {"torch": 5.0, "paddle": 2.0}, "b": {"torch": 2.0, "paddle": 1.0}}
    row = d.sensitivity({"a": 0.6, "b": 0.4}, scores, 3.5, BACKENDS)[0]
    # torch total 5x + 2(1-x) >= 3.5  <=>  x >= 0.5
    assert row["down"] == {"weight": pytest.approx(0.5), "outcome": None}
    assert row["text"] == "a weight 0.600 -> 0.500 (-0.100) leaves none at or above 3.5"


# ----------------------------------------------------------------------------- validation
def _bad(**changes) -> dict:
    m = copy.deepcopy(MATRIX)
    for path, value in changes.items():
        node = m
        *parents, last = path.split("__")
        for p in parents:
            node = node[p]
        if value is KeyError:
            del node[last]
        else:
            node[last] = value
    return m


@pytest.mark.parametrize("changes,message", [
    ({"criteria__community__weight": 0.3},
     "decision weights sum to 1.1, not 1 (tolerance 1e-06): team_familiarity 0.3, deployment 0.25, performance 0.25, "
     "community 0.3"),
    ({"criteria__community__scores__paddle": 6},
     "decision.criteria.community.scores.paddle=6 is outside 1-5 (criterion community, backend paddle)"),
    ({"criteria__team_familiarity__scores__torch": 0.5}, "scores.torch=0.5 is outside 1-5"),
    ({"criteria__community__scores__paddle": KeyError}, "decision.criteria.community.scores has no score for paddle"),
    ({"criteria__community__scores__tf": 3}, "scores.tf is not allowed: tf is not in decision.backends"),
    ({"criteria__comunity": {"weight": 0.0, "source": "config", "scores": {"torch": 1, "paddle": 1}}},
     "unknown criterion 'comunity' (did you mean 'community'?); allowed criteria: team_familiarity, deployment, "
     "performance, community"),
    ({"criteria__performance__mapping": "speed"},
     "decision.criteria.performance.mapping=speed is not allowed; allowed: performance"),
    ({"criteria__community__source": "measured"}, "community is a judgement no bench measurement maps to"),
    ({"criteria__community__source": "guess"},
     "decision.criteria.community.source=guess is not allowed; allowed: config, measured"),
    ({"criteria__performance__scores": {"torch": 5, "paddle": 1}}, "performance is measured, so it takes no scores"),
    ({"criteria__performance__wieght": 1}, "unknown config key 'decision.criteria.performance.wieght'"),
    ({"threshold": 6}, "decision.threshold=6 is outside 1-5"),
    ({"backends": ["torch", "tf"]}, "decision.backends entry=tf is not allowed"),
])
def test_bad_matrix_is_one_clear_error(changes, message):
    with pytest.raises(DualmlError) as err:
        d.parse_matrix(_bad(**changes))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_weights_within_tolerance_pass():
    m = d.parse_matrix(_bad(criteria__community__weight=0.2 + 5e-7))
    assert sum(m.weights.values()) == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["backends"]["paddle"].pop("eager_ms_b64"), "has no 'backends.paddle.eager_ms_b64' (needed by measured "
                                                            "criterion performance)"),
    (lambda r: r["backends"]["torch"]["int8"].pop("static"), "has no 'backends.torch.int8.static' (needed by measured "
                                                             "criterion deployment)"),
    (lambda r: r.pop("parity"), "has no 'parity.onnx_max_abs'"),
    (lambda r: r["backends"].pop("paddle"), "has no 'backends.paddle."),
    (lambda r: r["backends"]["torch"].update(train_step_ms=None), "'backends.torch.train_step_ms.median_ms' is None, "
                                                                  "not a positive time"),
])
def test_missing_bench_key_names_the_file_and_the_key(tmp_path, mutate, message):
    report = bench_report()
    mutate(report)
    path = write_bench(tmp_path, report)
    cfg = load_config(["model=cnn", f"out_dir={tmp_path}"])
    with pytest.raises(DualmlError) as err:
        d.decide(cfg)
    assert f"bench report {path}" in str(err.value) and message in str(err.value)


def test_missing_bench_report_is_an_error_when_not_allowed_to_run_it(tmp_path):
    cfg = load_config(["model=cnn", f"out_dir={tmp_path}", "decide.run_bench=false"])
    with pytest.raises(DualmlError, match=f"no bench report at {tmp_path}/bench/cnn/report.json, which the measured "
                                          r"criteria \(deployment, performance\) need"):
        d.decide(cfg)
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(DualmlError, match="broken.json is not readable JSON"):
        d.decide(load_config(["model=cnn", f"out_dir={tmp_path}", f"decide.bench={tmp_path / 'broken.json'}"]))


def test_cli_bad_weights_exit_2_one_line(tmp_path, capsys):
    write_bench(tmp_path)
    rc = main(["decide", "model=cnn", f"out_dir={tmp_path}", "decision.criteria.performance.weight=0.3"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: decision weights sum to 1.05, not 1")


# ----------------------------------------------------------------------------- the command
def test_decide_writes_table_json_markdown_png(tmp_path, capsys):
    bench = write_bench(tmp_path)
    assert main(["decide", "model=cnn", f"out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "| team_familiarity | config | 0.30 | 4.50 | 1.350 | 3.00 | 0.900 |" in out
    assert "**pick: torch** (torch 4.85 vs paddle 3.78, threshold 3.5)" in out
    assert f"decision: {tmp_path}/decide/decision.json" in out
    dec = json.loads((tmp_path / "decide" / "decision.json").read_text())
    assert dec["pick"] == "torch" and dec["bench"]["path"] == str(bench)
    assert dec["bench"]["created"] == "2025-01-01T00:00:00+00:00" and len(dec["sensitivity"]) == 4
    assert dec["evidence"]["performance"]["paddle"]["eager_ms_b1"]["median_ms"] == 0.307
    assert (tmp_path / "decide" / "decision.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Sensitivity" in (tmp_path / "decide" / "decision.md").read_text()
    # bare key for the section: bench=FILE
    other = write_bench(tmp_path, bench_report(train=5.0, e1=0.1, e64=1.0), model="other")
    assert main(["decide", f"bench={other}", f"out_dir={tmp_path}"]) == 0
    dec2 = json.loads((tmp_path / "decide" / "decision.json").read_text())
    assert dec2["bench"]["path"] == str(other) and dec2["totals"]["paddle"] > dec["totals"]["paddle"]


def test_decide_runs_the_bench_when_no_report_exists(tmp_path, monkeypatch):
    calls = []

    def cmd_bench(cfg):
        calls.append(cfg.model.name)
        write_bench(tmp_path, model=cfg.model.name)
        return 0
    monkeypatch.setitem(sys.modules, "dualml.cli.bench", types.SimpleNamespace(cmd_bench=cmd_bench))
    dec = d.decide(load_config(["model=cnn", f"out_dir={tmp_path}"]), run_bench=auto.run_bench)
    assert calls == ["cnn"] and dec["pick"] == "torch"
    monkeypatch.setitem(sys.modules, "dualml.cli.bench", types.SimpleNamespace(cmd_bench=lambda cfg: 1))
    with pytest.raises(DualmlError, match=r"`dualml bench model=mlp` failed \(exit 1\)"):
        d.decide(load_config(["model=mlp", f"out_dir={tmp_path}"]), run_bench=auto.run_bench)


# ----------------------------------------------------------------------------- backend=auto
def test_backend_auto_resolves_through_the_latest_decision(tmp_path, capsys, monkeypatch):
    def no_bench(cfg):
        raise AssertionError("the bench must not run when a report exists")
    monkeypatch.setitem(sys.modules, "dualml.cli.bench", types.SimpleNamespace(cmd_bench=no_bench))
    write_bench(tmp_path)
    args = ["backend=auto", "model=cnn", f"out_dir={tmp_path}"]
    cfg = auto.load(args)
    err = capsys.readouterr().err.splitlines()
    assert cfg.backend == "torch" and len(err) == 1
    assert err[0].startswith("backend=auto -> torch (decision matrix: torch 4.85 vs paddle 3.78, threshold 3.5; "
                             f"{tmp_path}/decide/decision.json") and "decided now: no decision yet" in err[0]
    # the stored decision is reused as long as nothing changed...
    assert auto.load(args).backend == "torch"
    assert "decided now" not in capsys.readouterr().err
    # ...and re-made when the facts or the matrix change
    write_bench(tmp_path, bench_report(created="2025-02-02T00:00:00+00:00"))
    auto.load(args)
    assert "was re-run" in capsys.readouterr().err
    fam = "decision.criteria.team_familiarity.scores"
    assert auto.load([*args, f"{fam}.torch=1.0", f"{fam}.paddle=5.0"]).backend == "paddle"
    assert "decided now: the decision matrix changed" in capsys.readouterr().err
    with pytest.raises(DualmlError, match="backend=auto: no backend qualifies .*threshold 4.9, none reaches it"):
        auto.load([*args, "decision.threshold=4.9"])
    assert load_config(args).backend == "auto"
    auto.load(args)   # the failed decision above is the latest one until this
    capsys.readouterr()
    # a decision whose bench report disappeared is re-made from the model's report
    (tmp_path / "bench" / "cnn" / "report.json").rename(tmp_path / "moved.json")
    write_bench(tmp_path, bench_report(created="2025-03-03T00:00:00+00:00"), model="mlp")
    assert auto.load(["backend=auto", "model=mlp", f"out_dir={tmp_path}"]).backend == "torch"
    err = capsys.readouterr().err
    assert "bench mlp 2025-03-03" in err and "bench/cnn/report.json is gone" in err


def test_backend_auto_runs_bench_and_decides_when_nothing_exists(tmp_path, monkeypatch, capsys):
    def cmd_bench(cfg):
        write_bench(tmp_path, model=cfg.model.name)
        print("| the bench table |")
        return 0
    monkeypatch.setitem(sys.modules, "dualml.cli.bench", types.SimpleNamespace(cmd_bench=cmd_bench))
    cfg = auto.load(["backend=auto", "model=cnn", f"out_dir={tmp_path}"])
    assert cfg.backend == "torch" and (tmp_path / "decide" / "decision.json").is_file()
    out = capsys.readouterr()
    assert out.out == ""   # the bench's table goes to stderr: `dualml config backend=auto` stdout stays YAML
    assert "running `dualml bench model=cnn` first" in out.err and "| the bench table |" in out.err


def test_parity_against_cannot_be_auto():
    with pytest.raises(DualmlError, match="parity.against=auto is not allowed; allowed: paddle, torch"):
        load_config(["parity.against=auto"])


def test_train_backend_auto_end_to_end(tmp_path):
    write_bench(tmp_path)
    run = tmp_path / "run"
    out = subprocess.run([sys.executable, "-m", "dualml", "train", "backend=auto", "model=cnn", "trainer.max_steps=2",
                          f"trainer.run_dir={run}", f"out_dir={tmp_path}"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("backend=auto")][0].startswith(
        "backend=auto -> torch (decision matrix: torch 4.85")
    assert json.loads((run / "metrics.json").read_text())["backend"] == "torch"
