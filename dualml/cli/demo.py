"""``dualml demo``: build `model` on both backends from one seed, move weights through safetensors, compare.

A tour of the core: build, save, load on the other backend, compare, convert back.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

from .. import build, convert, get_backend, get_weights, set_weights
from ..build import native_leaves
from ..checkpoint import load_weights, save_weights
from ..config import model_params
from ..module import describe
from ..parity import Case, run_case
from ..zoo import create_model
from .log import result, say
from .report import write_report

#: the one-line description in ``dualml --help``
HELP = 'build `model` on both backends from one seed, move weights through safetensors, compare'
#: config sections (or keys) ``dualml demo --help`` lists
KEYS = ('backend', 'seed', 'out_dir', 'model', 'parity.against')
SECTION = None


def cmd_demo(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Build, save, load on the other backend, compare and convert back; exit 1 unless bit-exact and in parity."""
    name, params = model_params(cfg)
    model = create_model(name, **params)
    spec = model.input_spec(8)[0]
    if name in ("mlp", "cnn"):  # real data (scikit-learn imported only here: it is slow to import)
        from sklearn.datasets import load_digits

        # the first 8 digits, scaled to [0, 1]
        x = (load_digits().images[:8] / 16.0).astype("float32").reshape(spec.shape)
    else:
        x = spec.sample(np.random.default_rng(cfg.seed))
    a, b = cfg.backend, cfg.parity.against
    net_a = build(model, a, seed=cfg.seed)
    say(f"built {name} for {a}: {type(net_a).__module__}.{type(net_a).__name__}; leaves are "
          f"{sorted({type(m).__module__.split('.')[0] + '.' + type(m).__name__ for m in leaves(net_a)})}")
    path = Path(cfg.out_dir) / "demo" / f"{name}.safetensors"
    save_weights(path, get_weights(net_a), {"model": name, "backend": a, "architecture": describe(model)})
    weights, meta = load_weights(path)
    net_b = build(model, b, weights=weights)
    say(f"moved {len(weights)} canonical tensors {a} -> {path} -> {b} ({type(net_b).__name__} on {b})")
    ya = get_backend(a).numpy(net_a(get_backend(a).tensor(x)))
    yb = get_backend(b).numpy(net_b(get_backend(b).tensor(x)))
    diff = float(np.abs(ya - yb).max())
    back = get_weights(convert(net_b, a))
    exact = all(np.array_equal(back[k], weights[k]) for k in weights)
    set_weights(net_a, back)
    say(f"forward on {x.shape[0]} inputs: max |{a} - {b}| = {diff:.3g}; predictions agree: "
          f"{bool((ya.argmax(-1) == yb.argmax(-1)).all())}; round trip {a}->{b}->{a} bit-exact: {exact}")
    results = [run_case(Case(f"model:{name}", "model", model, model.input_spec(2)), mode, (a, b), seed=cfg.seed)
               for mode in ("eval", "train")]
    for r in results:
        say(f"parity [{r.mode}]: {'pass' if r.passed else 'FAIL'} forward max abs {r.forward_max_abs:.2e}, "
              f"grad max abs {r.grad_max_abs:.2e} {r.message}")
    report = {"model": name, "backends": [a, b], "weights_file": str(path), "forward_max_abs": diff,
              "roundtrip_bit_exact": exact, "parity": [r.__dict__ for r in results]}
    out = write_report(cfg, "demo", report)
    result(f"report: {out / 'report.json'}")
    return 0 if exact and all(r.passed for r in results) else 1


def leaves(native: Any) -> list[Any]:
    return list(native_leaves(native).values())
