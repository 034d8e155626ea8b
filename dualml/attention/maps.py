"""What an attention layer attends to: its weights for an input, and a heatmap PNG of them.

The weights are captured rather than recomputed outside the model: the layer's own forward appends
its probabilities [batch, heads, Lq, Lk] to ``capture`` while a capture is on, so what is drawn is
what the model computed (positions, masks, the variant's kernel included) on the backend asked for.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..build import build, native_nodes
from ..errors import ConfigError, not_allowed
from ..layers import Layer
from ..module import Module
from .variants import MultiHeadAttention


@dataclass
class AttentionMap:
    """``weights`` [batch, heads, Lq, Lk] of the layer at ``layer`` (its path in the model, '' for
    the root); ``path`` the PNG written, if one was asked for."""

    weights: np.ndarray
    layer: str
    path: Path | None = None


def attention_layers(native: Any) -> dict[str, Any]:
    """Path -> native module of every dualml attention composite in a built model, in order."""
    return {p: nat for p, (node, nat) in native_nodes(native).items() if isinstance(node, MultiHeadAttention)}


def attention_weights(model_or_layer: Module | Layer | Any, x: np.ndarray | Sequence[np.ndarray],
                      backend: str = "torch", layer: str | None = None, png: str | Path | None = None,
                      weights: dict[str, np.ndarray] | None = None, seed: int = 0,
                      sample: int = 0) -> AttentionMap:
    """The attention probabilities of one attention layer (``layer``: its path; default the first)
    for input ``x`` (an array, or a sequence of arrays for a forward taking several).

    ``model_or_layer`` is a neutral model (built on ``backend`` with ``weights`` or the seeded initial
    weights) or an already built native one. With ``png`` a heatmap of batch element ``sample`` (one
    panel per head, queries down, keys across) is written atomically there."""
    from ..backend import get_backend

    native = model_or_layer if not isinstance(model_or_layer, (Module, Layer)) else build(
        model_or_layer, backend, seed=seed, weights=weights)
    backend = native._dualml_backend
    found = attention_layers(native)
    if not found:
        raise ConfigError(f"{type(native).__name__} holds no dualml.attention layer; nothing to capture")
    key = next(iter(found)) if layer is None else layer
    if key not in found:
        raise ConfigError(not_allowed("layer", key, [p or "''" for p in found]))
    be, target = get_backend(backend), found[key]
    xs = [x] if isinstance(x, np.ndarray) else list(x)
    target.capture = []
    try:
        with be.no_grad():
            native(*[be.tensor(np.asarray(a)) for a in xs])
        captured = [be.numpy(t).copy() for t in target.capture]
    finally:
        target.capture = None
    out = AttentionMap(captured[0], key)
    if png is not None:
        out.path = write_heatmap(out.weights, png, title=f"{type(native).__name__}.{key or 'attention'} "
                                 f"({backend})", sample=sample)
    return out


def write_heatmap(weights: np.ndarray, path: str | Path, title: str = "attention", sample: int = 0) -> Path:
    """One panel per head of ``weights[sample]`` ([batch, heads, Lq, Lk]), written atomically as PNG
    (matplotlib's Agg canvas: no display needed). Returns the path."""
    from matplotlib.figure import Figure

    from ..checkpoint import atomic_write_bytes, png_bytes

    w = np.asarray(weights)[sample]
    heads = w.shape[0]
    fig = Figure(figsize=(2.4 * heads + 1.0, 3.0), layout="constrained")
    axes = fig.subplots(1, heads, squeeze=False)[0]
    for h, ax in enumerate(axes):
        im = ax.imshow(w[h], cmap="viridis", vmin=0.0, vmax=max(float(w.max()), 1e-12), aspect="auto")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xlabel("key")
        if h == 0:
            ax.set_ylabel("query")
    fig.colorbar(im, ax=list(axes), shrink=0.8)
    fig.suptitle(title, fontsize=9)
    return atomic_write_bytes(path, png_bytes(fig))
