"""``dualml bench model=cnn data=digits``: the backends (``bench.backends``, default torch and paddle)
measured side by side, as numbers a decision can be made from (``dualml decide`` reads
``<out_dir>/bench/latest.json``).

Per backend: the Trainer's optimizer step on a fixed batch, eager and ONNX Runtime inference at batch 1
and 64, peak memory, ONNX export (time, exporter, ORT-vs-eager difference), ORT INT8 quantization
(dynamic and static) with the static file's batch-1 latency, and the weight and ONNX file sizes; across
backends: eager and ONNX parity from the same canonical weights, and each backend's ratio over the
reference backend (``bench.reference``, default paddle: the keys read ``<measurement>_torch_over_paddle``).

Why it runs the way it does:

* **One fresh worker process per backend** (``python -m dualml.evidence.bench --worker B``, started by
  :mod:`dualml.workers`, which says why). The parent imports no framework.
* **All workers stay alive and the parent drives timing rounds, rotating which backend goes
  first.** On a small shared machine the load changes by the second; timing torch for a minute and
  then paddle for a minute would put that change into the torch/paddle ratio. Interleaved rounds
  expose all of them to the same load, which is also why the per-round ratios' spread is reported.
  Within a worker, a round is one :func:`dualml.timing.interleaved` pass over its measurements.
* **One intra-op thread everywhere by default** (``bench.threads``): torch, paddle and ONNX Runtime
  then compare engines, not thread pools fighting over two cores.
* **Peak memory is read before the exporter runs**: the torch exporter runs in the worker, paddle2onnx
  in a child process (see :mod:`dualml.onnx.export`), so a high-water mark that included exporting
  would compare exporters, not the frameworks running the model. ``rss_end_mb`` has the final figure.
* **A failed measurement is data, not a crash**: an export or quantization that fails is recorded
  (``ok: false`` and the error), its timings are null, and the rest is still measured.

The report (``report.json``; ``dualml decide`` depends on these keys, more may be added)::

    {model, data, repeats, created, machine, model_config, settings, elapsed_s,
     backends: {<backend>: {train_step_ms, eager_ms_b1, eager_ms_b64, ort_ms_b1, ort_ms_b64,
                               int8_static_ms_b1: STATS | null,
                               peak_rss_mb, rss_baseline_mb, peak_rss_delta_mb, rss_end_mb,
                               export: {ok, seconds, exporter, error, ort_max_abs, ...},
                               int8: {dynamic, static, static_ms_b1, errors},
                               weights_bytes, onnx_bytes, inputs, inputs_note, threads, ...}},
     parity: {eager_max_abs, onnx_max_abs, weights_identical, inputs},
     reference: <backend the ratios divide by>,
     ratios: {<measurement>_<b>_over_<reference>: ratio of medians | null, peak_rss_mb_..., onnx_bytes_..., ...},
     ratio_spread: {<measurement>_<b>_over_<reference>: {p10, median, p90} of the per-round ratios}}

``parity`` compares every backend with the reference (the largest difference over them).

STATS is :func:`dualml.timing.stats_ms` (``median_ms, p10_ms, p90_ms, iqr_ms, n``) over the rounds.
"""
from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DualmlError, not_allowed

#: ``bench.backends`` / ``bench.reference`` when the config has none
BACKENDS = ("torch", "paddle")
REFERENCE = "paddle"
#: timed measurements, in the order a round runs them (rotated per round); all but train_step may be absent
TIMED = ("train_step", "eager_b1", "eager_b64", "ort_b1", "ort_b64", "int8_static_b1")
#: the report key of each timed measurement's STATS and its label in tables and plots
STATS_KEYS = {"train_step": "train_step_ms", "eager_b1": "eager_ms_b1", "eager_b64": "eager_ms_b64",
              "ort_b1": "ort_ms_b1", "ort_b64": "ort_ms_b64", "int8_static_b1": "int8_static_ms_b1"}
LABELS = {"train_step": "train step", "eager_b1": "eager b1", "eager_b64": "eager b64", "ort_b1": "ORT b1",
          "ort_b64": "ORT b64", "int8_static_b1": "ORT INT8 static b1"}
BATCHES = (1, 64)
INT8_MODES = ("dynamic", "static")
#: set-up steps a worker reports before its timing rounds (drives the progress bar)
PHASES = ("import", "train step", "eager", "export", "int8")


# ---------------------------------------------------------------------------------------------- machine
def machine_info() -> dict[str, Any]:
    """Versions, load and CPU bf16 support, read without importing a framework (the parent stays
    framework-free), so a report says what it was measured on and how busy the machine was."""
    def version(dist: str) -> str | None:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return None
    from ..cpu import cpu_flags, describe_cpu
    from ..version import __version__

    flags = cpu_flags()
    return {"python": platform.python_version(), "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "torch": version("torch"), "paddle": version("paddlepaddle"), "onnxruntime": version("onnxruntime"),
            "numpy": np.__version__, "dualml": __version__, "loadavg_1m_start": os.getloadavg()[0],
            "cpu_bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")), **describe_cpu()}


def _rss_mb() -> float:
    """This process's peak resident set so far (Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _error(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


# ---------------------------------------------------------------------------------------------- options
def check_options(b: Any) -> dict[str, Any]:
    """The ``bench`` config section as plain values, rejected up front with one line naming the key
    (before two framework processes are started for nothing)."""
    def need(key: str, ok: bool, allowed: str) -> None:
        if not ok:
            raise ConfigError(f"bench.{key}={b.get(key)!r} is not allowed; allowed: {allowed}")

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    need("repeats", is_int(b.repeats) and b.repeats >= 1, "an integer >= 1")
    need("warmup", is_int(b.warmup) and b.warmup >= 0, "an integer >= 0")
    need("min_seconds", isinstance(b.min_seconds, (int, float)) and not isinstance(b.min_seconds, bool)
         and 0 <= b.min_seconds <= 10, "a number of seconds in [0, 10]")
    need("threads", is_int(b.threads) and b.threads >= 1, "an integer >= 1")
    need("calib_batches", is_int(b.calib_batches) and b.calib_batches >= 1, "an integer >= 1")
    need("int8", isinstance(b.int8, bool), "true or false")
    from ..backend import available_backends

    known = available_backends()
    backends = list(BACKENDS if b.get("backends") is None else b.backends)
    for name in backends:
        if name not in known:
            raise ConfigError(not_allowed("bench.backends entry", name, known))
    need("backends", 0 < len(set(backends)) == len(backends), f"a list of distinct backends of {', '.join(known)}")
    reference = b.get("reference") or REFERENCE
    if reference not in backends:
        raise ConfigError(not_allowed("bench.reference", reference, backends))
    return {k: b[k] for k in ("repeats", "warmup", "min_seconds", "threads", "calib_batches", "int8")} | {
        "backends": backends, "reference": reference}


# ---------------------------------------------------------------------------------------------- measuring
def eager_call(net: Any, backend: str, x: np.ndarray) -> Callable[[], np.ndarray]:
    """Eval-mode inference of ``net`` on ``x`` without gradients, output as numpy: the callable both
    this module and ``benchmarks/bench_onnx.py`` time. The input tensor is made once, outside."""
    from ..backend import get_backend

    be = get_backend(backend)
    be.set_train(net, False)
    xt = be.tensor(x)

    def run() -> np.ndarray:
        with be.no_grad():
            return be.numpy(net(xt))
    return run


def ort_call(sess: Any, x: np.ndarray) -> Callable[[], np.ndarray]:
    """ONNX Runtime inference of ``x`` (numpy in, numpy out), the counterpart of :func:`eager_call`."""
    from ..onnx import ort

    return lambda: ort.run(sess, x)


def export_record(model: Any, backend: str, weights: dict[str, np.ndarray], path: Path, sample: np.ndarray,
                  metadata: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Export through :func:`dualml.onnx.export.export_model` (which verifies ORT against eager) and
    describe the outcome in the report's terms; a failure is recorded, not raised. Returns the record
    and, on success, export_model's full report."""
    from ..onnx.export import export_model

    t0 = time.perf_counter()
    try:
        full = export_model(model, backend, weights, path, sample, metadata=metadata)
    except Exception as exc:  # exporters fail with their own types; the report keeps the message
        return {"ok": False, "seconds": time.perf_counter() - t0, "exporter": None, "error": _error(exc),
                "ort_max_abs": None}, None
    return {"ok": True, "seconds": time.perf_counter() - t0, "exporter": full["exporter"], "error": None,
            "ort_max_abs": full["verification"]["max_abs"], "exporter_seconds": full["export_seconds"],
            "opset": full["opset"], "fallback_reason": full.get("fallback_reason")}, full


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    from ..onnx.int8 import _batch

    return _batch(x, n)


def _dataset(cfg: Any, model: Any, batch_size: int) -> tuple[Any, str, str | None]:
    """The configured data when it fits the model; otherwise random inputs from the model's input spec
    (the timing does not depend on values), so every zoo model can be benchmarked with any data.
    Returns the data set, its source (``data NAME`` or ``random``) and why the data was not used."""
    from omegaconf import OmegaConf

    from ..train.data import Dataset, Split, load_dataset

    spec = model.input_spec(1)[0]
    try:
        ds = load_dataset(OmegaConf.to_container(cfg.data, resolve=True), input_shape=tuple(spec.shape[1:]),
                          seed=cfg.seed)
        if str(ds.train.x.dtype) == str(spec.dtype):
            return ds, f"data {ds.name}", None
        reason = f"its samples are {ds.train.x.dtype}, the model takes {spec.dtype}"
    except ConfigError as exc:
        reason = str(exc)
    rng = np.random.default_rng(cfg.seed)
    classes = int(cfg.model.get("num_classes") or 10)

    def split(n: int) -> Split:
        return Split(model.input_spec(n)[0].sample(rng), rng.integers(0, classes, n).astype(np.int64))
    n = max(2 * batch_size, max(BATCHES))
    return (Dataset("random", split(n), split(max(BATCHES)), split(max(BATCHES)), classes), "random",
            f"data {cfg.data.name} does not fit the model ({reason}): inputs drawn from the model's input spec")


class _Worker:
    """One backend in this process: set up every measurement once, then time rounds on request."""

    def __init__(self, cfg: Any, backend: str, tmp: Path, send: Callable[[dict[str, Any]], None]) -> None:
        self.cfg, self.backend, self.tmp, self.send = cfg, backend, tmp, send
        self.opts = check_options(cfg.bench)
        self.fns: dict[str, Callable[[], Any]] = {}
        self.result: dict[str, Any] = {}

    def _phase(self, name: str) -> None:
        self.send({"phase": name})

    def _warm(self, *names: str) -> None:
        for name in names:
            for _ in range(self.opts["warmup"]):
                self.fns[name]()

    def setup(self) -> None:
        import warnings

        from .. import build, get_weights
        from ..backend import get_backend
        from ..checkpoint import digest, save_weights
        from ..config import model_params
        from ..module import init_weights
        from ..onnx import ort
        from ..train.trainer import Trainer
        from ..zoo import create_model

        warnings.filterwarnings("ignore", category=UserWarning)  # paddle's BatchNorm "always track" notice
        cfg, b, opts = self.cfg, self.backend, self.opts
        get_backend(b).set_threads(opts["threads"])  # the framework import (paddle after zlib), then its threads
        name, params = model_params(cfg)
        model = create_model(name, **params)
        batch_size = int(cfg.data.get("batch_size", 64))
        ds, source, note = _dataset(cfg, model, batch_size)
        baseline = _rss_mb()
        self._phase("import")

        trainer = Trainer(cfg, model=model, dataset=ds, write=False, progress=False)
        batch = next(iter(trainer.loader), None)
        if batch is None:
            raise ConfigError(f"data.batch_size={batch_size} is larger than the train split ({len(ds.train)} samples); "
                              "the train step is timed on one full batch")
        x, y = batch

        def train_step() -> None:
            trainer.step %= trainer.total_steps  # the learning-rate table covers one run; timing may run past it
            trainer.train_step([(x, y)])
        self.fns["train_step"] = train_step
        self._warm("train_step")
        self._phase("train step")

        weights = init_weights(model, cfg.seed)
        net = build(model, b, weights=weights)
        inputs = {n: _rows(ds.test.x, n) for n in BATCHES}
        for n in BATCHES:
            self.fns[f"eager_b{n}"] = eager_call(net, b, inputs[n])
        self._warm(*(f"eager_b{n}" for n in BATCHES))
        peak = _rss_mb()
        np.save(self.tmp / f"{b}-eager.npy", self.fns[f"eager_b{max(BATCHES)}"]())
        native = get_weights(net)
        wpath = save_weights(self.tmp / f"{b}.safetensors", native, {"model": name})  # same header on both
        self._phase("eager")

        onnx_path = self.tmp / f"{name}-{b}.onnx"
        export, full = export_record(model, b, weights, onnx_path, inputs[max(BATCHES)][:8], {"model": name})
        if export["error"]:
            export["error"] = export["error"].replace(f"{self.tmp}{os.sep}", "")
        if full is not None:
            sess = ort.session(onnx_path, threads=opts["threads"])
            for n in BATCHES:
                self.fns[f"ort_b{n}"] = ort_call(sess, inputs[n])
            self._warm(*(f"ort_b{n}" for n in BATCHES))
            np.save(self.tmp / f"{b}-ort.npy", self.fns[f"ort_b{max(BATCHES)}"]())
        self._phase("export")

        int8: dict[str, Any] = {m: False for m in INT8_MODES} | {"static_ms_b1": None, "errors": {}}
        if full is None:
            int8["errors"] = {m: "no ONNX export" for m in INT8_MODES}
        elif not opts["int8"]:
            int8["errors"] = {m: "skipped (bench.int8=false)" for m in INT8_MODES}
        else:
            from ..onnx.int8 import calibration_batches, quantize_onnx

            calib = calibration_batches(ds.train.x, opts["calib_batches"], batch_size, cfg.seed)
            for mode in INT8_MODES:
                q = self.tmp / f"{name}-{b}.int8-{mode}.onnx"
                try:
                    quantize_onnx(onnx_path, q, mode, calib if mode == "static" else None)
                    qsess = ort.session(q, threads=opts["threads"])
                    fn = ort_call(qsess, inputs[1])
                    fn()  # loading is not enough: the quantized graph must also run
                except Exception as exc:  # quantizer and runtime failures are findings of the benchmark
                    int8["errors"][mode] = _error(exc).replace(f"{self.tmp}{os.sep}", "")  # temp dir goes away
                    continue
                int8[mode] = True
                if mode == "static":
                    self.fns["int8_static_b1"] = fn
                    self._warm("int8_static_b1")
        self._phase("int8")

        self.result = {
            "inputs": source, "inputs_note": note, "train_batch_size": trainer.batch_size,
            "threads": get_backend(b).threads(), "framework_version": get_backend(b).version,
            "rss_baseline_mb": baseline, "peak_rss_mb": peak, "peak_rss_delta_mb": peak - baseline,
            "export": export, "int8": int8, "weights_bytes": wpath.stat().st_size,
            "weights_sha256": digest(native), "onnx_bytes": onnx_path.stat().st_size if full else None,
            "onnx_ops": full["ops"] if full else None}

    def round(self, rotate: int) -> dict[str, float]:
        """One timed pass over every measurement (starting point rotated), ms per call."""
        from ..timing import interleaved

        names = [n for n in TIMED if n in self.fns]
        k = rotate % len(names)
        order = names[k:] + names[:k]
        t = interleaved({n: self.fns[n] for n in order}, repeats=1, warmup=0, min_seconds=self.opts["min_seconds"])
        return {n: s["median_ms"] for n, s in t.items()}


def _worker_main(argv: list[str]) -> int:
    """``python -m dualml.evidence.bench --worker B --config C --tmp DIR --fd N``: serve the parent's commands
    (JSON lines over the inherited socket) until ``finish``."""
    import argparse

    from omegaconf import OmegaConf

    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--tmp", required=True)
    ap.add_argument("--fd", type=int, required=True)
    a = ap.parse_args(argv)
    sock = socket.socket(fileno=a.fd)
    stream = sock.makefile("rw", encoding="utf-8")

    def send(msg: dict[str, Any]) -> None:
        stream.write(json.dumps(msg) + "\n")
        stream.flush()

    try:
        cfg = OmegaConf.load(a.config)
        cfg.backend = a.worker
        w = _Worker(cfg, a.worker, Path(a.tmp), send)
        w.setup()
        send({"ready": sorted(w.fns)})
        for line in stream:
            cmd = json.loads(line)
            if cmd["cmd"] == "round":
                send({"ms": w.round(cmd["rotate"])})
            else:
                send({"result": w.result | {"rss_end_mb": _rss_mb()}})
                break
    except Exception as exc:  # reported to the parent as one line; the traceback stays in the worker log
        import traceback

        traceback.print_exc()
        send({"error": _error(exc)})
        return 1
    return 0


# ---------------------------------------------------------------------------------------------- parent
class _Proc:
    """A worker process (:mod:`dualml.workers`) and its end of the socket pair."""

    def __init__(self, backend: str, cfg_path: Path, tmp: Path, log: Path, threads: int) -> None:
        from .. import workers

        self.backend, self.log = backend, log
        mine, theirs = socket.socketpair()
        # exporters print progress; it goes to the log, not the user's terminal
        self.proc = workers.start(workers.command("dualml.evidence.bench", [
            "--worker", backend, "--config", str(cfg_path), "--tmp", str(tmp), "--fd", str(theirs.fileno())]),
            log, threads=threads, pass_fds=(theirs.fileno(),))
        theirs.close()  # so a dead worker shows up as end-of-file here
        self.sock = mine
        self.stream = mine.makefile("rw", encoding="utf-8")

    def send(self, msg: dict[str, Any]) -> None:
        self.stream.write(json.dumps(msg) + "\n")
        self.stream.flush()

    def recv(self) -> dict[str, Any]:
        from ..workers import failure

        line = self.stream.readline()
        if not line:
            raise DualmlError(failure(f"bench worker for {self.backend}", self.proc.wait(), self.log))
        msg = json.loads(line)
        if "error" in msg:
            self.proc.wait()
            raise DualmlError(f"bench worker for {self.backend} failed: {msg['error']} (log: {self.log})")
        return msg

    def close(self) -> None:
        self.stream.close()
        self.sock.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _stats(ms: list[float]) -> dict[str, float] | None:
    from ..timing import stats_ms

    return stats_ms([m / 1e3 for m in ms]) if ms else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b is not None and b > 0 else None


def run_bench(cfg: Any, log_dir: Path, progress: bool = True) -> dict[str, Any]:
    """Start the workers (one after the other, so one's set-up never competes with another's export
    timing), time ``bench.repeats`` rounds rotating the backend that goes first, and assemble the
    report (keys: see the module docstring). Worker output goes to ``log_dir/<backend>.log``."""
    from omegaconf import OmegaConf

    from ..quiet import progress_bar

    opts = check_options(cfg.bench)
    names, ref = opts["backends"], opts["reference"]
    others = [b for b in names if b != ref]
    started = time.perf_counter()
    machine = machine_info()
    procs: dict[str, _Proc] = {}
    per_round: dict[str, dict[str, list[float]]] = {b: {n: [] for n in TIMED} for b in names}
    with tempfile.TemporaryDirectory(prefix="dualml-bench-") as tmpdir, \
            progress_bar(total=len(names) * len(PHASES) + opts["repeats"], desc="bench", unit="step",
                         enabled=progress, file=sys.stderr) as bar:
        tmp = Path(tmpdir)
        cfg_path = tmp / "config.yaml"
        OmegaConf.save(cfg, cfg_path)
        try:
            for b in names:
                procs[b] = _Proc(b, cfg_path, tmp, log_dir / f"{b}.log", opts["threads"])
                while True:
                    msg = procs[b].recv()
                    if "ready" in msg:
                        break
                    bar.set_postfix_str(f"{b}: {msg['phase']} done")
                    bar.update(1)
            bar.set_postfix_str("timing rounds")
            for r in range(opts["repeats"]):
                k = r % len(names)
                for b in names[k:] + names[:k]:
                    procs[b].send({"cmd": "round", "rotate": r})
                    for n, ms in procs[b].recv()["ms"].items():
                        per_round[b][n].append(ms)
                bar.update(1)
            results = {}
            for b in names:
                procs[b].send({"cmd": "finish"})
                results[b] = procs[b].recv()["result"]
        finally:
            for p in procs.values():
                p.close()
        outs = {b: {k: np.load(tmp / f"{b}-{k}.npy") if (tmp / f"{b}-{k}.npy").exists() else None
                    for k in ("eager", "ort")} for b in names}
    machine["loadavg_1m_end"] = os.getloadavg()[0]
    machine["threads"] = {b: results[b]["threads"] for b in names}

    backends: dict[str, Any] = {}
    for b in names:
        r = results[b]
        stats = {n: _stats(per_round[b][n]) for n in TIMED}
        r["int8"]["static_ms_b1"] = stats["int8_static_b1"]["median_ms"] if stats["int8_static_b1"] else None
        backends[b] = {STATS_KEYS[n]: stats[n] for n in TIMED} | r

    def diff(kind: str) -> float | None:
        """The largest |backend - reference| over the other backends (None when any output is missing)."""
        pairs = [(outs[o][kind], outs[ref][kind]) for o in others]
        if not pairs or any(x is None or y is None for x, y in pairs):
            return None
        return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in pairs)

    parity = {"eager_max_abs": diff("eager"), "onnx_max_abs": diff("ort"),
              "weights_identical": len({backends[b]["weights_sha256"] for b in names}) == 1,
              "inputs": f"batch {max(BATCHES)} of {results[ref]['inputs']}"}

    def med(bk: str, key: str) -> float | None:
        s = backends[bk][key]
        return s["median_ms"] if s else None

    ratios: dict[str, float | None] = {}
    spread: dict[str, dict[str, float] | None] = {}
    for o in others:
        over = f"{o}_over_{ref}"
        for n, key in STATS_KEYS.items():
            ratios[f"{n}_{over}"] = _ratio(med(o, key), med(ref, key))
            to, tr = per_round[o][n], per_round[ref][n]
            # each round's pair ran back to back: the spread of their ratio is the ratio's noise
            q = np.percentile(np.asarray(to) / np.asarray(tr), [10, 50, 90]) if to and tr else None
            spread[f"{n}_{over}"] = None if q is None else {"p10": float(q[0]), "median": float(q[1]),
                                                            "p90": float(q[2])}
        for key in ("peak_rss_mb", "peak_rss_delta_mb", "onnx_bytes", "weights_bytes"):
            ratios[f"{key}_{over}"] = _ratio(backends[o][key], backends[ref][key])
        ratios[f"export_seconds_{over}"] = (
            _ratio(backends[o]["export"]["seconds"], backends[ref]["export"]["seconds"])
            if backends[o]["export"]["ok"] and backends[ref]["export"]["ok"] else None)
    name = OmegaConf.select(cfg, "model.name")
    return {"model": name, "data": cfg.data.name, "repeats": opts["repeats"],
            "model_config": OmegaConf.to_container(cfg.model, resolve=True),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine,
            "settings": {k: v for k, v in opts.items() if k != "repeats"} | {"seed": cfg.seed, "batches": BATCHES},
            "backends": backends, "reference": ref, "parity": parity, "ratios": ratios, "ratio_spread": spread,
            "elapsed_s": time.perf_counter() - started}


# ---------------------------------------------------------------------------------------------- report
def _fmt(v: Any, spec: str = ".3g") -> str:
    return "n/a" if v is None else format(v, spec)


def markdown(report: dict[str, Any]) -> str:
    """The report as tables: medians with p10-p90 and each backend's ratio over the reference, then
    export/INT8/memory/size facts and parity."""
    names, ref = list(report["backends"]), report.get("reference", REFERENCE)  # older reports: torch, paddle
    others = [b for b in names if b != ref]
    be, m = report["backends"], report["machine"]
    faster = ("; ".join(f"{o}/{ref} < 1: {o} is faster" for o in others)
              + "; the per-round ratio's p10-p90 shows whether a difference stands above the noise." if others else "")
    # one ratio: the spread column keeps its short name (the README cites the two-backend table)
    spread_head = ["round ratio p10-p90"] if len(others) == 1 else [f"round {o}/{ref} p10-p90" for o in others]
    head = [f"{b} ms" for b in names] + [h for o, sh in zip(others, spread_head) for h in (f"{o}/{ref}", sh)]
    lines = [f"# dualml bench: {report['model']} on {report['data']} ({report['created']})", "",
             f"Median ms per call over {report['repeats']} interleaved rounds (p10-p90); "
             f"{report['settings']['threads']} intra-op thread(s) per engine. {faster}".rstrip(), "",
             "| measurement | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]

    def cell(s: dict[str, float] | None) -> str:
        return "n/a" if s is None else f"{s['median_ms']:.3f} ({s['p10_ms']:.3f}-{s['p90_ms']:.3f})"
    for n, key in STATS_KEYS.items():
        cells = [cell(be[b][key]) for b in names]
        for o in others:
            sp = report["ratio_spread"][f"{n}_{o}_over_{ref}"]
            cells += [_fmt(report["ratios"][f"{n}_{o}_over_{ref}"], ".3f"),
                      "n/a" if sp is None else f"{sp['p10']:.3f}-{sp['p90']:.3f}"]
        lines.append(f"| {LABELS[n]} | " + " | ".join(cells) + " |")
    lines += ["", "| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]

    def row(label: str, f: Callable[[dict[str, Any]], str]) -> None:
        lines.append(f"| {label} | " + " | ".join(f(be[b]) for b in names) + " |")
    row("ONNX export", lambda r: (f"ok, {r['export']['exporter']}, {r['export']['seconds']:.2f} s, ORT vs eager "
                                  f"{r['export']['ort_max_abs']:.1e}") if r["export"]["ok"]
        else f"FAILED: {r['export']['error']}")
    for mode in INT8_MODES:
        row(f"INT8 {mode} (ORT)", lambda r, mode=mode: "ok" if r["int8"][mode]
            else f"no: {r['int8']['errors'].get(mode, '')}")
    row("INT8 static / fp32 ORT b1", lambda r: _fmt(_ratio(r["int8"]["static_ms_b1"],
                                                           r["ort_ms_b1"]["median_ms"] if r["ort_ms_b1"] else None),
                                                    ".2f"))
    row("peak RSS MB (delta over import)", lambda r: f"{r['peak_rss_mb']:.0f} (+{r['peak_rss_delta_mb']:.0f})")
    row("RSS MB at the end (incl. exporter)", lambda r: f"{r['rss_end_mb']:.0f}")
    row("weights (safetensors) bytes", lambda r: str(r["weights_bytes"]))
    row("ONNX bytes", lambda r: _fmt(r["onnx_bytes"], "d"))
    row("intra-op threads", lambda r: str(r["threads"]))
    p = report["parity"]
    pairs = ", ".join(f"|{o} - {ref}|" for o in others) or "n/a"
    lines += ["", f"Parity ({p['inputs']}, same canonical weights, identical: {p['weights_identical']}): eager "
              f"max {pairs} = {_fmt(p['eager_max_abs'], '.2e')}; ONNX Runtime on the {len(names)} exports: "
              f"{_fmt(p['onnx_max_abs'], '.2e')}.", "",
              f"Inputs: {be[ref]['inputs']}" + (f" ({be[ref]['inputs_note']})" if be[ref]["inputs_note"] else "")
              + f". Machine: {m['platform']}, {m['cpu_count']} CPUs, python {m['python']}, "
              + ", ".join(f"{b} {be[b].get('framework_version', m.get(b))}" for b in names)
              + f", onnxruntime {m['onnxruntime']}; 1-min load average "
              f"{m['loadavg_1m_start']:.2f} at start, {m['loadavg_1m_end']:.2f} at end. "
              f"Total {report['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any]) -> bytes:
    """Grouped bars: each timed measurement's median per backend, p10-p90 as error bars (log scale:
    a training step and a batch-1 call differ by orders of magnitude)."""
    import matplotlib

    from ..checkpoint import png_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = list(report["backends"])
    names = [n for n in TIMED if any(report["backends"][b][STATS_KEYS[n]] for b in backends)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(names)), 4))
    width = 0.8 / len(backends)
    for i, b in enumerate(backends):
        st = [report["backends"][b][STATS_KEYS[n]] for n in names]
        med = [s["median_ms"] if s else np.nan for s in st]
        err = [[s["median_ms"] - s["p10_ms"] if s else 0 for s in st], [s["p90_ms"] - s["median_ms"] if s else 0
                                                                       for s in st]]
        ax.bar(np.arange(len(names)) + (i - (len(backends) - 1) / 2) * width, med, width, yerr=err, capsize=3,
               label=b)
    ax.set_xticks(np.arange(len(names)), [LABELS[n] for n in names])
    ax.set_yscale("log")
    ax.set_ylabel("median ms per call (log), p10-p90")
    ax.set_title(f"dualml bench: {report['model']} on {report['data']}, {report['settings']['threads']} thread(s)")
    ax.legend()
    fig.tight_layout()
    return png_bytes(fig)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
