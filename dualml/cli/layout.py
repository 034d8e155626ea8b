"""``dualml layout``: print the canonical weight layout of `model` and each backend's native names.

The table is read from the layer registry's rules: the layout differences are data.
"""
from __future__ import annotations

from collections.abc import Sequence

from omegaconf import DictConfig

from ..backend import get_backend, layer_impl
from ..config import model_params
from ..module import join, named_leaves
from ..zoo import create_model
from .log import result
from .report import write_report

#: the one-line description in ``dualml --help``
HELP = "print the canonical weight layout of `model` and each backend's native names"
#: config sections (or keys) ``dualml layout --help`` lists
KEYS = ('backend', 'out_dir', 'model', 'parity.against')
SECTION = None


def cmd_layout(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Print (and write) the canonical name, shape and each backend's native name of every weight."""
    name, params = model_params(cfg)
    model = create_model(name, **params)
    backends = [cfg.backend, cfg.parity.against]
    rows = ["| canonical name | shape | layer | " + " | ".join(f"{b} native" for b in backends) + " |",
            "|---|---|---|" + "---|" * len(backends)]
    for b in backends:
        get_backend(b)
    for path, leaf in named_leaves(model):
        params_ = leaf.params()
        natives = {b: {c: (r.native, r.transform) for r in layer_impl(b, leaf).rules_for(leaf) for c in r.canonical}
                   for b in backends}
        for k, spec in params_.items():
            cells = []
            for b in backends:
                n, t = natives[b].get(k, ("?", ""))
                cells.append(join(path, n) + ("" if t == "same" else f" ({t})"))
            rows.append(f"| {join(path, k)} | {list(spec.shape)} | {leaf.kind} | " + " | ".join(cells) + " |")
    md = "\n".join(rows) + "\n"
    result(md)
    out = write_report(cfg, "layout", {"model": name, "table": rows}, md)
    result(f"report: {out / 'report.md'}")
    return 0
