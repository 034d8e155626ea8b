"""``dualml serve``: serve an ONNX model over HTTP with request batching: `dualml serve model.onnx`.

The server is dualml.onnx.serve; this file starts it from a config and stops it on SIGINT/SIGTERM.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

from omegaconf import DictConfig

from ..errors import DualmlError
from ..onnx.serve import int_setting, start_server

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
    port = int_setting("port", s.port, 0)
    if port > 65535:
        raise DualmlError(f"serve.port={port} is not allowed; allowed: 0-65535 (0 picks a free port)")
    server, thread = start_server(s.model, str(s.host), port, max_batch=s.max_batch, max_wait_ms=s.max_wait_ms,
                                  queue_size=s.queue_size, max_body_bytes=s.max_body_bytes, batching=s.batching,
                                  threads=s.threads)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    b = server.batcher
    print(f"serving {s.model} on {server.url} (POST /predict, GET /health); input "
          f"{server.signature.describe()}; batching {'on' if b.batching else 'off'} (max_batch {b.max_batch}, "
          f"max_wait_ms {b.max_wait * 1000:g}, queue_size {b.queue_size})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.shutdown()
        thread.join(5)
    c = server.health()["counts"]
    print(f"stopped: {c['requests_served']} requests served, {c['requests_rejected']} rejected, "
          f"{c['batches_run']} batches (mean batch size {c['mean_batch_size']:.2f})", flush=True)
    return 0
