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
        settings.setdefault("access_log", False)
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


def test_health_reports_model_io_but_not_its_path_or_settings(serve, model):
    server = serve(max_batch=8, max_wait_ms=2.0, queue_size=16)
    status, h, _ = request(server, "GET", "/health")
    assert status == 200 and h["status"] == "ok" and h["ready"] is True and h["model"] == "tiny"
    assert h["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 64]}]
    assert h["outputs"] == [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}]
    text = json.dumps(h)
    assert str(model[0].parent) not in text and "max_batch" not in text and "queue_size" not in text
    assert h["batching"] is True and h["counts"]["requests_served"] == 0 and h["counts"]["batches_run"] == 0


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
    assert h["batching"] is False and h["counts"]["max_requests_per_batch"] == 1


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
    def run(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        x = feeds["input"]
        if (x == 999).any():
            raise RuntimeError("poisoned input\nsecond line")
        return [x @ model[1] + model[2]]
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
        assert line.startswith(f"serving {model[0]} on http://127.0.0.1:") and "/v2/models/tiny/infer" in line
        port = int(line.split("http://127.0.0.1:")[1].split()[0])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        conn.request("GET", "/health")
        assert json.loads(conn.getresponse().read())["ready"] is True
        conn.close()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped: 0 requests served" in out


# ------------------------------------------------------------------------------------ hostile requests
def raw_exchange(server, data: bytes, pause_s: float = 0.0, chunks: int = 1, timeout: float = 10) -> tuple[int, dict]:
    """Send ``data`` on a raw socket (in ``chunks`` pieces, ``pause_s`` apart) and parse the one answer."""
    import socket

    with socket.create_connection(server.server_address[:2], timeout=timeout) as sock:
        step = max(1, -(-len(data) // chunks))
        try:
            for i in range(0, len(data), step):
                sock.sendall(data[i:i + step])
                if pause_s:
                    time.sleep(pause_s)
        except OSError:  # the server answered and closed before everything was sent
            pass
        reply = b""
        while True:
            try:
                part = sock.recv(65536)
            except OSError:
                break
            if not part:
                break
            reply += part
    head, _, body = reply.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    length = int(next(h.split(b":")[1] for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")))
    return status, json.loads(body[:length])


def assert_one_line_error(status: int, out: dict, want_status: int, words: str) -> None:
    assert status == want_status, (status, out)
    assert set(out) == {"error"} and words in out["error"] and "\n" not in out["error"], out


@pytest.mark.parametrize("body, status, words", [
    (b'{"inputs": [' + b"7" * 5000 + b"]}", 400, "more than 4300 digits"),
    (b"[" * 100_000, 400, "nested too deeply"),
    (b'{"inputs": [' + b"[" * 100_000, 400, "nested too deeply"),
    (b'{"inputs": [[NaN' + b", 0" * 63 + b"]]}", 400, "NaN is not a JSON number"),
    (b'{"inputs": [[Infinity' + b", 0" * 63 + b"]]}", 400, "Infinity is not a JSON number"),
    (b'{"inputs": [[1e400' + b", 0" * 63 + b"]]}", 422, "too large for a float"),
])
def test_parser_limits_and_non_json_numbers_are_json_errors(serve, model, body, status, words):
    server = serve(max_body_bytes=1 << 20)
    got, out, _ = request(server, "POST", "/predict", raw=body)
    assert_one_line_error(got, out, status, words)
    got, out, _ = request(server, "POST", "/v2/models/tiny/infer", raw=body)
    assert got in (400, 422) and "\n" not in out["error"]
    assert_ok(server, model, sample(2))


def test_nan_outputs_are_a_json_error_not_nan_literals(serve, model):
    server = serve(run_fn=lambda feeds: [np.full((len(feeds["input"]), 10), np.nan, np.float32)])
    status, out, _ = request(server, "POST", "/predict", {"inputs": sample(1).tolist()})
    assert_one_line_error(status, out, 500, "NaN or infinity")
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": sample(1).ravel().tolist()}]}
    status, out, _ = request(server, "POST", "/v2/models/tiny/infer", body)
    assert_one_line_error(status, out, 500, "binary outputs")


def test_a_trickled_request_gets_408_at_its_deadline_not_per_read(serve, model):
    server = serve(request_timeout_s=0.6, idle_timeout_s=5.0)
    body = json.dumps({"inputs": sample(1).tolist()}).encode()
    head = f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    # each pause (0.2 s) is far below the deadline; the whole request would take ~3 s
    status, out = raw_exchange(server, head + body, pause_s=0.2, chunks=15)
    assert_one_line_error(status, out, 408, "serve.request_timeout_s")
    status, out = raw_exchange(server, head[:20], pause_s=0.9)         # headers never finished
    assert_one_line_error(status, out, 408, "did not arrive whole")
    assert_ok(server, model, sample(1))
    assert server.m_timeouts.get() == 2


def test_connections_beyond_the_cap_get_503_and_threads_stay_bounded(serve, model):
    import socket

    server = serve(max_connections=3, request_timeout_s=30.0)
    threads_before = threading.active_count()
    holders = [socket.create_connection(server.server_address[:2], timeout=10) for _ in range(3)]
    try:
        for h in holders:
            h.sendall(b"POST /predict HTTP/1.1\r\nContent-Length: 100\r\n\r\n{")   # half-sent, held open
        deadline = time.monotonic() + 5
        while server.open_connections < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        extra = [socket.create_connection(server.server_address[:2], timeout=10) for _ in range(5)]
        for sock in extra:
            reply = b""
            while part := sock.recv(4096):
                reply += part
            sock.close()
            head, _, body = reply.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 503") and "max_connections" in json.loads(body)["error"]
        assert threading.active_count() <= threads_before + 3
    finally:
        for h in holders:
            h.close()
    deadline = time.monotonic() + 5
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.01)
    assert_ok(server, model, sample(1))


@pytest.mark.parametrize("method, path, headers, status, words", [
    ("PUT", "/predict", {}, 405, "use POST /predict"),
    ("DELETE", "/health", {}, 405, "use GET or HEAD /health"),
    ("PATCH", "/v2/models/tiny/infer", {}, 405, "use POST"),
    ("FOO", "/predict", {}, 501, "method FOO is not supported"),
    ("GET", "/" + "a" * 70_000, {}, 414, "URL is longer"),
    ("GET", "/health", {f"X-H{i}": "1" for i in range(150)}, 431, "too many or too long header lines"),
    ("GET", "/v2/models/other", {}, 404, "unknown model 'other'"),
    ("GET", "/v2/models/tiny/versions/7", {}, 404, "unknown version"),
])
def test_methods_and_http_limits_get_json_errors(serve, model, method, path, headers, status, words):
    server = serve()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.putrequest(method, path, skip_accept_encoding=True)
    for k, v in headers.items():
        conn.putheader(k, v)
    conn.endheaders()
    resp = conn.getresponse()
    out = json.loads(resp.read())
    conn.close()
    assert_one_line_error(resp.status, out, status, words)
    assert resp.headers["Content-Type"] == "application/json"
    if status == 405:
        assert "OPTIONS" in resp.headers["Allow"]
    assert_ok(server, model, sample(1))


def test_head_and_options(serve, model):
    server = serve()
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("HEAD", "/health")
    resp = conn.getresponse()
    assert resp.status == 200 and resp.read() == b"" and int(resp.headers["Content-Length"]) > 0
    conn.request("OPTIONS", "/v2/models/tiny/infer")
    resp = conn.getresponse()
    assert resp.status == 204 and resp.read() == b"" and resp.headers["Allow"] == "POST, OPTIONS"
    conn.close()


def test_token_guards_everything_but_the_probes(serve, model):
    server = serve(token="s3cret-token")
    status, out, headers = request(server, "POST", "/predict", {"inputs": sample(1).tolist()})
    assert_one_line_error(status, out, 401, "Authorization: Bearer")
    assert headers["WWW-Authenticate"].startswith("Bearer")
    for path in ("/metrics", "/v2/models/tiny", "/v2"):
        assert request(server, "GET", path)[0] == 401
    status, h, _ = request(server, "GET", "/health")
    assert status == 200 and h == {"status": "ok", "live": True, "ready": True}      # no model details
    assert request(server, "GET", "/v2/health/ready")[0] == 200
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    for token, want in (("wrong-token!", 401), ("s3cret-token", 200)):
        conn.request("POST", "/predict", body=json.dumps({"inputs": sample(1).tolist()}),
                     headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == want
    conn.close()


def test_live_before_ready_while_the_model_warms_up(model):
    release = threading.Event()

    def slow(feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        release.wait(10)   # the warm-up run blocks until the test has looked
        return [feeds["input"] @ model[1] + model[2]]
    server, _ = start_server(str(model[0]), port=0, wait=False, run_fn=slow, access_log=False)
    try:
        assert request(server, "GET", "/v2/health/live")[0] == 200
        assert request(server, "GET", "/v2/health/ready")[:2] == (503, {"ready": False})
        status, out, headers = request(server, "POST", "/predict", {"inputs": sample(1).tolist()})
        assert_one_line_error(status, out, 503, "loading")
        assert request(server, "GET", "/health")[1]["status"] == "loading"
        release.set()
        server.wait_loaded(10)
        assert request(server, "GET", "/v2/health/ready")[:2] == (200, {"ready": True})
        assert_ok(server, model, sample(2))
    finally:
        release.set()
        server.shutdown()


def test_a_model_that_cannot_load_is_live_never_ready(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not onnx")
    server, _ = start_server(str(bad), port=0, wait=False, access_log=False)
    try:
        with pytest.raises(Exception, match="cannot load"):
            server.wait_loaded(10)
        assert request(server, "GET", "/v2/health/live")[0] == 200
        assert request(server, "GET", "/v2/health/ready")[0] == 503
        assert request(server, "GET", "/health")[1]["status"] == "failed"
    finally:
        server.shutdown()


def test_access_log_has_one_line_per_request(model):
    import io

    log = io.StringIO()
    server, _ = start_server(str(model[0]), port=0, access_log=log)
    try:
        request(server, "POST", "/predict", {"inputs": sample(1).tolist()})
        raw_exchange(server, b"GET /nope\x1b[31m HTTP/1.1\r\nConnection: close\r\n\r\n")
    finally:
        server.shutdown()
    lines = log.getvalue().splitlines()
    assert len(lines) == 2 and '"POST /predict HTTP/1.1" 200' in lines[0] and '" 404 ' in lines[1]
    assert "\x1b" not in log.getvalue()


# ------------------------------------------------------------------------------ v2 protocol, metrics
@pytest.fixture(scope="module")
def multi_model(tmp_path_factory) -> Path:
    """Two inputs, two outputs, two datatypes: y = x @ W (FP32 [b, 4] -> [b, 2]), s = ids + ids (INT64 [b, 3])."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(8, dtype=np.float32).reshape(4, 2) / 8
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"]), helper.make_node("Add", ["ids", "ids"], ["s"])], "multi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("s", TensorProto.INT64, ["batch", 3])],
        [numpy_helper.from_array(w, "W")])
    path = tmp_path_factory.mktemp("multi") / "multi.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_tritonclient_infers_like_onnxruntime_in_process(serve, model, multi_model):
    httpclient = pytest.importorskip("tritonclient.http")
    server = serve(max_wait_ms=2.0)
    other, _ = start_server(str(multi_model), port=0, access_log=False)
    try:
        for srv, name in ((server, "tiny"), (other, "multi")):
            client = httpclient.InferenceServerClient(url=f"{srv.server_address[0]}:{srv.server_address[1]}")
            assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(name)
            meta = client.get_model_metadata(name)
            sess = ort.session(str(model[0] if name == "tiny" else multi_model))
            assert [i["name"] for i in meta["inputs"]] == [i.name for i in sess.get_inputs()]
            rng = np.random.default_rng(3)
            feeds = {i.name: (rng.standard_normal((5, i.shape[1])).astype(np.float32) if i.type == "tensor(float)"
                              else rng.integers(-9, 9, (5, i.shape[1])).astype(np.int64)) for i in sess.get_inputs()}
            want = sess.run(None, feeds)
            for binary in (True, False):
                inputs = []
                for i in meta["inputs"]:
                    inp = httpclient.InferInput(i["name"], list(feeds[i["name"]].shape), i["datatype"])
                    inp.set_data_from_numpy(feeds[i["name"]], binary_data=binary)
                    inputs.append(inp)
                outputs = [httpclient.InferRequestedOutput(o["name"], binary_data=binary) for o in meta["outputs"]]
                result = client.infer(name, inputs, outputs=outputs, request_id="r1")
                assert result.get_response()["id"] == "r1"
                for o, w in zip(meta["outputs"], want):
                    got = result.as_numpy(o["name"])
                    assert got.dtype == w.dtype and got.shape == w.shape
                    np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-6)
            with pytest.raises(Exception, match="datatype"):
                bad = httpclient.InferInput(meta["inputs"][0]["name"], [1, 1], "FP64")
                bad.set_data_from_numpy(np.zeros((1, 1)))
                client.infer(name, [bad])
            client.close()
    finally:
        other.shutdown()


@pytest.mark.parametrize("entry, words", [
    ({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 63}, "holds 63 values"),
    ({"name": "input", "shape": [1, 63], "datatype": "FP32", "data": [0.0] * 63}, "does not fit"),
    ({"name": "nope", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}, "unknown input 'nope'"),
    ({"name": "input", "shape": [1, 64], "datatype": "INT64", "data": [0] * 64}, "the model takes FP32"),
    ({"name": "input", "shape": [1, 64], "datatype": "FP32", "data": ["a"] * 64}, "non-numbers"),
    ({"name": "input", "shape": [1, 64], "datatype": "FP32"}, "neither"),
])
def test_v2_bad_inputs_are_400_with_a_message(serve, model, entry, words):
    server = serve()
    status, out, _ = request(server, "POST", "/v2/models/tiny/infer", {"inputs": [entry]})
    assert_one_line_error(status, out, 400, words)


def test_metrics_parse_as_prometheus_text(serve, model):
    parser = pytest.importorskip("prometheus_client.parser")
    server = serve(max_wait_ms=1.0)
    for n in (1, 3):
        assert_ok(server, model, sample(n))
    request(server, "POST", "/predict", raw=b"{")
    conn = http.client.HTTPConnection(*server.server_address[:2], timeout=10)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in parser.text_string_to_metric_families(text)}
    requests = {(s.labels["route"], s.labels["status"]): s.value for s in families["dualml_requests"].samples}
    assert requests[("predict", "200")] == 2 and requests[("predict", "400")] == 1
    batch = {(s.name, s.labels.get("le")): s.value for s in families["dualml_batch_size"].samples}
    assert batch[("dualml_batch_size_count", None)] >= 2 and batch[("dualml_batch_size_sum", None)] >= 4
    assert batch[("dualml_batch_size_bucket", "+Inf")] == batch[("dualml_batch_size_count", None)]
    latency = [s for s in families["dualml_request_duration_seconds"].samples if s.labels.get("route") == "predict"]
    assert any(s.name.endswith("_count") and s.value == 3 for s in latency)
    assert families["dualml_queue_depth"].samples[0].value == 0
    assert families["dualml_model_ready"].samples[0].value == 1


@pytest.mark.parametrize("setting, words", [
    ("max_connections=0", "serve.max_connections=0 is not allowed; allowed: an integer >= 1"),
    ("request_timeout_s=0", "serve.request_timeout_s=0 is not allowed; allowed: a number > 0"),
    ("max_wait_ms=-1", "serve.max_wait_ms=-1 is not allowed"),
    ("batching=maybe", "serve.batching='maybe' is not allowed"),
    ("port=70000", "serve.port=70000 is not allowed; allowed: an integer 0-65535"),
    ("token=short", "serve.token is not allowed"),
    ("access_log=3", "serve.access_log=3 is not allowed"),
])
def test_bad_serve_settings_are_one_line_exit_2(model, capsys, setting, words):
    assert main(["serve", str(model[0]), "port=0", setting]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1, err


# ------------------------------------------------------------------------------------ files, INT8 CPU
def test_atomic_writes_honour_the_umask(tmp_path):
    """exports, checkpoints and reports go through one writer; a 0600 model copied into a container
    is unreadable by its non-root server (issue #14)."""
    import os
    import stat

    from dualml.checkpoint import atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.onnx", b"x")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "b.onnx", b"x")
        os.umask(0o002)
        atomic_write_bytes(tmp_path / "a.onnx", b"y")          # replacing a file takes the new mode too
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.onnx").stat().st_mode) == 0o664
    assert stat.S_IMODE((tmp_path / "b.onnx").stat().st_mode) == 0o600


def test_int8_reduce_range_follows_the_cpu():
    from dualml.cpu import int8_file_warning, int8_reduce_range

    assert int8_reduce_range({"avx2", "fma"}, "x86_64")[0] is True
    assert int8_reduce_range(set(), "x86_64")[0] is True                          # unknown: the safe 7 bits
    assert int8_reduce_range({"avx2", "avx512f", "avx512_vnni"}, "x86_64")[0] is False
    assert int8_reduce_range({"avx2", "avx_vnni"}, "x86_64")[0] is False
    assert int8_reduce_range(set(), "aarch64")[0] is False
    assert "saturate" in int8_file_warning("false", {"avx2"}, "x86_64")
    assert int8_file_warning("false", {"avx512_vnni"}, "x86_64") is None
    assert int8_file_warning("true", {"avx2"}, "x86_64") is None and int8_file_warning(None) is None


def test_quantize_records_reduce_range_in_report_and_file(model, tmp_path):
    pytest.importorskip("onnxruntime.quantization")
    from dualml.errors import DualmlError
    from dualml.onnx.int8 import META_REDUCE_RANGE, quantize_onnx, resolve_reduce_range

    src = model[0]
    for setting, want in (("false", False), (True, True), ("auto", resolve_reduce_range("auto")[0])):
        out = tmp_path / f"q-{setting}.onnx"
        info = quantize_onnx(src, out, "dynamic", reduce_range=setting)
        assert info["reduce_range"] is want and info["reduce_range_why"]
        meta = ort.session(out).get_modelmeta().custom_metadata_map
        assert meta[META_REDUCE_RANGE] == str(want).lower()
    with pytest.raises(DualmlError, match="reduce_range=maybe is not allowed"):
        quantize_onnx(src, tmp_path / "q.onnx", "dynamic", reduce_range="maybe")


def test_providers_auto_and_unknown_is_one_line(tmp_path):
    """serve.providers: auto is CUDA only where onnxruntime has it; a provider this onnxruntime lacks is a
    one-line error (exit 2) listing the ones it has."""
    import onnxruntime

    from dualml.errors import ConfigError
    from dualml.onnx.ort import resolve_providers

    have = onnxruntime.get_available_providers()
    expect = ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in have \
        else ["CPUExecutionProvider"]
    assert resolve_providers("auto") == expect
    assert resolve_providers("auto", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    assert resolve_providers("cpu") == ["CPUExecutionProvider"]
    assert resolve_providers("cuda,cpu", ["CUDAExecutionProvider", "CPUExecutionProvider"]) == [
        "CUDAExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="no 'warp'; allowed: auto, CPUExecutionProvider"):
        resolve_providers("warp", ["CPUExecutionProvider"])
    if "CUDAExecutionProvider" not in have:
        out = subprocess.run([sys.executable, "-m", "dualml", "serve", str(tmp_path / "m.onnx"), "providers=cuda"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1, out.stderr
        assert "serve.providers=cuda is not allowed; this onnxruntime has no 'cuda'; allowed: auto, " in out.stderr
