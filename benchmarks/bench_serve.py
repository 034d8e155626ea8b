"""Does request batching pay? ``dualml serve`` under 32 concurrent single-sample clients, batching on
vs off, against the in-process ONNX Runtime ceiling at the batch sizes the server formed.

Cases (default): resnet18 at 3x64x64 (inference dominates: ~20 ms a sample at batch 1 on one thread)
and the digits cnn at 1x8x8 (request handling dominates: ~40 µs of inference), both exported from
their seeded initial weights with ``dualml export backend=torch`` (weights do not change the speed).
``--model NAME=FILE.onnx`` (repeatable) benchmarks other files instead.

The server runs as its own process (``python -m dualml serve FILE port=0 ...``, the command users run,
access log on, written to /dev/null), so its GIL is not shared with the clients. The clients are
``--clients`` threads in this process, each on one keep-alive connection, together sending a
case's request budget of one-sample requests round-robin over a pool of samples whose outputs were
computed beforehand by a direct ONNX Runtime run. Every answer is checked against that reference
(argmax equal, |diff| <= ``--atol``); an answer that is not is *wrong*, a request with no 200 answer
is *lost*. Both must be 0 for the numbers to mean anything.

``--protocol``: ``v2`` (default) sends Open Inference Protocol requests with binary tensor data (what
``tritonclient`` sends by default; the image models' choice), ``predict`` sends dualml's JSON
``/predict``. JSON costs the server 10-20 ms of parsing per 3x64x64 request, which would hide what
batching does to inference; the cnn's requests are small either way.

Reported per case and mode: throughput (answered requests per second of wall time), client-side
latency p50/p99, batches run and mean batch size; for batching on, the **ceiling**: ONNX Runtime in
this process (same thread count) running batches of exactly the sizes the server formed (from
/health's ``batch_sizes``), samples per second of pure ``session.run``. Goal (issue #14): on the
resnet, batching on >= 2.5x off and >= 70% of the ceiling; on the cnn, on never slower than off.

Interleaved: ``--rounds`` rounds each run on, then off (alternating the order), then the ceiling at
that round's batch sizes; on a shared machine whose load changes by the minute, separate runs of
each mode measured the load, not batching (one such pair gave on/off 0.6x, the next 1.4x).

Usage: ``python benchmarks/bench_serve.py [--model NAME=FILE] [--protocol v2|predict] [--clients 32]
[--seconds 24] [--rounds 4] [--max-batch 32] [--max-wait-ms 0] [--threads 1] [--out reports/bench]``.
Writes ``OUT/serve.json``.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import atomic_write, machine_info

from dualml.onnx import ort

ROOT = Path(__file__).resolve().parent.parent
#: default cases: name -> (dualml export overrides, request budget per mode)
CASES = {"resnet18_3x64x64": (["model=resnet18", "model.image_size=64"], 3000),
         "cnn_1x8x8": (["model=cnn"], 20000)}


def export(name: str, overrides: list[str], tmp: Path) -> Path:
    """The case's model as ONNX, from its seeded initial weights (needs torch)."""
    out = tmp / f"{name}.onnx"
    subprocess.run([sys.executable, "-m", "dualml", "export", "backend=torch", *overrides, f"out={out}",
                    f"out_dir={tmp}"], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return out


def start_server(model: Path, args: argparse.Namespace, batching: bool) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, "-m", "dualml", "serve", str(model), "host=127.0.0.1", "port=0", "name=m",
           f"batching={str(batching).lower()}", f"max_batch={args.max_batch}", f"max_wait_ms={args.max_wait_ms}",
           f"queue_size={args.queue_size}", f"threads={args.threads}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    line = proc.stdout.readline()
    if "http://" not in line:
        proc.kill()
        raise SystemExit(f"server did not start: {line!r}")
    host, port = line.split("http://", 1)[1].split()[0].rsplit(":", 1)
    return proc, host, int(port)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (Linux /proc), to see whether the server or the clients saturate."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def get_json(host: str, port: int, path: str) -> dict[str, Any]:
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.request("GET", path)
    out = json.loads(conn.getresponse().read())
    conn.close()
    return out


def encode(sample: np.ndarray, input_name: str, protocol: str) -> tuple[str, bytes, dict[str, str]]:
    """(path, body, headers) of a one-sample request."""
    if protocol == "predict":
        return "/predict", json.dumps({"inputs": sample.tolist()}).encode(), {"Content-Type": "application/json"}
    x = np.ascontiguousarray(sample[None])
    head = json.dumps({"inputs": [{"name": input_name, "shape": list(x.shape), "datatype": "FP32",
                                   "parameters": {"binary_data_size": x.nbytes}}],
                       "parameters": {"binary_data_output": True}}).encode()
    return "/v2/models/m/infer", head + x.tobytes(), {"Inference-Header-Content-Length": str(len(head)),
                                                      "Content-Type": "application/octet-stream"}


def decode(body: bytes, headers: Any, protocol: str) -> np.ndarray:
    """The first output row of an answer."""
    if protocol == "predict":
        return np.asarray(json.loads(body)["outputs"], np.float32)[0]
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:n])
    out = head["outputs"][0]
    return np.frombuffer(body[n:n + out["parameters"]["binary_data_size"]], np.float32).reshape(out["shape"])[0]


def load_test(host: str, port: int, requests: list[tuple[str, bytes, dict[str, str]]], ref: np.ndarray,
              budget: int, args: argparse.Namespace) -> dict[str, Any]:
    """Up to ``budget`` one-sample requests from ``args.clients`` threads for at most ``args.seconds``;
    every answer checked. Latency per answered (200) request, client side: send to last byte read."""
    lock, next_i = threading.Lock(), [0]
    latencies: list[float] = []
    wrong, lost, max_diff, errors = [0], [0], [0.0], []
    start = threading.Barrier(args.clients + 1)
    deadline = [0.0]

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        mine, bad, gone, diff = [], 0, 0, 0.0
        start.wait()
        while time.monotonic() < deadline[0]:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= budget:
                break
            k = i % len(requests)
            path, body, headers = requests[k]
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                gone += 1
                errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=60)
                continue
            if resp.status != 200:
                gone += 1
                errors.append(f"{resp.status}: {data[:200]!r}")
                continue
            mine.append(time.perf_counter() - t0)
            y = decode(data, resp.headers, args.protocol)
            d = float(np.abs(y - ref[k]).max())
            diff = max(diff, d)
            if d > args.atol or int(y.argmax()) != int(ref[k].argmax()):
                bad += 1
        conn.close()
        with lock:
            latencies.extend(mine)
            wrong[0] += bad
            lost[0] += gone
            max_diff[0] = max(max_diff[0], diff)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
    for t in threads:
        t.start()
    deadline[0] = time.monotonic() + args.seconds
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(args.seconds + 120)
    wall = time.perf_counter() - t0
    sent = min(next_i[0], budget)
    lat = np.asarray(latencies) * 1000.0
    return {"sent": sent, "answered_ok": sent - lost[0], "lost": lost[0], "wrong": wrong[0],
            "max_abs_diff": max_diff[0], "wall_s": wall, "throughput_rps": (sent - lost[0]) / wall if wall else 0.0,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)), "max": float(lat.max())} if len(lat) else {},
            "errors_sample": errors[:5], "_latencies_ms": lat.tolist()}


def run_mode(model: Path, args: argparse.Namespace, batching: bool, requests: list[Any], ref: np.ndarray,
             budget: int) -> dict[str, Any]:
    proc, host, port = start_server(model, args, batching)
    try:
        for path, body, headers in requests[:4]:  # warm-up: connections, ORT's first runs
            conn = http.client.HTTPConnection(host, port, timeout=60)
            conn.request("POST", path, body=body, headers=headers)
            conn.getresponse().read()
            conn.close()
        before = get_json(host, port, "/health")["counts"]
        cpu0 = cpu_seconds(proc.pid)
        result = load_test(host, port, requests, ref, budget, args)
        cpu1 = cpu_seconds(proc.pid)
        after = get_json(host, port, "/health")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    c = after["counts"]
    sizes = {int(k): v - before["batch_sizes"].get(k, 0) for k, v in c["batch_sizes"].items()}
    sizes = {k: v for k, v in sizes.items() if v > 0}
    batches = sum(sizes.values())
    result.update(batching=after["batching"], batches_run=batches,
                  mean_batch_size=sum(k * v for k, v in sizes.items()) / batches if batches else 0.0,
                  batch_sizes=dict(sorted(sizes.items())), server_exit_code=proc.returncode,
                  server_cpu_ms_per_request=(cpu1 - cpu0) * 1000 / max(1, result["answered_ok"])
                  if cpu0 is not None and cpu1 is not None else None)
    return result


def ceiling(model: Path, sizes: dict[int, int], sample_shape: list[int], threads: int,
            seconds: float = 6.0) -> dict[str, Any]:
    """Pure ``session.run`` samples/s at the server's batch sizes: each size timed (median of a few
    runs), weighted by how many batches of that size the server ran."""
    sess = ort.session(model, threads)
    rng = np.random.default_rng(1)
    per_size: dict[int, float] = {}
    budget = seconds / max(1, len(sizes))
    for b in sorted(sizes):
        x = rng.standard_normal((b, *sample_shape)).astype(np.float32)
        ort.run(sess, x)
        times, t_end = [], time.perf_counter() + budget
        while len(times) < 3 or (time.perf_counter() < t_end and len(times) < 50):
            t0 = time.perf_counter()
            ort.run(sess, x)
            times.append(time.perf_counter() - t0)
        per_size[b] = float(np.median(times))
    samples = sum(b * n for b, n in sizes.items())
    busy = sum(per_size[b] * n for b, n in sizes.items())
    return {"samples_per_s": samples / busy if busy else 0.0,
            "ms_per_run": {str(b): 1000 * t for b, t in per_size.items()}}


def merge(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One mode's rounds as one result: counts summed, throughput = answered / wall, latency pooled."""
    lat = np.concatenate([np.asarray(p.pop("_latencies_ms")) for p in parts])
    sizes: dict[int, int] = {}
    for p in parts:
        for k, v in p["batch_sizes"].items():
            sizes[k] = sizes.get(k, 0) + v
    ok, wall = sum(p["answered_ok"] for p in parts), sum(p["wall_s"] for p in parts)
    batches = sum(sizes.values())
    cpu = [p["server_cpu_ms_per_request"] for p in parts if p["server_cpu_ms_per_request"] is not None]
    return {"rounds": len(parts), "sent": sum(p["sent"] for p in parts), "answered_ok": ok,
            "lost": sum(p["lost"] for p in parts), "wrong": sum(p["wrong"] for p in parts),
            "max_abs_diff": max(p["max_abs_diff"] for p in parts), "wall_s": wall,
            "throughput_rps": ok / wall if wall else 0.0,
            "throughput_rps_per_round": [p["throughput_rps"] for p in parts],
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)), "max": float(lat.max())} if len(lat) else {},
            "batching": parts[0]["batching"], "batches_run": batches,
            "mean_batch_size": sum(k * v for k, v in sizes.items()) / batches if batches else 0.0,
            "batch_sizes": dict(sorted(sizes.items())),
            "server_cpu_ms_per_request": float(np.mean(cpu)) if cpu else None,
            "errors_sample": [e for p in parts for e in p["errors_sample"]][:5]}


def bench_case(name: str, model: Path, budget: int, args: argparse.Namespace) -> dict[str, Any]:
    """``args.rounds`` rounds, each running both modes (order alternating) for a share of ``args.seconds``
    and timing the ceiling at that round's batch sizes, so load from other processes on a shared
    machine falls on all three alike rather than on whichever ran during a busy spell."""
    sess = ort.session(model, threads=1)
    input_name, shape, dtype = ort.input_info(sess)
    sample_shape = [d if isinstance(d, int) else 1 for d in shape[1:]]
    pool = np.random.default_rng(0).standard_normal((args.pool, *sample_shape)).astype(np.float32)
    ref = np.concatenate([ort.run(sess, pool[i:i + 1]) for i in range(len(pool))]).reshape(len(pool), -1)
    requests = [encode(s, input_name, args.protocol) for s in pool]
    slice_args = argparse.Namespace(**{**vars(args), "seconds": args.seconds / args.rounds})
    parts: dict[str, list[dict[str, Any]]] = {"batching_on": [], "batching_off": []}
    ceil_samples = ceil_busy = 0.0
    for r in range(args.rounds):
        for batching in ((True, False) if r % 2 == 0 else (False, True)):
            key = "batching_on" if batching else "batching_off"
            print(f"{name} round {r + 1}/{args.rounds} {key}: {args.clients} clients, "
                  f"{slice_args.seconds:g} s ...", flush=True)
            parts[key].append(run_mode(model, slice_args, batching, requests, ref, budget // args.rounds))
        sizes = parts["batching_on"][-1]["batch_sizes"]
        c = ceiling(model, sizes, sample_shape, args.threads, seconds=max(1.0, slice_args.seconds / 3))
        n = sum(b * k for b, k in sizes.items())
        ceil_samples += n
        ceil_busy += n / c["samples_per_s"] if c["samples_per_s"] else 0.0
    runs = {k: merge(v) for k, v in parts.items()}
    on, off = runs["batching_on"], runs["batching_off"]
    ceil = {"samples_per_s": ceil_samples / ceil_busy if ceil_busy else 0.0}
    return {"model": str(model), "input": {"name": input_name, "shape": [d if isinstance(d, int) else str(d)
                                                                          for d in shape], "dtype": str(dtype)},
            "runs": runs, "ceiling": ceil,
            "on_over_off": on["throughput_rps"] / off["throughput_rps"] if off["throughput_rps"] else None,
            "on_over_ceiling": on["throughput_rps"] / ceil["samples_per_s"] if ceil["samples_per_s"] else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", action="append", default=[], metavar="NAME=FILE",
                   help="benchmark this ONNX file (one float32 input [batch, ...]); repeatable; default: "
                        + ", ".join(CASES))
    p.add_argument("--protocol", choices=("v2", "predict"), default="v2")
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=24.0, help="per mode, over all rounds; the request budget "
                   "may end it sooner")
    p.add_argument("--rounds", type=int, default=4, help="on/off/ceiling rounds, interleaved")
    p.add_argument("--requests", type=int, default=None, help="request budget per mode (default: per case)")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=0.0)
    p.add_argument("--queue-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads in the server and ceiling")
    p.add_argument("--pool", type=int, default=64, help="distinct samples the requests cycle through")
    p.add_argument("--atol", type=float, default=1e-3, help="largest |served - direct ORT| counted as right")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = p.parse_args()

    machine = machine_info()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.model:
            cases = {m.split("=", 1)[0]: (Path(m.split("=", 1)[1]), args.requests or 5000) for m in args.model}
        else:
            cases = {n: (export(n, o, Path(tmp)), args.requests or b) for n, (o, b) in CASES.items()}
        for name, (model, budget) in cases.items():
            results[name] = bench_case(name, model, budget, args)
    machine["loadavg_1m_end"] = os.getloadavg()[0]
    report = {"benchmark": "serve", "protocol": args.protocol, "cases": results, "machine": machine,
              "settings": {k: getattr(args, k) for k in ("clients", "seconds", "rounds", "max_batch", "max_wait_ms",
                                                         "queue_size", "threads", "pool", "atol")}}
    out = atomic_write(args.out / "serve.json", json.dumps(report, indent=2).encode())
    print(f"{'case':18} {'mode':13} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean batch':>10} "
          f"{'wrong':>6} {'lost':>5} {'srv cpu ms/req':>14}")
    nan = float("nan")
    for name, r in results.items():
        for key, m in r["runs"].items():
            lat = m["latency_ms"]
            print(f"{name:18} {key:13} {m['throughput_rps']:8.1f} {lat.get('p50', nan):8.2f} "
                  f"{lat.get('p99', nan):8.2f} {m['mean_batch_size']:10.2f} {m['wrong']:6d} {m['lost']:5d} "
                  f"{m['server_cpu_ms_per_request'] or nan:14.3f}")
        print(f"{name:18} {'ceiling':13} {r['ceiling']['samples_per_s']:8.1f}  (in-process ORT at the formed batch "
              f"sizes); on/off {r['on_over_off'] or nan:.2f}x, on/ceiling {r['on_over_ceiling'] or nan:.0%}")
    print(f"load average 1 min: start {machine.get('loadavg_1m_start', nan):.2f}, end {machine['loadavg_1m_end']:.2f}")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
