"""``dualml predict`` and ``dualml serve``: an exported ONNX model on ONNX Runtime, from a file or over HTTP.

The serving image holds onnxruntime, numpy, omegaconf and pyyaml only, so this module imports no
framework and no web library: the server is the standard library's ``ThreadingHTTPServer``, chosen on
measurement (``benchmarks/bench_serve.py``; the figures are in README.md): with one batcher thread
running ONNX Runtime and the GIL released during runs, the HTTP side is not what limits a model
whose inference dominates, and nothing has to be pinned in the image.

Routes: ``POST /predict`` (dualml's own JSON, kept for existing users), the Open Inference Protocol
v2 (``/v2``, ``/v2/health/live|ready``, ``/v2/models/{name}[/versions/1][/ready|/infer]``, see
dualml/onnx/v2.py), ``GET /health`` and Prometheus text at ``GET /metrics``. Live and ready differ:
the socket listens (live) while the ONNX Runtime session loads and warms up; ready comes after.

Serving design. Every connection gets a thread (at most ``max_connections``; beyond that 503 and
close) that parses and checks its request, then puts it on a bounded queue (full -> 503 at once)
and waits on a ``Future``. One batcher thread owns the ONNX Runtime calls: it takes the first
waiting request plus whatever else is already waiting (and, with ``max_wait_ms`` > 0, what arrives
until that long after the first was queued), up to ``max_batch`` samples, runs them as one batch and
hands each request its rows. Because requests queue while a batch runs, batches grow by themselves
exactly when inference is the bottleneck, and stay at one request (no added latency) when it is not.
One thread running the session keeps ORT's thread pool from being oversubscribed by request threads.
A request with more than ``max_batch`` samples runs as a batch of its own (``max_body_bytes`` bounds
it). If a grouped run fails, each of its requests is re-run alone, so one bad request cannot fail
the others.

Hostile clients: every request must arrive whole within ``request_timeout_s`` of its first byte
(a per-request deadline, not a per-read timeout, so a body trickled a byte at a time cannot hold a
thread); an idle keep-alive connection is closed after ``idle_timeout_s``. Every error, including
the ones the standard library would answer with HTML (unknown methods, 414, 431), is
``{"error": "<one line>"}`` with its status. ``token`` (or ``DUALML_SERVE_TOKEN``) requires
``Authorization: Bearer <token>`` on every route but the health probes.
"""
from __future__ import annotations

import hmac
import io
import math
import queue
import re
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import numpy as np

from ..cpu import int8_file_warning
from ..errors import DualmlError
from ..version import __version__
from . import metrics, ort, v2
from .int8 import META_REDUCE_RANGE

#: rows per ONNX Runtime call in ``dualml predict`` (bounds the activations' memory on large files)
PREDICT_CHUNK = 1024
#: how often the idle batcher looks at its stop and pause flags
_POLL_S = 0.05
#: the environment variable that sets the bearer token when ``serve.token`` is not given
TOKEN_ENV = "DUALML_SERVE_TOKEN"
#: the version every model is served as (one model, one file)
MODEL_VERSION = "1"


class InputError(DualmlError):
    """Inputs whose shape or dtype the model cannot take (HTTP 422, exit code 2 in ``predict``)."""


class QueueFull(DualmlError):
    """The request queue is full (HTTP 503 with Retry-After)."""


class ServerClosing(DualmlError):
    """The server is shutting down and will not run this request (HTTP 503)."""


class RunError(DualmlError):
    """ONNX Runtime failed on a batch that passed the input checks (HTTP 500)."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type's name when it has none): errors are one line."""
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
class Signature(v2.TensorSpec):
    """One model input (name, shape with int or None/str dims, numpy dtype) with dualml's own request
    conventions: a sample without its batch dim is a batch of one, and JSON numbers cast by rule."""

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
    """The ``inputs`` field of a request as a batch for ``sig``; :class:`InputError` says what is wrong.

    JSON floats beyond float64 (``1e400``) parse as infinity: refused here, since running them would
    answer NaN, which JSON cannot carry."""
    try:
        x = np.asarray(inputs)
    except (ValueError, TypeError, RecursionError):  # numpy refuses ragged nested lists
        raise InputError(f"inputs is a ragged nested list (rows of different lengths); the model expects "
                         f"{sig.describe()}") from None
    if x.dtype.kind == "f" and x.size and not np.isfinite(x).all():
        raise InputError("inputs hold a number too large for a float (such as 1e400); JSON has no infinity "
                         f"or NaN; the model expects {sig.describe()}")
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
Feeds = dict[str, np.ndarray]
RunFn = Callable[[Feeds], list[np.ndarray]]


@dataclass
class _Request:
    feeds: Feeds
    rows: int
    key: tuple[Any, ...]  # what must match to share a batch: every input's dtype and dims after the batch dim
    future: Future
    queued_at: float


class Batcher:
    """Runs ``run_fn`` (feeds by input name -> list of outputs) on one thread over batches assembled
    from a bounded queue of requests.

    ``batching=False`` takes one request per run (same queue, same thread), so a load test compares
    batching itself, not two different servers. ``pause()``/``resume()`` hold the batcher between
    runs; tests use them to fill the queue deterministically. ``on_batch(samples, requests)`` is
    called after every successful run (the server's metrics).
    """

    def __init__(self, run_fn: RunFn, *, max_batch: int, max_wait_ms: float, queue_size: int, batching: bool,
                 on_batch: Callable[[int, int], None] | None = None) -> None:
        self.run_fn, self.max_batch, self.max_wait = run_fn, max_batch, max_wait_ms / 1000.0
        self.batching, self.on_batch = batching, on_batch
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=queue_size)
        self._carry: _Request | None = None  # taken from the queue but did not fit the last batch
        self._stop = threading.Event()
        self._pause, self._paused, self._resume = threading.Event(), threading.Event(), threading.Event()
        self._lock = threading.Lock()
        self.batches = self.samples = self.requests = self.max_requests = 0
        self.sizes: dict[int, int] = {}  # samples per run -> runs: what a benchmark's in-process ceiling replays
        self._thread = threading.Thread(target=self._loop, name="dualml-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def submit(self, feeds: Feeds) -> Future:
        """Queue one request's feeds (every array [rows, ...]); :class:`QueueFull` at once when full."""
        if self._stop.is_set():
            raise ServerClosing("the server is shutting down")
        first = next(iter(feeds.values()))
        key = tuple((k, v.dtype.str, v.shape[1:]) for k, v in feeds.items())
        fut: Future = Future()
        try:
            self._queue.put_nowait(_Request(feeds, len(first), key, fut, time.monotonic()))
        except queue.Full:
            raise QueueFull(f"the request queue is full ({self._queue.maxsize} waiting); retry later") from None
        return fut

    def result(self, fut: Future) -> list[np.ndarray]:
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
        if self._thread.is_alive():
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
                    "max_requests_per_batch": self.max_requests, "queued": self.queued(),
                    "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}

    def _next(self) -> _Request | None:
        if self._carry is not None:
            r, self._carry = self._carry, None
            return r
        try:
            return self._queue.get(timeout=_POLL_S)
        except queue.Empty:
            return None

    def _collect(self, first: _Request) -> list[_Request]:
        """``first`` plus what is already waiting, and with ``max_wait`` > 0 what arrives until
        ``max_wait`` after ``first`` was queued (not after it was taken: a request that already waited
        for the previous batch is not made to wait again)."""
        group, n = [first], first.rows
        deadline = first.queued_at + self.max_wait
        while self.batching and n < self.max_batch:
            remaining = deadline - time.monotonic()
            try:  # past the deadline, still take what is already waiting (no extra wait)
                r = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if n + r.rows > self.max_batch or r.key != first.key:
                self._carry = r  # starts the next batch (too many samples, or another size on a dynamic dim)
                break
            group.append(r)
            n += r.rows
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
        if len(group) == 1:
            feeds = group[0].feeds
        else:
            feeds = {k: np.concatenate([r.feeds[k] for r in group]) for k in group[0].feeds}
        rows = sum(r.rows for r in group)
        try:
            ys = self.run_fn(feeds)
            if len(group) > 1 and any(y.ndim == 0 or y.shape[0] != rows for y in ys):
                raise RunError(f"outputs have {[list(y.shape) for y in ys]} for a batch of {rows}; "
                               "cannot split them per request")
        except Exception as exc:
            if len(group) > 1:  # re-run each alone, so only a request that fails by itself gets the error
                for r in group:
                    self._run([r])
                return
            group[0].future.set_exception(RunError(f"ONNX Runtime failed: {one_line(exc)}"))
            return
        with self._lock:
            self.batches += 1
            self.samples += rows
            self.requests += len(group)
            self.max_requests = max(self.max_requests, len(group))
            self.sizes[rows] = self.sizes.get(rows, 0) + 1
        if self.on_batch is not None:
            self.on_batch(rows, len(group))
        if len(group) == 1:
            group[0].future.set_result(ys)
            return
        start = 0
        for r in group:
            stop = start + r.rows
            r.future.set_result([y[start:stop] for y in ys])
            start = stop


# ------------------------------------------------------------------------------------------------- server
def int_setting(key: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` if it is an integer in [low, high]; else the one-line error naming ``serve.<key>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < low or (high is not None and value > high):
        allowed = f"an integer >= {low}" if high is None else f"an integer {low}-{high}"
        raise DualmlError(f"serve.{key}={value!r} is not allowed; allowed: {allowed}")
    return value


def number_setting(key: str, value: Any, low: float, strict: bool = False) -> float:
    """``value`` as a float if it is a number >= ``low`` (> with ``strict``); else a one-line error."""
    bad = isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
    if bad or value < low or (strict and value == low):
        raise DualmlError(f"serve.{key}={value!r} is not allowed; allowed: a number {'>' if strict else '>='} {low:g}")
    return float(value)


def bool_setting(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise DualmlError(f"serve.{key}={value!r} is not allowed; allowed: true, false")
    return value


@dataclass(frozen=True)
class ServedModel:
    """What the handlers need of the loaded model: its I/O and whether requests may be concatenated."""

    name: str
    inputs: list[v2.TensorSpec]
    outputs: list[v2.TensorSpec]
    batchable: bool

    def signature(self, spec: v2.TensorSpec) -> Signature:
        return Signature(spec.name, spec.shape, spec.dtype)

    def metadata(self) -> dict[str, Any]:
        """``GET /v2/models/{name}``'s body."""
        return {"name": self.name, "versions": [MODEL_VERSION], "platform": "onnxruntime_onnx",
                "inputs": [s.metadata() for s in self.inputs], "outputs": [s.metadata() for s in self.outputs]}


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class ModelServer(ThreadingHTTPServer):
    """HTTP server for one ONNX model (routes in the module docstring, handling in :class:`_Handler`).

    The constructor checks the settings and binds the socket; :meth:`load` creates and warms up the
    ONNX Runtime session (``start_server`` runs it). ``run_fn`` replaces the ONNX Runtime call (tests
    inject slow or failing runs): feeds by input name -> list of outputs. ``shutdown()`` stops
    serving, then the batcher, then closes the socket.
    """

    daemon_threads = True
    request_queue_size = 128  # listen backlog: 5 (the default) drops connections under 32 clients

    def __init__(self, address: tuple[str, int], model_path: str, *, max_batch: int = 32, max_wait_ms: float = 0.0,
                 queue_size: int = 256, max_body_bytes: int = 1 << 20, batching: bool = True, threads: int = 1,
                 max_connections: int = 128, request_timeout_s: float = 30.0, idle_timeout_s: float = 15.0,
                 token: str | None = None, access_log: bool | IO[str] = True, name: str | None = None,
                 run_fn: RunFn | None = None, providers: Any = "auto") -> None:
        self.max_batch = int_setting("max_batch", max_batch, 1)
        self.queue_size = int_setting("queue_size", queue_size, 1)
        self.max_body_bytes = int_setting("max_body_bytes", max_body_bytes, 1)
        self.threads = int_setting("threads", threads, 0)
        self.max_connections = int_setting("max_connections", max_connections, 1)
        self.max_wait_ms = number_setting("max_wait_ms", max_wait_ms, 0.0)
        self.request_timeout_s = number_setting("request_timeout_s", request_timeout_s, 0.0, strict=True)
        self.idle_timeout_s = number_setting("idle_timeout_s", idle_timeout_s, 0.0, strict=True)
        self.batching = bool_setting("batching", batching)
        self.providers = ort.resolve_providers(providers)  # checked before the socket opens: one line, exit 2
        if token is not None and (not isinstance(token, str) or not token.strip() or len(token) < 8):
            raise DualmlError("serve.token is not allowed: give a string of at least 8 characters (or null; "
                              f"prefer the {TOKEN_ENV} environment variable, which process listings do not show)")
        self.token = token.encode() if token else None
        if name is not None and (not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name)):
            raise DualmlError(f"serve.name={name!r} is not allowed; allowed: 1-64 letters, digits, '_', '.', '-'")
        self.model_path, self.run_fn = str(model_path), run_fn
        self.name = name or re.sub(r"[^A-Za-z0-9_.-]", "_", Path(model_path).stem)[:64] or "model"
        if access_log is True:
            access_log = sys.stderr
        self.access_log: IO[str] | None = access_log or None
        self._log_lock = threading.Lock()
        self.model: ServedModel | None = None
        self.batcher: Batcher | None = None
        self.state, self.load_error = "loading", None
        self.warnings: list[str] = []
        self._loaded, self._closing = threading.Event(), False
        self._conn_lock = threading.Lock()
        self.open_connections = 0
        self.started = time.time()
        self._init_metrics()
        try:
            super().__init__(address, _Handler)
        except OSError as exc:
            raise DualmlError(f"cannot listen on {address[0]}:{address[1]}: {exc.strerror or exc}") from None

    def _init_metrics(self) -> None:
        r = self.registry = metrics.Registry()
        self.m_requests = metrics.Counter(r, "dualml_requests_total", "HTTP requests answered, by route and status.",
                                          ("route", "status"))
        self.m_latency = metrics.Histogram(r, "dualml_request_duration_seconds",
                                           "Seconds from a request's first byte to its answer, by route.",
                                           metrics.LATENCY_BUCKETS, ("route",))
        self.m_batch = metrics.Histogram(r, "dualml_batch_size", "Samples per ONNX Runtime run.",
                                         metrics.BATCH_BUCKETS)
        self.m_batch_requests = metrics.Histogram(r, "dualml_batch_requests", "Requests per ONNX Runtime run.",
                                                  metrics.BATCH_BUCKETS)
        metrics.Gauge(r, "dualml_queue_depth", "Requests waiting for the batcher.",
                      lambda: self.batcher.queued() if self.batcher else 0)
        metrics.Gauge(r, "dualml_model_ready", "1 once the ONNX Runtime session is loaded and warmed up.",
                      lambda: int(self.state == "ready"))
        metrics.Gauge(r, "dualml_connections_open", "Connections being served (at most serve.max_connections).",
                      lambda: self.open_connections)
        self.m_refused = metrics.Counter(r, "dualml_connections_refused_total",
                                         "Connections answered 503 because serve.max_connections were open.")
        self.m_timeouts = metrics.Counter(r, "dualml_request_timeouts_total",
                                          "Requests not received whole within serve.request_timeout_s (408).")

    # ---------------------------------------------------------------------------------------- loading
    def load(self) -> None:
        """Create the ONNX Runtime session, warm it up at batch 1 (and ``max_batch``), start the batcher,
        then mark the server ready. A failure leaves it live but never ready (``load_error`` says why)."""
        try:
            sess = ort.session(self.model_path, self.threads, self.providers)
            self.providers = list(sess.get_providers())  # what the session really runs on
            inputs = [v2.TensorSpec(n, tuple(s), d) for n, s, d in ort.io_specs(sess.get_inputs(), "input")]
            outputs = [v2.TensorSpec(n, tuple(s), d) for n, s, d in ort.io_specs(sess.get_outputs(), "output")]
            meta = sess.get_modelmeta().custom_metadata_map
            warning = int8_file_warning(meta.get(META_REDUCE_RANGE))
            if warning:
                self.warnings.append(warning)
            # a model exported with a fixed batch size (or fixed output rows) cannot take concatenated requests
            batchable = all(s.shape and not isinstance(s.shape[0], int) for s in inputs) and all(
                s.shape and not isinstance(s.shape[0], int) for s in outputs)
            model = ServedModel(self.name, inputs, outputs, batchable)
            names = [s.name for s in outputs]
            run = self.run_fn or (lambda feeds: sess.run(names, feeds))
            for rows in sorted({1, self.max_batch if batchable and self.batching else 1}):
                feeds = {s.name: np.zeros([rows if i == 0 and not isinstance(d, int) else (d if isinstance(d, int)
                                           else 1) for i, d in enumerate(s.shape)], s.dtype) for s in inputs}
                try:
                    run(feeds)
                except Exception as exc:  # a model that refuses zeros still serves; say so
                    self.warnings.append(f"warm-up run on zeros at batch {rows} failed: {one_line(exc)}")
                    break
            batcher = Batcher(run, max_batch=self.max_batch, max_wait_ms=self.max_wait_ms, queue_size=self.queue_size,
                              batching=self.batching and batchable, on_batch=self._on_batch)
            if self._closing:
                return
            batcher.start()
            self.batcher = batcher  # before the model: a handler that sees the model finds the batcher
            self.model = model
            self.state = "ready"
        except Exception as exc:
            self.state = "failed"
            self.load_error = exc if isinstance(exc, DualmlError) else DualmlError(
                f"cannot serve {self.model_path}: {one_line(exc)}")
        finally:
            self._loaded.set()

    def wait_loaded(self, timeout: float | None = None) -> None:
        """Block until :meth:`load` has finished; raise its error if it failed."""
        self._loaded.wait(timeout)
        if self.load_error is not None:
            raise self.load_error

    @property
    def ready(self) -> bool:
        return self.state == "ready"

    def _on_batch(self, samples: int, requests: int) -> None:
        self.m_batch.observe(samples)
        self.m_batch_requests.observe(requests)

    # ----------------------------------------------------------------------------------- connections
    def process_request(self, request: Any, client_address: Any) -> None:
        """One thread per connection, at most ``max_connections`` of them: beyond, 503 and close."""
        with self._conn_lock:
            full = self.open_connections >= self.max_connections
            if not full:
                self.open_connections += 1
        if full:
            self.m_refused.inc()
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release()

    def _release(self) -> None:
        with self._conn_lock:
            self.open_connections -= 1

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        """Answer 503 on the accept thread without reading the request (a slot-holding client cannot
        make this wait: the socket is written with a short timeout), then close."""
        body = v2.dumps({"error": f"too many open connections ({self.max_connections}, serve.max_connections); "
                                  "retry later"})
        head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
                "\r\nRetry-After: 1\r\nConnection: close\r\n\r\n").encode()
        try:
            request.settimeout(0.2)
            request.sendall(head + body)
            request.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.log_access(client_address, "-", 503, len(body), 0.0)
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet for clients that hang up; anything else still gets its traceback on stderr."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)

    def log_access(self, client_address: Any, requestline: str, status: int, size: int, seconds: float) -> None:
        """One line per answered request (``serve.access_log``), the request line made printable and short."""
        if self.access_log is None:
            return
        line = _UNPRINTABLE.sub("?", requestline[:200])
        host = client_address[0] if isinstance(client_address, tuple) else "-"
        text = (f'{host} - - [{time.strftime("%d/%b/%Y:%H:%M:%S %z")}] "{line}" {status} {size} '
                f"{seconds * 1000:.2f}ms\n")
        with self._log_lock:
            try:
                self.access_log.write(text)
                self.access_log.flush()
            except (OSError, ValueError):
                pass

    # ---------------------------------------------------------------------------------------- reports
    def counts(self) -> dict[str, Any]:
        """Requests served (200 on /predict and infer) and rejected (any 4xx/5xx), plus the batcher's counts."""
        served, rejected = 0, {}
        for (route, status), n in self.m_requests.items():
            if status == "200" and route in ("predict", "infer"):
                served += int(n)
            elif int(status) >= 400:
                rejected[status] = rejected.get(status, 0) + int(n)
        stats = self.batcher.stats() if self.batcher else {
            "batches_run": 0, "samples_run": 0, "mean_batch_size": 0.0, "mean_requests_per_batch": 0.0,
            "max_requests_per_batch": 0, "queued": 0, "batch_sizes": {}}
        return {"requests_served": served, "requests_rejected": sum(rejected.values()),
                "rejected_by_status": dict(sorted(rejected.items())), **stats}

    def health(self, full: bool = True) -> dict[str, Any]:
        """``GET /health``: status and readiness for anyone; with ``full`` (no token set, or the right
        one sent) also the model's name, I/O and counts. Never the file's path or the settings."""
        out: dict[str, Any] = {"status": {"ready": "ok"}.get(self.state, self.state), "live": True,
                               "ready": self.ready}
        if not full:
            return out
        if self.model is not None:
            out.update(model=self.model.name, inputs=[s.metadata() for s in self.model.inputs],
                       outputs=[s.metadata() for s in self.model.outputs])
        out.update(batching=bool(self.batcher and self.batcher.batching), uptime_s=round(time.time() - self.started, 3),
                   counts=self.counts())
        return out

    def shutdown(self) -> None:
        self._closing = True
        super().shutdown()
        if self.batcher is not None:
            self.batcher.stop()
        self.server_close()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class _DeadlineReader(io.RawIOBase):
    """The connection's reads, each with a timeout that is what is left of the request's deadline.

    ``deadline`` is None between requests: the wait for a request's first byte is bounded by
    ``idle_s`` (keep-alive); the first byte starts the clock, and the whole request (line, headers,
    body) must then arrive within ``request_s``, however the client spaces its bytes."""

    def __init__(self, sock: socket.socket, idle_s: float, request_s: float) -> None:
        self.sock, self.idle_s, self.request_s = sock, idle_s, request_s
        self.deadline: float | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        now = time.monotonic()
        if self.deadline is None:
            timeout = self.idle_s
        else:
            timeout = self.deadline - now
            if timeout <= 0:
                raise TimeoutError("request deadline passed")
        self.sock.settimeout(timeout)
        n = self.sock.recv_into(buffer)
        if n and self.deadline is None:
            self.deadline = now + self.request_s
        return n


class _HTTPError(Exception):
    """An answer decided while handling a request: status, one-line message, extra headers."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.message, self.headers, self.close = status, message, headers or {}, close


#: route -> methods it answers (HEAD wherever GET)
_METHODS = {"predict": ("POST",), "infer": ("POST",)}
_READ_ONLY = ("GET", "HEAD")
#: routes answered without the token: the probes an orchestrator sends
_OPEN = ("health", "live", "ready")
_FIXED = {"/health": "health", "/metrics": "metrics", "/predict": "predict", "/v2": "server_metadata",
          "/v2/health/live": "live", "/v2/health/ready": "ready"}
_MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
_KNOWN_METHODS = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS")
_ENDPOINTS = ("POST /predict, GET /health, GET /metrics, GET /v2, GET /v2/health/live, GET /v2/health/ready, "
              "GET /v2/models/{name}, GET /v2/models/{name}/ready, POST /v2/models/{name}/infer")


def _match(path: str) -> tuple[str | None, str | None, str | None]:
    """(route, model name, version) of a URL path; route None when no route has that path."""
    route = _FIXED.get(path.rstrip("/") or "/")
    if route:
        return route, None, None
    m = _MODEL_PATH.fullmatch(path.rstrip("/"))
    if m:
        return {None: "model_metadata", "ready": "model_ready", "infer": "infer"}[m.group(3)], m.group(1), m.group(2)
    return None, None, None


class _Handler(BaseHTTPRequestHandler):
    """One connection (HTTP/1.1 keep-alive). Every error is ``{"error": "<one line>"}`` with its status."""

    protocol_version = "HTTP/1.1"
    server_version = f"dualml/{__version__}"
    sys_version = ""
    server: ModelServer

    def setup(self) -> None:
        super().setup()
        self._reader = _DeadlineReader(self.connection, self.server.idle_timeout_s, self.server.request_timeout_s)
        self.rfile = io.BufferedReader(self._reader, 1 << 16)
        self._route, self._t0, self._head_only = "unknown", time.monotonic(), False

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Silent: the access log (:meth:`ModelServer.log_access`) writes one line per answer instead."""

    # -------------------------------------------------------------------------------------- the loop
    def handle_one_request(self) -> None:
        """The base class's loop step, with a deadline per request, JSON for every error and one
        dispatcher for all methods (so unknown ones are a JSON 501, not the standard library's HTML)."""
        self._reader.deadline = None
        self._route, self._head_only = "unknown", False
        self.command, self.request_version, self.requestline = "", "", ""  # '' (not HTTP/0.9): errors get headers
        try:
            self.raw_requestline = self.rfile.readline(65537)
            self._t0 = time.monotonic()
            if len(self.raw_requestline) > 65536:
                self.send_error(HTTPStatus.REQUEST_URI_TOO_LONG)
                return
            if not self.raw_requestline:
                self.close_connection = True
                return
            if not self.parse_request():  # parse_request answered (400, 431, 505) through send_error
                return
            self._dispatch()
            self.wfile.flush()
        except TimeoutError:
            if self._reader.deadline is None:  # idle keep-alive connection: just close it
                self.close_connection = True
                return
            self.server.m_timeouts.inc()
            self._error(408, f"the request did not arrive whole within {self.server.request_timeout_s:g} s "
                             "(serve.request_timeout_s)", close=True)
        except _HTTPError as exc:
            self._error(exc.status, exc.message, exc.headers, close=exc.close)
        except _Answered:
            pass

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The standard library's error page, as dualml's JSON error (it calls this for malformed
        request lines, over-long URLs, too many or too long headers, unsupported HTTP versions)."""
        status = HTTPStatus(code)
        why = {414: "the URL is longer than 65536 bytes", 431: "too many or too long header lines (at most 100, "
               "65536 bytes each)", 505: "unsupported HTTP version; use HTTP/1.0 or HTTP/1.1"}.get(int(code))
        self._error(int(code), why or f"{status.phrase}: {message or status.description}", close=True)
        self._discard_body(0.5)  # the rest of an over-long line or header block: read it so the answer arrives

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        route, model_name, version = _match(path)
        self._route = route or "unknown"
        method = self.command
        if method not in _KNOWN_METHODS:
            raise _HTTPError(501, f"method {_UNPRINTABLE.sub('?', method[:20])} is not supported; "
                                  "use GET, HEAD or POST", close=True)
        if route is None:
            self._skip_body()
            raise _HTTPError(404, f"no such path {_UNPRINTABLE.sub('?', path[:200])}; endpoints: {_ENDPOINTS}")
        allowed = _METHODS.get(route, _READ_ONLY)
        if method == "OPTIONS":
            self._skip_body()
            self._send(204, None, {"Allow": ", ".join((*allowed, "OPTIONS"))})
            return
        if method not in allowed:
            self._skip_body()
            how = " with a JSON body" if "POST" in allowed else ""
            raise _HTTPError(405, f"use {' or '.join(allowed)} {path}{how}",
                             {"Allow": ", ".join((*allowed, "OPTIONS"))})
        self._head_only = method == "HEAD"
        authorized = self._authorized()
        if route not in _OPEN and not authorized:
            self._skip_body()
            raise _HTTPError(401, "this server needs a token: send the header Authorization: Bearer <token>",
                             {"WWW-Authenticate": 'Bearer realm="dualml"'})
        if route == "health":
            self._send(200, self.server.health(full=authorized))
            return
        if route == "live":
            self._send(200, {"live": True})
            return
        if route == "ready":
            ready = self.server.ready
            self._send(200 if ready else 503, {"ready": ready})
            return
        if route == "metrics":
            self._send_bytes(200, self.server.registry.render(), metrics.CONTENT_TYPE)
            return
        if route == "server_metadata":
            self._send(200, {"name": "dualml", "version": __version__, "extensions": ["binary_tensor_data"]})
            return
        model = self._model(model_name, version, route)
        if route == "model_metadata":
            self._send(200, model.metadata())
        elif route == "model_ready":
            self._send(200, {"name": model.name, "ready": True})
        elif route == "predict":
            self._predict(model, self._body())
        else:
            self._infer(model, self._body())

    # --------------------------------------------------------------------------------- request parts
    def _authorized(self) -> bool:
        token = self.server.token
        if token is None:
            return True
        given = self.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), token)

    def _model(self, name: str | None, version: str | None, route: str) -> ServedModel:
        """The loaded model, if ``name`` (and ``version``) are this server's; 503 while it loads."""
        model = self.server.model
        if name is not None and name != self.server.name:
            self._skip_body()
            raise _HTTPError(404, f"unknown model {_UNPRINTABLE.sub('?', name[:100])!r}; this server serves "
                                  f"{self.server.name!r}")
        if version not in (None, MODEL_VERSION):
            self._skip_body()
            raise _HTTPError(404, f"unknown version {_UNPRINTABLE.sub('?', version[:20])!r} of {self.server.name!r}; "
                                  f"it has version {MODEL_VERSION}")
        if model is None:
            self._skip_body()
            if self.server.state == "failed":
                raise _HTTPError(503, f"the model failed to load: {one_line(self.server.load_error)}")
            raise _HTTPError(503, "the model is loading; retry shortly (GET /v2/health/ready says when)",
                             {"Retry-After": "1"})
        return model

    def _content_length(self) -> int:
        """The declared body size, checked: no chunked bodies, a byte count, at most max_body_bytes."""
        if self.headers.get("Transfer-Encoding"):
            raise _HTTPError(411, "chunked bodies are not accepted; send Content-Length", close=True)
        header = self.headers.get("Content-Length")
        if header is None:
            return -1
        length = int(header) if header.strip().isdigit() and len(header.strip()) < 20 else -2
        if length == -2:
            raise _HTTPError(400, f"Content-Length {_UNPRINTABLE.sub('?', header[:40])!r} is not a byte count",
                             close=True)
        return length

    def _body(self) -> bytes:
        length = self._content_length()
        if length < 0:
            raise _HTTPError(411, "Content-Length is required", close=True)
        if length > self.server.max_body_bytes:
            self._error(413, f"request body is {length} bytes; the limit is {self.server.max_body_bytes} "
                             "(serve.max_body_bytes): send fewer samples per request", close=True)
            self._discard_body()
            raise _Answered
        body = self.rfile.read(length)
        if len(body) < length:
            raise ConnectionResetError("the client went away mid-body")
        return body

    def _skip_body(self) -> None:
        """Before an error answer: read a body that fits the limit (the connection stays usable),
        or close the connection after answering when there is more."""
        try:
            length = self._content_length()
        except _HTTPError:
            self.close_connection = True
            return
        if 0 < length <= self.server.max_body_bytes:
            if len(self.rfile.read(length)) < length:
                raise ConnectionResetError("the client went away mid-body")
        elif length > 0 or self.headers.get("Transfer-Encoding"):
            self.close_connection = True

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

    # ---------------------------------------------------------------------------------------- answers
    def _send(self, status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> None:
        self._send_bytes(status, b"" if body is None else v2.dumps(body), "application/json", headers)

    def _send_bytes(self, status: int, data: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.connection.settimeout(self.server.idle_timeout_s)  # a slow reader gets the idle timeout per write
        self.send_response(status)
        if status != 204:
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if not self._head_only and status != 204:
            self.wfile.write(data)
        elapsed = time.monotonic() - self._t0
        s = self.server
        s.m_requests.inc(self._route, str(status))
        s.m_latency.observe(elapsed, self._route)
        s.log_access(self.client_address, self.requestline, status, len(data), elapsed)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None, close: bool = False) -> None:
        if close:
            self.close_connection = True
        self._send(status, {"error": message}, headers)

    def _run(self, feeds: Feeds) -> list[np.ndarray]:
        batcher = self.server.batcher
        assert batcher is not None
        try:
            return batcher.result(batcher.submit(feeds))
        except QueueFull as exc:
            raise _HTTPError(503, str(exc), {"Retry-After": "1"}) from None
        except ServerClosing as exc:
            raise _HTTPError(503, str(exc), close=True) from None
        except RunError as exc:
            raise _HTTPError(500, str(exc)) from None

    def _predict(self, model: ServedModel, body: bytes) -> None:
        try:
            request = v2.loads(body)
        except v2.ProtocolError as exc:
            raise _HTTPError(400, str(exc)) from None
        if not isinstance(request, dict) or "inputs" not in request:
            raise _HTTPError(400, "body must be a JSON object with \"inputs\": a batch [n, ...] or one sample")
        try:
            feeds = self._predict_feeds(model, request["inputs"])
        except InputError as exc:
            raise _HTTPError(422, str(exc)) from None
        y = self._run(feeds)[0]
        out: dict[str, Any] = {"outputs": y.tolist()}
        if y.ndim == 2 and y.shape[1] > 0 and y.dtype.kind in "iuf" and np.isfinite(y).all():
            out["predictions"] = y.argmax(axis=1).tolist()
        try:
            data = v2.dumps(out)
        except ValueError:
            raise _HTTPError(500, "the model's outputs hold NaN or infinity, which JSON cannot carry; "
                                  f"POST /v2/models/{model.name}/infer with binary outputs takes them") from None
        self._send_bytes(200, data, "application/json")

    @staticmethod
    def _predict_feeds(model: ServedModel, inputs: Any) -> Feeds:
        """``/predict``'s ``inputs``: an array for a single-input model, {name: array} for several."""
        if len(model.inputs) == 1:
            spec = model.inputs[0]
            return {spec.name: from_json(inputs, model.signature(spec))}
        names = [s.name for s in model.inputs]
        if not isinstance(inputs, dict) or sorted(inputs) != sorted(names):
            raise InputError(f"the model has inputs {names}: send \"inputs\" as an object with exactly those keys "
                             "(or use POST /v2/models/{name}/infer)")
        feeds = {s.name: from_json(inputs[s.name], model.signature(s)) for s in model.inputs}
        rows = {len(v) for v in feeds.values()}
        if len(rows) > 1:
            raise InputError(f"inputs have different batch sizes {sorted(rows)}")
        return feeds

    def _infer(self, model: ServedModel, body: bytes) -> None:
        try:
            feeds, wanted, request_id = v2.parse_request(body, self.headers.get(v2.HEADER_LENGTH), model.inputs,
                                                         model.outputs)
        except v2.ProtocolError as exc:
            raise _HTTPError(400, str(exc)) from None
        ys = self._run(feeds)
        by_name = {s.name: y for s, y in zip(model.outputs, ys)}
        try:
            data, header_length = v2.encode_response(model.name, MODEL_VERSION, request_id,
                                                     [(s, by_name[s.name], binary) for s, binary in wanted])
        except ValueError:
            raise _HTTPError(500, "the model's outputs hold NaN or infinity, which JSON cannot carry; ask for "
                                  "binary outputs (parameters.binary_data_output: true)") from None
        headers = {} if header_length is None else {v2.HEADER_LENGTH: str(header_length)}
        self._send_bytes(200, data, "application/json" if header_length is None else "application/octet-stream",
                         headers)


class _Answered(Exception):  # noqa: N818 - a control-flow signal, not an error
    """The answer was already sent (a 413 whose body is being drained); stop handling the request."""


def start_server(model_path: str, host: str = "127.0.0.1", port: int = 0, wait: bool = True,
                 **settings: Any) -> tuple[ModelServer, threading.Thread]:
    """Serve ``model_path`` on a background thread (``port=0``: a free port, see ``server.url``);
    ``settings`` are :class:`ModelServer`'s keywords. The socket answers at once (live); the model
    loads on another thread. ``wait``: return once it is loaded, raising its error (after shutting the
    server down) if it failed. Stop with ``server.shutdown()``."""
    server = ModelServer((host, port), model_path, **settings)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="dualml-http",
                              daemon=True)
    thread.start()
    loader = threading.Thread(target=server.load, name="dualml-load", daemon=True)
    loader.start()
    if wait:
        try:
            server.wait_loaded()
        except BaseException:
            server.shutdown()
            raise
    return server, thread
