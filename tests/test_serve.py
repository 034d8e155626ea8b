"""``dualml serve`` and ``dualml predict`` over real loopback HTTP, on a tiny ONNX model built with
onnx.helper (no framework), so every expected output is a numpy matmul."""
from __future__ import annotations

import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dualml.cli import main
from dualml.onnx import ort
from dualml.onnx.serve import InputError, Signature, start_server

onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """output = input @ W + b on input [batch, 64] float32 -> output [batch, 10]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((64, 10)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", [ort.INPUT_NAME, "W"], ["h"]),
         helper.make_node("Add", ["h", "b"], [ort.OUTPUT_NAME])],
        "tiny", [helper.make_tensor_value_info(ort.INPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, 64])],
        [helper.make_tensor_value_info(ort.OUTPUT_NAME, TensorProto.FLOAT, [ort.BATCH_DIM, 10])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")])
    path = tmp_path_factory.mktemp("serve") / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path, w, b


@pytest.fixture
def serve(model):
    """serve(**settings) -> server, stopped after the test."""
    servers = []

    def start(**settings: Any):
        server, _ = start_server(str(model[0]), port=0, **settings)
        servers.append(server)
        return server
    yield start
    for s in servers:
        s.shutdown()


def request(server, method: str, path: str, body: Any = None, raw: bytes | None = None,
            conn: http.client.HTTPConnection | None = None) -> tuple[int, dict[str, Any], Any]:
    """(status, JSON body, headers) of one request; ``raw`` sends bytes as they are."""
    own = conn is None
    conn = conn or http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    payload = json.loads(resp.read())
    if own:
        conn.close()
    return resp.status, payload, resp.headers


def post_in_background(server, x: np.ndarray) -> tuple[threading.Thread, list[Any]]:
    """POST x from a thread; the list gets (status, body, headers) when it is answered."""
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(request(server, "POST", "/predict", {"inputs": x.tolist()})))
    t.start()
    return t, got


def wait_queued(server, n: int) -> None:
    deadline = time.monotonic() + 5
    while server.batcher.queued() < n and time.monotonic() < deadline:
        time.sleep(0.005)
    assert server.batcher.queued() == n


def sample(n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 64)).astype(np.float32)


def assert_ok(server, model, x: np.ndarray, conn=None) -> None:
    status, out, _ = request(server, "POST", "/predict", {"inputs": x.tolist()}, conn=conn)
    assert status == 200, out
    ref = np.atleast_2d(x) @ model[1] + model[2]
    np.testing.assert_allclose(np.asarray(out["outputs"], np.float32), ref, atol=1e-5, rtol=1e-5)
    assert out["predictions"] == ref.argmax(1).tolist()


def test_health_reports_model_input_and_settings(serve, model):
    server = serve(max_batch=8, max_wait_ms=2.0, queue_size=16)
    status, h, _ = request(server, "GET", "/health")
    assert status == 200 and h["status"] == "ok" and h["model"] == str(model[0])
    assert h["input"] == {"name": "input", "shape": ["batch", 64], "dtype": "float32"}
    assert h["batching"] == {"enabled": True, "max_batch": 8, "max_wait_ms": 2.0, "queue_size": 16,
                             "max_body_bytes": 1 << 20}
    assert h["counts"]["requests_served"] == 0 and h["counts"]["batches_run"] == 0


def test_single_sample_and_batch_match_numpy(serve, model):
    server = serve()
    assert_ok(server, model, sample(1)[0])          # one sample: answered as a batch of one
    assert_ok(server, model, sample(5))
    assert_ok(server, model, sample(40, seed=2))     # more than max_batch (32): runs as a batch of its own
    c = request(server, "GET", "/health")[1]["counts"]
    assert c["requests_served"] == 3 and c["samples_run"] == 46


def test_32_concurrent_clients_are_batched_and_all_correct(serve, model):
    server = serve(max_batch=32, max_wait_ms=10.0)
    clients, per_client = 32, 4
    start, errors = threading.Barrier(clients), []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=20)  # keep-alive
        try:
            start.wait()
            for k in range(per_client):
                assert_ok(server, model, sample(1, seed=100 * i + k)[0], conn=conn)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            conn.close()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors[0]
    c = request(server, "GET", "/health")[1]["counts"]
    assert c["requests_served"] == clients * per_client and c["requests_rejected"] == 0
    assert c["max_requests_per_batch"] > 1 and c["batches_run"] < clients * per_client


def test_batching_off_runs_every_request_alone(serve, model):
    server = serve(batching=False)
    for i in range(3):
        assert_ok(server, model, sample(2, seed=i))
    h = request(server, "GET", "/health")[1]
    assert h["batching"]["enabled"] is False and h["counts"]["max_requests_per_batch"] == 1


@pytest.mark.parametrize("body, status, words", [
    (b'{"inputs": [[1, 2', 400, "not valid JSON"),
    (b'{"input": [1]}', 400, '"inputs"'),
    (b"[1, 2]", 400, '"inputs"'),
    (json.dumps({"inputs": sample(2)[:, :63].tolist()}).encode(), 422, "shape [2, 63]; the model expects [batch, 64]"),
    (json.dumps({"inputs": [["x"] * 64]}).encode(), 422, "strings"),
    (json.dumps({"inputs": [[None] * 64]}).encode(), 422, "non-numbers"),
    (json.dumps({"inputs": [[0.0] * 64, [0.0] * 3]}).encode(), 422, "ragged"),
    (json.dumps({"inputs": sample(100).tolist()}).encode(), 413, "limit is 20000"),
])
def test_bad_requests_get_one_line_errors_and_the_server_keeps_serving(serve, model, body, status, words):
    server = serve(max_body_bytes=20000)
    got, out, _ = request(server, "POST", "/predict", raw=body)
    assert got == status and words in out["error"] and "\n" not in out["error"], out
    assert_ok(server, model, sample(3))
    assert request(server, "GET", "/health")[1]["counts"]["rejected_by_status"] == {str(status): 1}


def test_oversized_content_length_is_refused_before_reading(serve, model):
    server = serve(max_body_bytes=2000)
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.putrequest("POST", "/predict")
    conn.putheader("Content-Length", str(10**9))   # announced, never sent
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and "10000000" in json.loads(resp.read())["error"]
    conn.close()
    assert_ok(server, model, sample(1))


def test_missing_or_bad_content_length(serve, model):
    server = serve()
    for headers, status in (({}, 411), ({"Content-Length": "ten"}, 400)):
        conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
        conn.putrequest("POST", "/predict")
        for k, v in headers.items():
            conn.putheader(k, v)
        conn.endheaders()
        resp = conn.getresponse()
        assert resp.status == status and "Content-Length" in json.loads(resp.read())["error"]
        conn.close()
    assert_ok(server, model, sample(1))


def test_shutdown_answers_queued_requests_with_503(serve, model):
    server = serve()
    server.batcher.pause()
    waiting, got = post_in_background(server, sample(1))
    wait_queued(server, 1)
    server.shutdown()
    waiting.join(10)
    assert got[0][0] == 503 and "shut down" in got[0][1]["error"]


def test_unknown_path_and_wrong_method(serve, model):
    server = serve()
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "POST", "/nope", {"inputs": [1]})[0] == 404
    assert request(server, "GET", "/predict")[0] == 405
    assert_ok(server, model, sample(1))


def test_full_queue_answers_503_with_retry_after(serve, model):
    server = serve(queue_size=1)
    server.batcher.pause()                          # nothing leaves the queue until resume()
    waiting, first = post_in_background(server, sample(1))
    wait_queued(server, 1)
    status, out, headers = request(server, "POST", "/predict", {"inputs": sample(1).tolist()})
    assert status == 503 and headers["Retry-After"] == "1" and "queue is full" in out["error"]
    server.batcher.resume()
    waiting.join(10)
    assert first[0][0] == 200
    assert_ok(server, model, sample(2))


def test_a_failing_request_in_a_batch_does_not_fail_the_others(serve, model):
    def run(x: np.ndarray) -> np.ndarray:
        if (x == 999).any():
            raise RuntimeError("poisoned input\nsecond line")
        return x @ model[1] + model[2]
    server = serve(run_fn=run, max_wait_ms=50.0)
    server.batcher.pause()
    good_job, good = post_in_background(server, sample(2))
    bad_job, bad = post_in_background(server, np.full((1, 64), 999, np.float32))
    wait_queued(server, 2)
    server.batcher.resume()                         # both go into one batch, which fails, then run alone
    good_job.join(10)
    bad_job.join(10)
    assert good[0][0] == 200
    assert bad[0][0] == 500 and bad[0][1]["error"] == "ONNX Runtime failed: poisoned input"
    assert request(server, "GET", "/health")[1]["counts"]["max_requests_per_batch"] == 1   # re-run alone


def test_input_casting_rules():
    f32 = Signature("input", ("batch", 4), np.dtype(np.float32))
    i32 = Signature("input", (None, 4), np.dtype(np.int32))
    x, note = f32.prepare(np.zeros((2, 4), np.float64))
    assert x.dtype == np.float32 and "float64" in note                    # narrowing float cast: said
    assert f32.prepare(np.zeros(4, np.float16)) [0].shape == (1, 4)       # one sample, widening: silent
    assert f32.prepare(np.zeros((2, 4), np.int64), json_numbers=True)[0].dtype == np.float32
    with pytest.raises(InputError, match="only taken by integer models"):
        f32.prepare(np.zeros((2, 4), np.int64))
    with pytest.raises(InputError, match="too large for float32"):
        f32.prepare(np.full((1, 4), 1e300))
    assert i32.prepare(np.ones((3, 4), np.int64))[0].dtype == np.int32    # fits: cast
    with pytest.raises(InputError, match="outside int32's range"):
        i32.prepare(np.full((1, 4), 2**40))
    with pytest.raises(InputError, match=r"floats \(float64\); the model expects int32 numbers, shape \[batch, 4\]"):
        i32.prepare(np.zeros((1, 4)))
    with pytest.raises(InputError, match="booleans"):
        i32.prepare(np.zeros((1, 4), bool))


def test_predict_command_prints_and_writes(model, tmp_path, capsys):
    x = sample(6)
    np.save(tmp_path / "x.npy", x)
    assert main(["predict", str(model[0]), f"input={tmp_path / 'x.npy'}"]) == 0
    ref = x @ model[1] + model[2]
    lines = capsys.readouterr().out.splitlines()
    rows = [line.split() for line in lines[2:8]]
    assert [int(r[1]) for r in rows] == ref.argmax(1).tolist()
    p = np.exp(ref - ref.max(1, keepdims=True))
    np.testing.assert_allclose([float(r[2]) for r in rows], (p / p.sum(1, keepdims=True)).max(1), atol=1e-4)
    out = tmp_path / "sub" / "y.npy"
    assert main(["predict", str(model[0]), f"input={tmp_path / 'x.npy'}", f"output={out}"]) == 0
    np.testing.assert_allclose(np.load(out), ref, atol=1e-5)
    assert str(out) in capsys.readouterr().out


@pytest.mark.parametrize("content, words", [
    (None, "does not exist"), (b"not numpy", "not an .npy file"), ("shape", "shape [3, 5]; the model expects")])
def test_predict_bad_input_is_one_line_exit_2(model, tmp_path, capsys, content, words):
    path = tmp_path / "in.npy"
    if content == "shape":
        np.save(path, np.zeros((3, 5), np.float32))
    elif content is not None:
        path.write_bytes(content)
    assert main(["predict", str(model[0]), f"input={path}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_serve_command_prints_url_and_stops_on_sigterm(model):
    proc = subprocess.Popen([sys.executable, "-m", "dualml", "serve", str(model[0]), "port=0", "max_batch=4"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.startswith(f"serving {model[0]} on http://127.0.0.1:") and "(POST /predict, GET /health)" in line
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["batching"]["max_batch"] == 4
        conn.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped: 0 requests served" in out
