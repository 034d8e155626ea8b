"""Filter selection for structured pruning with torch's own tools.

L1 / L2: ``torch.nn.utils.prune.ln_structured`` (n=1 or 2, dim=0) on a copy of the native conv;
its mask says which filters go. FPGM: torch.nn.utils.prune has none, so torch.ao's experimental
``FPGMPruner`` (``torch.ao.pruning._experimental``, a private path that may move) is used when it
imports, else dualml's numpy FPGM, and the tool name returned says which one ran. Only the choice
happens here: dualml's neutral code removes the channels, so both backends build the same model.
"""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch.nn.utils import prune as torch_prune


class TorchCompress:
    def select_filters(self, net: Any, ratios: dict[str, float], method: str, inputs: Any) -> dict[str, Any]:
        """{conv path: Selection} for ``ratios`` {conv path: ratio} by ``method`` (l1 | l2 | fpgm)."""
        from dualml.build import native_leaves
        from dualml.compress.prune import Selection, removed_count, select_filters

        leaves = native_leaves(net)
        out = {}
        for path, ratio in ratios.items():
            conv = leaves[path]
            n = conv.weight.shape[0]
            k = removed_count(n, ratio)  # an int amount: torch's own rounding would not cap at n - 1
            if method in ("l1", "l2"):
                p = 1 if method == "l1" else 2
                twin = copy.deepcopy(conv)  # ln_structured re-parametrises the module it is given
                torch_prune.ln_structured(twin, "weight", amount=k, n=p, dim=0)
                keep = twin.weight_mask.detach().reshape(n, -1).any(dim=1).numpy()
                tool = f"torch.nn.utils.prune.ln_structured(n={p}, dim=0)"
            else:
                keep, tool = _fpgm(conv, k)
                if keep is None:
                    w = conv.weight.detach().numpy()
                    keep = np.isin(np.arange(n), select_filters(w, ratio, "fpgm"))
            out[path] = Selection(tuple(int(i) for i in np.flatnonzero(~keep)), tool)
        return out


def _fpgm(conv: Any, k: int) -> tuple[np.ndarray | None, str]:
    try:
        from torch.ao.pruning._experimental.pruner import FPGMPruner
    except ImportError:
        return None, "dualml numpy fpgm (torch has no FPGM pruner here)"
    n = conv.weight.shape[0]
    holder = torch.nn.Sequential(copy.deepcopy(conv))
    pruner = FPGMPruner(sparsity_level=k / n)  # round(k / n * n) == k
    pruner.prepare(holder, config=[{"tensor_fqn": "0.weight"}])
    pruner.step()
    mask = holder[0].parametrizations.weight[0].mask
    return mask.detach().numpy().astype(bool), "torch.ao.pruning._experimental.FPGMPruner"
