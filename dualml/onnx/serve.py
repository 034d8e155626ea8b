"""``dualml predict`` and ``dualml serve``: an exported ONNX model on ONNX Runtime, from a file or over HTTP.

The serving image holds onnxruntime, numpy, omegaconf and pyyaml only, so this module imports no
framework and no web library: the server is the standard library's ``ThreadingHTTPServer``.

Serving design, in one paragraph. Every HTTP connection gets a thread that parses and checks its
request, then puts it on a bounded queue (full -> 503 at once, instead of an ever-growing backlog)
and waits on a ``Future``. One batcher thread owns the ONNX Runtime calls: it takes the first
waiting request, keeps collecting until ``max_batch`` samples are gathered or ``max_wait_ms`` has
passed, runs the concatenated batch once and hands each request its own rows. One run for many
small requests is where the throughput comes from; one thread running the session keeps ORT's
own thread pool from being oversubscribed by dozens of request threads. A request with more than
``max_batch`` samples is not refused: it runs as a batch of its own (``max_body_bytes`` already
bounds its size). If a grouped run fails, each of its requests is re-run alone, so one bad request
cannot fail the others.
"""
from __future__ import annotations

import json
import queue
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import DualmlError
from . import ort

#: rows per ONNX Runtime call in ``dualml predict`` (bounds the activations' memory on large files)
PREDICT_CHUNK = 1024
#: how often the idle batcher looks at its stop and pause flags
_POLL_S = 0.05


class InputError(DualmlError):
    """Inputs whose shape or dtype the model cannot take (HTTP 422, exit code 2 in ``predict``)."""


class QueueFull(DualmlError):
    """The request queue is full (HTTP 503 with Retry-After)."""


class ServerClosing(DualmlError):
    """The server is shutting down and will not run this request (HTTP 503)."""


class RunError(DualmlError):
    """ONNX Runtime failed on a batch that passed the input checks (HTTP 500)."""


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# ------------------------------------------------------------------------------------------- input checks
_KINDS = {"b": "booleans", "U": "strings", "S": "bytes", "O": "non-numbers (null, objects or mixed types)",
          "c": "complex numbers", "M": "datetimes", "m": "timedeltas", "V": "raw records"}


def _kind(dtype: np.dtype) -> str:
    if dtype.kind in "iu":
        return f"integers ({dtype})"
    if dtype.kind == "f":
        return f"floats ({dtype})"
    return f"{_KINDS.get(dtype.kind, str(dtype))} (dtype {dtype})"


@dataclass(frozen=True)
class Signature:
    """The model's single input: name, shape (int or None/str for dynamic dims) and numpy dtype."""

    name: str
    shape: tuple[Any, ...]
    dtype: np.dtype

    @classmethod
    def of(cls, sess: Any) -> Signature:
        name, shape, dtype = ort.input_info(sess)
        return cls(name, tuple(shape), dtype)

    def dims(self) -> list[int | str]:
        """Shape for people and JSON: dynamic dims by their name, an unnamed leading one as ``batch``."""
        return [d if isinstance(d, (int, str)) else (ort.BATCH_DIM if i == 0 else "?")
                for i, d in enumerate(self.shape)]

    @property
    def fixed_batch(self) -> int | None:
        """The batch size the model was exported with, if its batch dim is not dynamic."""
        d = self.shape[0] if self.shape else None
        return d if isinstance(d, int) else None

    def shape_text(self, skip_batch: bool = False) -> str:
        return "[" + ", ".join(map(str, self.dims()[int(skip_batch):])) + "]"

    def describe(self) -> str:
        return f"{self.shape_text()} {self.dtype}"

    def _fits(self, got: tuple[int, ...], want: tuple[Any, ...]) -> bool:
        return len(got) == len(want) and all(not isinstance(w, int) or w == g for g, w in zip(got, want))

    def prepare(self, x: np.ndarray, *, json_numbers: bool = False) -> tuple[np.ndarray, str | None]:
        """``x`` as a batch in the model's dtype, plus a note when a cast rounds values (else None).

        A single sample (the input shape without its batch dim) becomes a batch of one. Casting rules:
        integers go to an integer model if every value fits; floats go to a float model, and a
        narrowing cast (float64 -> float32) is allowed but reported, never silent. Integers are not
        turned into floats for a float model, except for JSON numbers (``json_numbers``), where
        ``1`` and ``1.0`` are the same number. Everything else (strings, booleans, null) is refused.
        """
        want, got = self.dtype, x.dtype
        expected = f"the model expects {want} numbers, shape {self.shape_text()}"
        note = None
        if got.kind in "iu" and want.kind in "iu":
            info = np.iinfo(want)
            if x.size and (int(x.min()) < info.min or int(x.max()) > info.max):
                raise InputError(f"inputs hold integers outside {want}'s range [{info.min}, {info.max}]; {expected}")
        elif want.kind == "f" and (got.kind == "f" or (json_numbers and got.kind in "iu")):
            if got.kind == "f" and got.itemsize > want.itemsize and not json_numbers:
                note = f"inputs cast from {got} to the model's {want} (values rounded to {want} precision)"
        elif got.kind in "iu" and want.kind == "f":
            raise InputError(f"inputs are {_kind(got)}; {expected}: integer inputs are only taken by integer "
                             f"models (convert with x.astype('{want}') if that is what you mean)")
        else:
            raise InputError(f"inputs are {_kind(got)}; {expected}")
        if x.ndim == len(self.shape) and self._fits(x.shape, self.shape):
            batch = x
        elif x.ndim == len(self.shape) - 1 and self._fits(x.shape, self.shape[1:]):
            batch = x[None]
        else:
            raise InputError(f"inputs have shape {list(x.shape)}; the model expects {self.shape_text()} (a batch) "
                             f"or {self.shape_text(skip_batch=True)} (one sample) of {want}")
        if batch.shape[0] == 0:
            raise InputError(f"inputs hold an empty batch (shape {list(x.shape)}); send at least one sample")
        with np.errstate(over="ignore"):  # overflow is checked just below, with a clearer message
            out = np.ascontiguousarray(batch, dtype=want)
        if want.kind == "f" and out.size and not np.isfinite(out).all() and np.isfinite(batch).all():
            raise InputError(f"inputs hold values too large for {want} (they would become inf)")
        return out, note


def from_json(inputs: Any, sig: Signature) -> np.ndarray:
    """The ``inputs`` field of a request as a batch for ``sig``; :class:`InputError` says what is wrong."""
    try:
        x = np.asarray(inputs)
    except (ValueError, TypeError):  # numpy refuses ragged nested lists
        raise InputError(f"inputs is a ragged nested list (rows of different lengths); the model expects "
                         f"{sig.describe()}") from None
    return sig.prepare(x, json_numbers=True)[0]


def classify(y: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """(argmax class per row, its probability, were the outputs already probabilities) for 2-D float
    outputs, else None. Rows that are non-negative and sum to 1 are taken as probabilities as they
    are (a model ending in softmax); anything else is treated as logits and goes through softmax."""
    if y.ndim != 2 or y.dtype.kind != "f" or y.shape[1] == 0:
        return None
    y64 = y.astype(np.float64)
    already = bool((y64 >= 0).all() and np.allclose(y64.sum(axis=1), 1.0, atol=1e-4))
    if already:
        p = y64
    else:
        e = np.exp(y64 - y64.max(axis=1, keepdims=True))
        p = e / e.sum(axis=1, keepdims=True)
    cls = p.argmax(axis=1)
    return cls, p[np.arange(len(p)), cls], already


# ------------------------------------------------------------------------------------------------ predict
def load_npy(path: str) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise DualmlError(f"input file {p} does not exist")
    with open(p, "rb") as fh:
        magic = fh.read(6)
    if magic[:2] == b"PK":
        raise DualmlError(f"input file {p} is an .npz archive; give one array saved with np.save")
    if magic != b"\x93NUMPY":
        raise DualmlError(f"input file {p} is not an .npy file (no NUMPY header); save the batch with np.save")
    try:
        return np.load(p, allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError... for broken or pickled arrays
        raise DualmlError(f"input file {p} is not a readable .npy array: {one_line(exc)}") from None


# ------------------------------------------------------------------------------------------------ batcher
@dataclass
class _Request:
    x: np.ndarray
    future: Future


class Batcher:
    """Runs ``run_fn`` on one thread over batches assembled from a bounded queue of requests.

    ``batching=False`` takes one request per run (same queue, same thread), so a load test compares
    batching itself, not two different servers. ``pause()``/``resume()`` hold the batcher between
    runs; tests use them to fill the queue deterministically.
    """

    def __init__(self, run_fn: Callable[[np.ndarray], np.ndarray], *, max_batch: int, max_wait_ms: float,
                 queue_size: int, batching: bool) -> None:
        self.run_fn, self.max_batch, self.max_wait = run_fn, max_batch, max_wait_ms / 1000.0
        self.batching = batching
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=queue_size)
        self._carry: _Request | None = None  # taken from the queue but did not fit the last batch
        self._stop = threading.Event()
        self._pause, self._paused, self._resume = threading.Event(), threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.batches = self.samples = self.requests = self.max_requests = 0
        self._thread = threading.Thread(target=self._loop, name="dualml-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, x: np.ndarray) -> Future:
        """Queue one request's batch; :class:`QueueFull` at once when the queue is full."""
        if self._stop.is_set():
            raise ServerClosing("the server is shutting down")
        fut: Future = Future()
        try:
            self._queue.put_nowait(_Request(x, fut))
        except queue.Full:
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} waiting); retry later") from None
        return fut

    def result(self, fut: Future) -> np.ndarray:
        """Wait for ``fut``; :class:`ServerClosing` if the batcher stopped without taking the request
        (one submitted in the instant of shutdown), so no handler waits forever."""
        while True:
            try:
                return fut.result(timeout=0.5)
            except FutureTimeout:
                if not self._thread.is_alive() and not fut.done():
                    raise ServerClosing("the server shut down before running this request") from None

    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def queue_size(self) -> int:
        return self._queue.maxsize

    def pause(self) -> None:
        """Hold the batcher before its next batch (returns once it is held). For tests and draining."""
        self._resume.clear()
        self._pause.set()
        while not self._paused.wait(0.1) and self._thread.is_alive():
            pass

    def resume(self) -> None:
        self._pause.clear()
        self._paused.clear()
        self._resume.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Finish the running batch, then answer everything still queued with :class:`ServerClosing`."""
        self._stop.set()
        self.resume()
        self._thread.join(timeout)
        left = [self._carry] if self._carry else []
        while True:
            try:
                left.append(self._queue.get_nowait())
            except queue.Empty:
                break
        for r in left:
            r.future.set_exception(ServerClosing("the server shut down before running this request"))

    def stats(self) -> dict[str, Any]:
        with self._lock:
            b = self.batches
            return {"batches_run": b, "samples_run": self.samples, "mean_batch_size": self.samples / b if b else 0.0,
                    "mean_requests_per_batch": self.requests / b if b else 0.0,
                    "max_requests_per_batch": self.max_requests, "queued": self.queued()}

    def _next(self) -> _Request | None:
        if self._carry is not None:
            r, self._carry = self._carry, None
            return r
        try:
            return self._queue.get(timeout=_POLL_S)
        except queue.Empty:
            return None

    def _collect(self, first: _Request) -> list[_Request]:
        group, n = [first], len(first.x)
        deadline = time.monotonic() + self.max_wait
        while self.batching and n < self.max_batch:
            remaining = deadline - time.monotonic()
            try:  # past the deadline, still take what is already waiting (no extra wait)
                r = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if n + len(r.x) > self.max_batch or r.x.shape[1:] != first.x.shape[1:]:
                self._carry = r  # starts the next batch (too many samples, or another size on a dynamic dim)
                break
            group.append(r)
            n += len(r.x)
        return group

    def _loop(self) -> None:
        while not self._stop.is_set():
            if self._pause.is_set():
                self._paused.set()
                self._resume.wait()
                continue
            first = self._next()
            if first is not None:
                self._run(self._collect(first))

    def _run(self, group: list[_Request]) -> None:
        x = group[0].x if len(group) == 1 else np.concatenate([r.x for r in group])
        try:
            y = self.run_fn(x)
            if len(group) > 1 and (y.ndim == 0 or y.shape[0] != len(x)):
                raise RunError(f"output has {y.shape} rows for a batch of {len(x)}; cannot split it per request")
        except Exception as exc:
            if len(group) > 1:  # re-run each alone, so only a request that fails by itself gets the error
                for r in group:
                    self._run([r])
                return
            group[0].future.set_exception(RunError(f"ONNX Runtime failed: {one_line(exc)}"))
            return
        with self._lock:
            self.batches += 1
            self.samples += len(x)
            self.requests += len(group)
            self.max_requests = max(self.max_requests, len(group))
        start = 0
        for r in group:
            stop = start + len(r.x)
            r.future.set_result(y if len(group) == 1 else y[start:stop])
            start = stop


# ------------------------------------------------------------------------------------------------- server
def int_setting(key: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise DualmlError(f"serve.{key}={value!r} is not allowed; allowed: an integer >= {low}")
    return value


class ModelServer(ThreadingHTTPServer):
    """HTTP server for one ONNX model: ``GET /health``, ``POST /predict`` (see :class:`_Handler`).

    ``run_fn`` replaces the ONNX Runtime call (tests inject slow or failing runs); it gets and
    returns numpy batches. ``shutdown()`` stops serving, then the batcher, then closes the socket.
    """

    daemon_threads = True
    request_queue_size = 128  # listen backlog: 5 (the default) drops connections under 32 clients

    def __init__(self, address: tuple[str, int], model_path: str, *, max_batch: int = 32, max_wait_ms: float = 5.0,
                 queue_size: int = 256, max_body_bytes: int = 1 << 20, batching: bool = True, threads: int = 1,
                 run_fn: Callable[[np.ndarray], np.ndarray] | None = None) -> None:
        max_batch = int_setting("max_batch", max_batch, 1)
        queue_size = int_setting("queue_size", queue_size, 1)
        self.max_body_bytes = int_setting("max_body_bytes", max_body_bytes, 1)
        threads = int_setting("threads", threads, 0)
        if isinstance(max_wait_ms, bool) or not isinstance(max_wait_ms, (int, float)) or max_wait_ms < 0:
            raise DualmlError(f"serve.max_wait_ms={max_wait_ms!r} is not allowed; allowed: a number >= 0")
        if not isinstance(batching, bool):
            raise DualmlError(f"serve.batching={batching!r} is not allowed; allowed: true, false")
        sess = ort.session(model_path, threads)
        self.model_path, self.threads = str(model_path), threads
        self.signature = Signature.of(sess)
        out = sess.get_outputs()[0]
        self.output = {"name": out.name, "shape": [d if isinstance(d, (int, str)) else "?" for d in out.shape],
                       "type": out.type}
        # a model exported with a fixed batch size cannot take concatenated requests
        batching = batching and self.signature.fixed_batch is None
        self.batcher = Batcher(run_fn or (lambda x: ort.run(sess, x)), max_batch=max_batch,
                               max_wait_ms=float(max_wait_ms), queue_size=queue_size, batching=batching)
        self._counts_lock = threading.Lock()
        self.served = 0
        self.rejected: dict[int, int] = {}
        self.started = time.time()
        try:
            super().__init__(address, _Handler)
        except OSError as exc:
            raise DualmlError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None
        self.batcher.start()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def count(self, status: int) -> None:
        with self._counts_lock:
            if status == 200:
                self.served += 1
            else:
                self.rejected[status] = self.rejected.get(status, 0) + 1

    def health(self) -> dict[str, Any]:
        b = self.batcher
        with self._counts_lock:
            counts = {"requests_served": self.served, "requests_rejected": sum(self.rejected.values()),
                      "rejected_by_status": {str(k): v for k, v in sorted(self.rejected.items())}}
        return {"status": "ok", "model": self.model_path,
                "input": {"name": self.signature.name, "shape": self.signature.dims(),
                          "dtype": str(self.signature.dtype)},
                "output": self.output,
                "batching": {"enabled": b.batching, "max_batch": b.max_batch, "max_wait_ms": b.max_wait * 1000.0,
                             "queue_size": b.queue_size, "max_body_bytes": self.max_body_bytes},
                "threads": self.threads, "uptime_s": round(time.time() - self.started, 3),
                "counts": {**counts, **b.stats()}}

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet for clients that hang up; anything else still gets its traceback on stderr."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def shutdown(self) -> None:
        super().shutdown()
        self.batcher.stop()
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.1 keep-alive). Every error is ``{"error": "<one line>"}`` with its status."""

    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a connection may idle or trickle a body before it is dropped
    server: ModelServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Silent: a line per request would cost more than the request under load."""

    def _send(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self.server.count(status)
        self._send(status, {"error": message}, headers)

    def _discard_body(self, limit_s: float = 2.0) -> None:
        """After refusing an unread body: stop writing, then read and drop what the client still sends
        for a moment, so it can finish sending and read our answer (closing with unread data would
        reset the connection and lose the response)."""
        try:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_WR)
            self.connection.settimeout(0.2)
            deadline = time.monotonic() + limit_s
            while time.monotonic() < deadline and self.rfile.read1(1 << 16):
                pass
        except OSError:
            pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        if path == "/health":
            self._send(200, self.server.health())
        elif path == "/predict":
            self._error(405, "use POST /predict with a JSON body {\"inputs\": [...]}", {"Allow": "POST"})
        else:
            self._error(404, f"no such path {path}; endpoints: POST /predict, GET /health")

    def do_POST(self) -> None:  # noqa: N802
        path = urlsplit(self.path).path
        if self.headers.get("Transfer-Encoding"):
            self._error(411, "chunked bodies are not accepted; send Content-Length", close=True)
            return
        length_header = self.headers.get("Content-Length")
        if length_header is None:
            self._error(411, "Content-Length is required", close=True)
            return
        length = int(length_header) if length_header.strip().isdigit() else -1
        if length < 0:
            self._error(400, f"Content-Length {length_header!r} is not a byte count", close=True)
            return
        if length > self.server.max_body_bytes:
            self._error(413, f"request body is {length} bytes; the limit is {self.server.max_body_bytes} "
                             "(serve.max_body_bytes): send fewer samples per request", close=True)
            self._discard_body()
            return
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True  # the client went away mid-body
            return
        if path != "/predict":
            if path == "/health":
                self._error(405, "use GET /health", {"Allow": "GET"})
            else:
                self._error(404, f"no such path {path}; endpoints: POST /predict, GET /health")
            return
        self._predict(body)

    def _predict(self, body: bytes) -> None:
        try:
            request = json.loads(body)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            self._error(400, f"body is not valid JSON: {one_line(exc)}")
            return
        if not isinstance(request, dict) or "inputs" not in request:
            self._error(400, "body must be a JSON object with \"inputs\": a batch [n, ...] or one sample")
            return
        try:
            x = from_json(request["inputs"], self.server.signature)
            y = self.server.batcher.result(self.server.batcher.submit(x))
        except InputError as exc:
            self._error(422, str(exc))
            return
        except QueueFull as exc:
            self._error(503, str(exc), {"Retry-After": "1"})
            return
        except ServerClosing as exc:
            self._error(503, str(exc), close=True)
            return
        except RunError as exc:
            self._error(500, str(exc))
            return
        out: dict[str, Any] = {"outputs": y.tolist()}
        if y.ndim == 2 and y.shape[1] > 0:
            out["predictions"] = y.argmax(axis=1).tolist()
        self.server.count(200)
        self._send(200, out)


def start_server(model_path: str, host: str = "127.0.0.1", port: int = 0,
                 **settings: Any) -> tuple[ModelServer, threading.Thread]:
    """Serve ``model_path`` on a background thread (``port=0``: a free port, see ``server.url``);
    ``settings`` are :class:`ModelServer`'s keywords. Stop with ``server.shutdown()``."""
    server = ModelServer((host, port), model_path, **settings)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="dualml-http",
                              daemon=True)
    thread.start()
    return server, thread
