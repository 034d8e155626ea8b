"""``dualml serve``: serve an ONNX model over HTTP with request batching: `dualml serve model.onnx`.

The server is dualml.onnx.serve; this file starts it from a config, waits until the model is loaded
and warmed up (the socket already answers liveness probes meanwhile), and stops it on SIGINT/SIGTERM.
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence

from omegaconf import DictConfig

from ..errors import DualmlError
from ..onnx.serve import TOKEN_ENV, int_setting, start_server
from .log import result, warn

#: the one-line description in ``dualml --help``
HELP = 'serve an ONNX model over HTTP with request batching: `dualml serve model.onnx`'
#: config sections (or keys) ``dualml serve --help`` lists
KEYS = ('serve',)
#: this command's own section: its keys may be given bare (``serve.x=1`` as ``x=1``); a bare word is ``serve.model``
SECTION = 'serve'


def cmd_serve(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml serve model.onnx [host=... port=... max_batch=...]``: serve until SIGINT or SIGTERM."""
    s = cfg.serve
    if not s.model:
        raise DualmlError("serve needs a model: dualml serve model.onnx [port=8000]")
    port = int_setting("port", s.port, 0, 65535)
    if not isinstance(s.host, str) or not s.host:
        raise DualmlError(f"serve.host={s.host!r} is not allowed; allowed: an address such as 127.0.0.1 or 0.0.0.0")
    token = s.get("token") or os.environ.get(TOKEN_ENV) or None
    server, thread = start_server(
        s.model, s.host, port, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms, queue_size=s.queue_size,
        max_body_bytes=s.max_body_bytes, batching=s.batching, threads=s.threads, max_connections=s.max_connections,
        request_timeout_s=s.request_timeout_s, idle_timeout_s=s.idle_timeout_s, token=token,
        access_log=s.access_log, name=s.get("name"), providers=s.get("providers", "auto"))
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    b, m = server.batcher, server.model
    assert b is not None and m is not None
    for warning in server.warnings:
        warn(str(warning))
    ins = ", ".join(f"{i['name']} {i['datatype']} {i['shape']}" for i in m.metadata()["inputs"])
    result(f"serving {s.model} on {server.url} as model {m.name!r} (POST /predict, /v2/models/{m.name}/infer, "
          f"GET /health, /metrics); inputs {ins}; batching {'on' if b.batching else 'off'} (max_batch "
          f"{b.max_batch}, max_wait_ms {b.max_wait * 1000:g}, queue_size {b.queue_size}); "
          f"{'token required' if token else 'no token'}; providers {', '.join(server.providers)}")
    if not token and s.host not in ("127.0.0.1", "localhost", "::1"):
        warn(f"listening on {s.host} without a token: anyone who can reach this port can use the model; "
             f"put it behind a gateway or set {TOKEN_ENV}")
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        thread.join(5)
    c = server.counts()
    result(f"stopped: {c['requests_served']} requests served, {c['requests_rejected']} rejected, "
        f"{c['batches_run']} batches (mean batch size {c['mean_batch_size']:.2f})")
    return 0
