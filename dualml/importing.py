"""Bring a hand-written native model's weights into dualml's canonical form (``import_native``).

A native model (torchvision's or ``paddle.vision``'s ResNet, a user's own ``nn.Module``) is
matched to a neutral model by attribute path. What can change the numbers is checked: every layer
that holds weights must exist at its path, be of the framework class dualml builds there, and be
configured alike (stride, eps, momentum, bias, ...). What cannot change them is not held against
the native model: settings such as torch's ``inplace`` (memory reuse only) or layer names, and a
missing *weightless* layer (Flatten, ReLU, pooling, Dropout, Identity), since native code often
calls the functional form (``torch.flatten(x, 1)``) where the neutral model has a layer. Import
checks weights and layer configurations, not the forward graph: compare outputs once after import.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np

from .backend import Backend, get_backend
from .build import LoadReport, _rules_by_node, _same_hparam, build, get_weights, native_leaves
from .errors import DualmlWarning, WeightsError
from .layers import Layer
from .module import Module, join, manifest

#: native layer settings that cannot change a layer's numbers, never reported as mismatches:
#: ``inplace`` (torch's ReLU/Dropout/... reuse the input's memory, same values) and names
#: (paddle's ``name``/``_name``/``_full_name`` label parameters; adapters may already skip them)
INERT_SETTINGS = frozenset({"inplace", "name", "_name", "_full_name"})


class WeightsWarning(DualmlWarning):
    """A non-strict import or load left canonical weights at their initial values."""


@dataclass
class ImportReport(LoadReport):
    """What ``import_native`` found. ``missing`` lists the *canonical* weights that keep dualml's
    seeded initial value (absent natively, or natively of another shape: see ``mismatched``);
    ``unexpected`` native arrays dualml has no place for; ``config`` layer class or hyper-parameter
    differences; ``absent`` weightless layers of the neutral model that the native model has no
    module for (not a problem: native code calls their functional form)."""

    config: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return super().ok and not self.config

    def problems(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"{len(self.missing)} canonical weights not found, kept at their initial value: "
                         f"{', '.join(self.missing)}")
        if self.config:
            parts.append(f"configured differently: {'; '.join(self.config)}")
        if self.mismatched:
            parts.append(f"native shape differs: {'; '.join(self.mismatched)}")
        if self.unexpected:
            parts.append(f"native arrays dualml has no place for: {', '.join(self.unexpected)}")
        return " | ".join(parts)


def _weightless(be: Backend, layer: Any) -> bool:
    return not be.arrays(layer)


def compare_layers(be: Backend, twin: Any, native: Any) -> tuple[list[str], list[str]]:
    """(problems, absent weightless layers). Every leaf of the dualml ``twin`` that holds weights
    must exist in ``native`` at the same path; every leaf that exists there must be of the same
    framework class (or the class dualml subclasses) with the same hyper-parameters in the
    framework's own terms (paddle BatchNorm ``_momentum`` 0.9 = canonical 0.1), settings in
    :data:`INERT_SETTINGS` aside."""
    inert = INERT_SETTINGS | getattr(be, "hparam_inert", frozenset())
    problems: list[str] = []
    absent: list[str] = []
    for path, mine in native_leaves(twin).items():
        theirs: Any = native
        try:
            for part in path.split(".") if path else []:
                theirs = getattr(theirs, part)
        except AttributeError:
            theirs = None
        if theirs is None:  # a missing attribute, or one set to None (torchvision's downsample=None)
            if _weightless(be, mine):
                absent.append(path)
            else:
                problems.append(f"layer '{path}' is missing (it holds weights: "
                                f"{', '.join(be.arrays(mine))})")
            continue
        if not isinstance(mine, type(theirs)):
            problems.append(f"layer '{path}' is {type(theirs).__name__}, dualml builds {type(mine).__name__}")
            continue
        subs = dict(be.sublayers(theirs))
        diffs = []
        for sub, m in be.sublayers(mine):
            ours, their = be.hparams(m), be.hparams(subs[sub]) if sub in subs else {}
            diffs += [f"{join(sub, k)}={their[k]!r} (dualml: {v!r})" for k, v in ours.items()
                      if k in their and k not in inert and not _same_hparam(their[k], v)]
        if diffs:
            problems.append(f"layer '{path or '<root>'}' ({type(theirs).__name__}): {', '.join(diffs)}")
    return problems, absent


def _canonical_of(twin: Any, native_names: set[str]) -> set[str]:
    """The canonical weights stored in the given native arrays of ``twin`` (a packed torch
    ``in_proj_weight`` holds q, k and v)."""
    out: set[str] = set()
    for path, rules in _rules_by_node(twin):
        for r in rules:
            if join(path, r.native) in native_names:
                out.update(join(path, c) for c in r.canonical)
    return out


@overload
def import_native(model: Module | Layer, native: Any, backend: str, strict: bool = ...,
                  report: Literal[False] = ...) -> dict[str, np.ndarray]: ...


@overload
def import_native(model: Module | Layer, native: Any, backend: str, strict: bool = ...,
                  *, report: Literal[True]) -> tuple[dict[str, np.ndarray], ImportReport]: ...


def import_native(model: Module | Layer, native: Any, backend: str, strict: bool = True,
                  report: bool = False) -> dict[str, np.ndarray] | tuple[dict[str, np.ndarray], ImportReport]:
    """Canonical weights from a hand-written native model whose attribute names mirror ``model``.

    The native model's own layout (torch or paddle conventions) is read through the adapter's rules,
    so e.g. a torch ``nn.TransformerEncoderLayer``'s packed ``in_proj_weight`` arrives as separate
    canonical q/k/v projections.

    ``strict`` (default): any weight-holding layer missing or configured differently, any native
    weight missing, unexpected or of another shape raises one WeightsError naming all of them.
    ``strict=False`` imports what fits and leaves every other canonical weight at dualml's seeded
    initial value; it never does that silently: it warns (:class:`WeightsWarning`) naming those
    weights and every difference found.

    ``report=True`` returns ``(weights, ImportReport)`` instead of the weights alone. The report
    is opt-in so that existing callers, which use the weights dict directly, keep working, and
    strict callers need none (strict import succeeds only when the report would be clean).
    """
    be = get_backend(backend)
    twin = build(model, backend)
    config, absent = compare_layers(be, twin, native)
    if config and strict:
        raise WeightsError(f"native {type(native).__name__} is not configured like {type(model).__name__} "
                           f"({backend}): {'; '.join(config)}")
    theirs = be.arrays(native)
    mine = be.arrays(twin)
    missing = [k for k in mine if k not in theirs]
    unexpected = [k for k in theirs if k not in mine and not k.endswith("num_batches_tracked")]
    shapes = [f"{k} shape {list(theirs[k].shape)}, dualml expects {list(v.shape)}"
              for k, v in mine.items() if k in theirs and theirs[k].shape != v.shape]
    if strict and (missing or unexpected or shapes):
        found = LoadReport(missing=missing, unexpected=unexpected, mismatched=shapes)
        raise WeightsError(f"native {type(native).__name__} does not match {type(model).__name__} "
                           f"({backend}): {found.problems()}")
    taken = {k: v for k, v in theirs.items() if k in mine and v.shape == mine[k].shape}
    be.assign(twin, taken)
    weights = get_weights(twin)
    initial = _canonical_of(twin, set(mine) - set(taken))
    rep = ImportReport(loaded=[k for k in manifest(model) if k not in initial],
                       missing=[k for k in manifest(model) if k in initial],
                       unexpected=unexpected, mismatched=shapes, config=config, absent=absent)
    if not rep.ok:
        warnings.warn(f"import_native(strict=False) of native {type(native).__name__} into "
                      f"{type(model).__name__} ({backend}): {rep.problems()}", WeightsWarning, stacklevel=2)
    return (weights, rep) if report else weights
