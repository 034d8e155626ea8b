"""A paddle-only install: torch made unimportable in a fresh process (a ``sys.meta_path`` finder installed
before anything imports), then dualml builds a cnn on paddle, folds BN, counts FLOPs, prunes channels,
runs compression passes the way the pipeline does and takes training steps. Every one of those once traced
or defaulted to torch; here each must run on paddle and give what the full install gives (the rewrites
are numpy on canonical weights, so the results are bit-identical, only the trace ran elsewhere)."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import dualml
from dualml.compress.factorize import fold_bn
from dualml.compress.measure import flops
from dualml.compress.prune import prune_channels
from dualml.zoo import create_model

ROOT = Path(__file__).resolve().parents[1]

# runs in the child; prints one JSON line
CHILD = r'''
import importlib.abc, sys

class NoTorch(importlib.abc.MetaPathFinder):
    """A paddle-only install: torch and torchvision are not there."""
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "torchvision"):
            raise ImportError(f"No module named {name!r} (blocked: paddle-only test)")
        return None

sys.meta_path.insert(0, NoTorch())
try:
    import torch  # noqa: F401
    blocked = False
except ImportError:
    blocked = True

import hashlib, json
import numpy as np
import dualml
from dualml.backend import default_backend, get_backend
from dualml.errors import BackendError
from dualml.compress.factorize import fold_bn
from dualml.compress.measure import flops
from dualml.compress.pipeline import Context, State, _apply, parse_steps
from dualml.compress.prune import prune_channels
from dualml.config import load_config
from dualml.train.trainer import Trainer
from dualml.zoo import create_model

def digest(w):
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in sorted(w.items())}

out = {"blocked": blocked, "after_import": "torch" in sys.modules, "default": default_backend()}
try:
    get_backend("torch")
    out["torch_error"] = None
except BackendError as exc:
    out["torch_error"] = str(exc)
model = create_model("cnn")
w = json.loads(sys.argv[1])
w = {k: np.asarray(v, dtype=np.float32) for k, v in w.items()}
net = dualml.build(model, "paddle", weights=w)
out["net"] = [c.__module__.split(".")[0] for c in type(net).__mro__ if c.__module__.startswith("paddle")][:1]
f = fold_bn(model, w)
out["fold"] = {"changed": sorted(f.changed), "weights": digest(f.weights)}
out["macs"] = [flops(model)["macs"], flops(f.model)["macs"]]
p = prune_channels(model, w, 0.5)
out["prune"] = {"removed": p.removed, "weights": digest(p.weights), "macs": flops(p.model)["macs"]}
out["slim_refusal"] = get_backend("paddle").filter_selection_support()  # lane 3: no PaddleSlim
try:
    s = prune_channels(model, w, 0.5, backend="paddle")  # PaddleSlim's selection, the paddle adapter's select_filters
    out["slim"] = {k: len(v) for k, v in s.removed.items()}
except BackendError as exc:
    out["slim"] = str(exc)
# the pipeline's own passes, on its configured backend
cfg = load_config(["model=cnn", "data=digits", "backend=paddle", "trainer.max_steps=2"])
steps = parse_steps({"steps": [{"pass": "fold_bn"}, {"pass": "prune", "ratio": 0.5, "selection": "numpy"}]},
                    model, "paddle")
ctx = Context(cfg, "paddle", None, None)
state, _ = _apply(steps[0], State(model, w), ctx)
out["pipeline_fold"] = digest(state.weights)
state, _ = _apply(steps[1], State(model, w), ctx)
out["pipeline_prune"] = digest(state.weights)
t = Trainer(cfg, write=False, progress=False)
out["losses"] = [t.train_step([next(iter(t.loader))])["loss"] for _ in range(2)]
out["torch_loaded"] = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision"))
print(json.dumps(out))
'''


def _digest(w: dict[str, np.ndarray]) -> dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in sorted(w.items())}


def _weights(model) -> dict[str, np.ndarray]:
    """Seeded weights with BatchNorm statistics away from their init (mean 0, var 1, gamma 1, beta 0), so
    folding really rescales and shifts."""
    rng = np.random.default_rng(3)
    w = dualml.init_weights(model, 0)
    for k in list(w):
        if k.startswith("bn") and w[k].dtype == np.float32:
            low = 0.5 if k.endswith(("running_var", "weight")) else -0.5
            w[k] = rng.uniform(low, low + 1.0, w[k].shape).astype(np.float32)
    return w


def _cnn_macs(c1: int, c2: int, bn: bool) -> int:
    """The cnn on one 8x8 image by measure.py's rules: conv = out elements * in channels * 9, BN = 1 MAC per
    output element, Linear = 10 * in features; activations and pools 0."""
    hw = 8 * 8
    return c1 * hw * 1 * 9 + c2 * hw * c1 * 9 + 10 * c2 + (c1 * hw + c2 * hw if bn else 0)


def test_paddle_only_install_folds_counts_prunes_and_trains():
    model = create_model("cnn")
    w = _weights(model)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "backends"),
                                                         os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps({k: v.tolist() for k, v in w.items()})],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])

    # the child really had no torch, and dualml neither needed nor imported it
    assert got["blocked"] is True and got["after_import"] is False and got["torch_loaded"] == []
    assert got["default"] == "paddle" and got["net"] == ["paddle"]
    error = got["torch_error"]
    assert error.startswith("backend=torch needs its framework installed") and "\n" not in error

    # the same results the full install computes (traced on its default backend, torch where installed)
    folded = fold_bn(model, w)
    assert got["fold"] == {"changed": ["bn1", "bn2"], "weights": _digest(folded.weights)}
    assert got["pipeline_fold"] == _digest(folded.weights)
    assert got["macs"] == [_cnn_macs(16, 32, bn=True), _cnn_macs(16, 32, bn=False)]
    assert got["macs"] == [flops(model)["macs"], flops(folded.model)["macs"]]
    pruned = prune_channels(model, w, 0.5)
    assert got["prune"] == {"removed": {k: list(v) for k, v in pruned.removed.items()},
                            "weights": _digest(pruned.weights), "macs": _cnn_macs(8, 16, bn=True)}
    assert got["pipeline_prune"] == _digest(pruned.weights)
    if got["slim_refusal"] is None:
        assert got["slim"] == {"conv1": 8, "conv2": 16}
    else:  # lane 3: refused in one line that says why and which lane has it
        assert got["slim_refusal"] in got["slim"] and "lane 2.6" in got["slim"] and "\n" not in got["slim"]
    assert len(got["losses"]) == 2 and all(np.isfinite(got["losses"]))
