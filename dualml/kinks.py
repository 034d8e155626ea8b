"""Kinks: where a float32 forward sits within rounding of a branch (a max-pool near-tie, a ReLU input
next to zero). There the two backends, or two CPUs, may legitimately take different branches, which
moves a gradient by a whole upstream value; float64 tells whether anything else differs."""
from __future__ import annotations

from typing import Any

import numpy as np

#: a kink closer than this (relative to the layer input's largest magnitude) can flip with rounding
KINK_RTOL = 1e-6


def kinks(net: Any, inputs: list[np.ndarray], train: bool, rtol: float = KINK_RTOL) -> list[str]:
    """Max-pool windows whose top two values, and ReLU inputs whose distance to zero, are within
    ``rtol`` of the layer input's largest magnitude in one forward of ``inputs``: places where
    float32 rounding picks the branch, so the two backends may route a gradient differently."""
    from . import layers as L
    from .build import native_leaves, neutral_of

    _, be = neutral_of(net)
    leaves = native_leaves(net)
    specs = {p: getattr(leaf, "_dualml_spec", None) for p, leaf in leaves.items()}
    watched = {p: leaves[p] for p, s in specs.items() if isinstance(s, (L.ReLU, L.MaxPool2d))}
    seen: dict[str, list[np.ndarray]] = {}

    def pre(path: str, args: tuple) -> None:  # a layer may be called several times (one ReLU module reused)
        seen.setdefault(path, []).append(be.numpy(args[0]).astype(np.float64))

    be.set_train(net, train)
    be.seed(0)
    with be.no_grad(), be.hooks(watched, pre=pre):
        net(*[be.tensor(x) for x in inputs])
    found = []
    for path, xs in seen.items():
        spec = specs[path]
        if isinstance(spec, L.ReLU):
            margin = np.concatenate([(np.abs(x) / (float(np.abs(x).max()) or 1.0)).ravel() for x in xs])
            near = int((margin < rtol).sum())
            if near:
                found.append(f"ReLU '{path}': {near} inputs within {rtol:g} of zero (closest {margin.min():.1e} "
                             "of the largest input)")
        else:
            gaps = np.concatenate([(_pool_gaps(x, spec) / (float(np.abs(x).max()) or 1.0)).ravel() for x in xs])
            gaps = gaps[gaps > 0]  # exact ties (all-zero windows after a ReLU) pick the same value everywhere
            near = int((gaps < rtol).sum())
            if near:
                found.append(f"MaxPool2d '{path}': {near} windows whose top two values are within {rtol:g} "
                             f"(closest {gaps.min():.1e} of the largest input)")
    return found


def _pool_gaps(x: np.ndarray, spec: Any) -> np.ndarray:
    """Top-1 minus top-2 value of every max-pool window (padding is -inf, as in the kernels)."""
    (kh, kw), (sh, sw), (ph, pw) = spec.kernel_size, spec.stride or spec.kernel_size, spec.padding
    x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    win = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw]
    flat = np.sort(win.reshape(*win.shape[:4], -1), axis=-1)
    return flat[..., -1] - flat[..., -2]
