"""Does request batching pay? ``dualml serve`` under concurrent single-sample clients, batching on vs off.

The server runs as its own process (``python -m dualml serve MODEL port=0 ...``, the command users run),
so its GIL is not shared with the clients. The clients are ``--clients`` threads in this process,
each on one keep-alive connection, together sending ``--requests`` POST /predict requests of one
sample each, drawn round-robin from a pool of samples whose outputs were computed beforehand by a
direct ONNX Runtime run. Every answer is checked against that reference: an answer whose argmax
differs or whose outputs are further than ``--atol`` away is *wrong*; a request with no 200 answer
(error status, timeout, dropped connection) is *lost*. Both must be 0 for the numbers to mean anything.

Reported per mode: throughput (answered requests per second of wall time), client-side latency
p50/p99, and from the server's /health the batches run and the mean batch size. The same server
settings are used for both modes except ``batching``; with it off the batcher takes one request per
ONNX Runtime call (same queue, same thread), so the comparison isolates batching itself.

Without ``--model``, a small MLP (64 -> 256 -> 256 -> 10, ReLU) is built with onnx.helper, in the
layout dualml exports use (input ``input`` [batch, 64] float32, output ``output``).

Usage: ``python benchmarks/bench_serve.py [--model M.onnx] [--requests 3000] [--clients 32]
[--max-batch 32] [--max-wait-ms 5] [--threads 1] [--out reports/bench]``. Writes ``OUT/serve.json``.
Bounded: every mode stops after ``--time-limit`` seconds even if requests are left.
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


def build_mlp(path: Path, sizes: tuple[int, ...] = (64, 256, 256, 10), seed: int = 0) -> Path:
    """A ReLU MLP as ONNX (MatMul + Add per layer), batch dim dynamic, dualml's I/O names."""
    from onnx import TensorProto, helper, numpy_helper, save

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], ort.INPUT_NAME
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        inits += [numpy_helper.from_array((rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array((0.1 * rng.standard_normal(b)).astype(np.float32), f"b{i}")]
        last = i == len(sizes) - 2
        out = ort.OUTPUT_NAME if last else f"h{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [out if last else f"a{i}"])]
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [out]))
        prev = out
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info(ort.INPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, sizes[0]])],
        [helper.make_tensor_value_info(ort.OUTPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, sizes[-1]])], inits)
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def start_server(model: Path, args: argparse.Namespace, batching: bool) -> tuple[subprocess.Popen, str, int]:
    cmd = [sys.executable, "-m", "dualml", "serve", str(model), "host=127.0.0.1", "port=0",
           f"batching={str(batching).lower()}", f"max_batch={args.max_batch}", f"max_wait_ms={args.max_wait_ms}",
           f"queue_size={args.queue_size}", f"threads={args.threads}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
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


def load_test(host: str, port: int, pool: np.ndarray, ref: np.ndarray, args: argparse.Namespace) -> dict[str, Any]:
    """``args.requests`` single-sample requests from ``args.clients`` threads; every answer checked.
    Latency is per answered (200) request, measured by the client: send to last byte read."""
    bodies = [json.dumps({"inputs": s.tolist()}).encode() for s in pool]
    lock, next_i = threading.Lock(), [0]
    latencies: list[float] = []
    wrong, lost, max_diff, errors = [0], [0], [0.0], []
    deadline = time.monotonic() + args.time_limit
    start = threading.Barrier(args.clients + 1)

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=30)
        mine, bad, gone, diff = [], 0, 0, 0.0
        start.wait()
        while time.monotonic() < deadline:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= args.requests:
                break
            k = i % len(pool)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/predict", body=bodies[k], headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                body = resp.read()
            except (OSError, http.client.HTTPException) as exc:
                gone += 1
                errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=30)
                continue
            if resp.status != 200:
                gone += 1
                errors.append(f"{resp.status}: {body[:200]!r}")
                continue
            mine.append(time.perf_counter() - t0)
            out = json.loads(body)
            y = np.asarray(out["outputs"], np.float32)[0]
            d = float(np.abs(y - ref[k]).max())
            diff = max(diff, d)
            if d > args.atol or out["predictions"][0] != int(ref[k].argmax()):
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
    start.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(args.time_limit + 60)
    wall = time.perf_counter() - t0
    sent = min(next_i[0], args.requests)
    lat = np.asarray(latencies) * 1000.0
    return {"requests": args.requests, "sent": sent, "answered_ok": sent - lost[0],
            "lost": lost[0] + args.requests - sent,
            "wrong": wrong[0], "max_abs_diff": max_diff[0], "wall_s": wall,
            "throughput_rps": (sent - lost[0]) / wall if wall else 0.0,
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p90": float(np.percentile(lat, 90)),
                           "p99": float(np.percentile(lat, 99)), "max": float(lat.max())} if len(lat) else {},
            "errors_sample": errors[:5]}


def run_mode(model: Path, args: argparse.Namespace, batching: bool, pool: np.ndarray,
             ref: np.ndarray) -> dict[str, Any]:
    proc, host, port = start_server(model, args, batching)
    try:
        for s in pool[:8]:  # warm-up: connections, ORT's first runs
            conn = http.client.HTTPConnection(host, port, timeout=10)
            conn.request("POST", "/predict", body=json.dumps({"inputs": s.tolist()}).encode())
            conn.getresponse().read()
            conn.close()
        before = get_json(host, port, "/health")["counts"]
        cpu0, client0 = cpu_seconds(proc.pid), time.process_time()
        result = load_test(host, port, pool, ref, args)
        cpu1, client1 = cpu_seconds(proc.pid), time.process_time()
        after = get_json(host, port, "/health")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    c = after["counts"]
    batches = c["batches_run"] - before["batches_run"]
    samples = c["samples_run"] - before["samples_run"]
    result.update(batching=after["batching"], batches_run=batches,
                  mean_batch_size=samples / batches if batches else 0.0,
                  max_requests_per_batch=c["max_requests_per_batch"],
                  server_rejected=c["requests_rejected"] - before["requests_rejected"],
                  server_exit_code=proc.returncode,
                  server_cpu_ms_per_request=(cpu1 - cpu0) * 1000 / args.requests if cpu0 is not None else None,
                  client_cpu_ms_per_request=(client1 - client0) * 1000 / args.requests)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="ONNX model with one input [batch, ...] float32 (default: a small MLP)")
    p.add_argument("--hidden", type=int, default=256, help="width of the built-in MLP's two hidden layers")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--queue-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads in the server")
    p.add_argument("--pool", type=int, default=256, help="distinct samples the requests cycle through")
    p.add_argument("--atol", type=float, default=1e-4, help="largest |served - direct ORT| counted as right")
    p.add_argument("--time-limit", type=float, default=180.0, help="seconds per mode before the clients stop")
    p.add_argument("--out", type=Path, default=ROOT / "reports" / "bench")
    args = p.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or build_mlp(Path(tmp) / "mlp.onnx", (64, args.hidden, args.hidden, 10))
        sess = ort.session(model, threads=1)
        name, shape, dtype = ort.input_info(sess)
        if dtype.kind != "f":
            raise SystemExit(f"{model}: input {name} is {dtype}; this benchmark sends random floats")
        sample_shape = [d if isinstance(d, int) else 1 for d in shape[1:]]
        pool = np.random.default_rng(0).standard_normal((args.pool, *sample_shape)).astype(dtype)
        ref = np.concatenate([ort.run(sess, pool[i:i + 1]) for i in range(len(pool))])  # one at a time: no batching
        ref = ref.reshape(len(pool), -1)
        machine = machine_info()
        runs = {}
        for batching in (True, False):
            key = "batching_on" if batching else "batching_off"
            print(f"{key}: {args.requests} requests from {args.clients} clients ...", flush=True)
            runs[key] = run_mode(Path(model), args, batching, pool, ref)
        machine["loadavg_1m_end"] = os.getloadavg()[0]

    on, off = runs["batching_on"], runs["batching_off"]
    ratio = on["throughput_rps"] / off["throughput_rps"] if off["throughput_rps"] else None
    report = {"benchmark": "serve", "model": str(args.model or f"built-in MLP 64-{args.hidden}-{args.hidden}-10"),
              "input": {"name": name, "shape": [str(d) if not isinstance(d, int) else d for d in shape],
                        "dtype": str(dtype)},
              "settings": {k: getattr(args, k) for k in ("requests", "clients", "max_batch", "max_wait_ms",
                                                         "queue_size", "threads", "pool", "atol")},
              "machine": machine, "runs": runs,
              "throughput_ratio_on_over_off": ratio}
    out = atomic_write(args.out / "serve.json", json.dumps(report, indent=2).encode())
    print(f"{'mode':13} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'batches':>8} {'mean batch':>10} "
          f"{'wrong':>6} {'lost':>5} {'server cpu ms/req':>17}")
    nan = float("nan")
    for key, r in runs.items():
        lat = r["latency_ms"]
        print(f"{key:13} {r['throughput_rps']:8.1f} {lat.get('p50', nan):8.2f} {lat.get('p99', nan):8.2f} "
              f"{r['batches_run']:8d} {r['mean_batch_size']:10.2f} {r['wrong']:6d} {r['lost']:5d} "
              f"{r['server_cpu_ms_per_request'] or nan:17.3f}")
    print(f"throughput on/off: {ratio or nan:.2f}x; largest |served - direct ORT| "
          f"{max(on['max_abs_diff'], off['max_abs_diff']):.2e}")
    print(f"report: {out}")


if __name__ == "__main__":
    main()
