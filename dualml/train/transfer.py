"""Transfer learning, written once for every backend: start from another run's weights (``trainer.init_from``)
and let frozen parameters train from a given epoch on (``trainer.unfreeze``).

Why this is neutral code: checkpoints hold canonical weights, so matching a checkpoint to a new model is a
comparison of canonical names and shapes in numpy. A checkpoint written by a torch run initialises a paddle
model exactly as it would a torch one, and the tensors that do not fit (a new head) get the same seeded
initial values they would have had in a run from scratch (``init_weights(model, seed)``), so a fine-tune is
as reproducible as any other run. The adapters only flip whether a parameter gets gradients
(``Backend.set_trainable``).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import load_weights, model_weights, resolve_checkpoint
from ..errors import ConfigError, DualmlError, check_keys, is_int
from ..module import Module, init_weights, manifest

INIT_FROM_ALLOWED = "RUN/best, RUN/last, a run folder or a .safetensors file written by dualml"


@dataclass
class InitReport:
    """What ``trainer.init_from`` did, tensor by tensor: ``loaded`` (copied from the checkpoint),
    ``skipped`` (checkpoint tensors not used, each with its reason) and ``new`` (model tensors that kept
    their seeded initial value: absent from the checkpoint or not fitting)."""

    source: str
    checkpoint: str
    loaded: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    new: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> str:
        """One line for the console: counts and, briefly, what was skipped."""
        skipped = ", ".join(f"{s['name']} ({s['reason']})" for s in self.skipped[:3])
        more = f" +{len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
        return (f"init_from {self.checkpoint}: loaded {len(self.loaded)} tensors, skipped {len(self.skipped)}"
                f"{': ' + skipped + more if skipped else ''}, newly initialised {len(self.new)}"
                f"{' (' + ', '.join(self.new[:4]) + (' ...' if len(self.new) > 4 else '') + ')' if self.new else ''}")

    def as_dict(self) -> dict[str, Any]:
        return {"init_from": self.source, "checkpoint": self.checkpoint, "loaded": self.loaded,
                "skipped": self.skipped, "new": self.new, "checkpoint_backend": self.meta.get("backend"),
                "checkpoint_model": self.meta.get("model"), "checkpoint_step": self.meta.get("step")}


def _fits(arr: np.ndarray, shape: tuple[int, ...], want: str) -> str | None:
    """Why ``arr`` cannot initialise a tensor of ``shape``/``want`` dtype, or None when it can (float32
    into a float64 model widens exactly; anything else must match)."""
    if tuple(arr.shape) != tuple(shape):
        return f"shape mismatch: checkpoint {list(arr.shape)}, model {list(shape)}"
    if str(arr.dtype) != want and not (arr.dtype == np.float32 and want == "float64"):
        return f"dtype mismatch: checkpoint {arr.dtype}, model {want}"
    return None


def init_from(model: Module, spec: str, seed: int, dtype: str = "float32",
              key: str = "trainer.init_from") -> tuple[dict[str, np.ndarray], InitReport]:
    """Canonical weights for ``model``: the checkpoint ``spec``'s tensors where canonical name, shape and
    dtype fit, the seeded initial weights (``init_weights(model, seed)``, as a run from scratch) elsewhere.

    ``spec`` is resolved like ``export.checkpoint`` (RUN/best, RUN/last, a run folder, a file). Refused in one
    line (ConfigError naming ``key``): no such file, a file that is not a dualml checkpoint, and a checkpoint
    of which no tensor fits (almost certainly the wrong file, and training would silently start from scratch).
    """
    path = resolve_checkpoint(str(spec), key)
    try:
        arrays, meta = load_weights(path)
    except DualmlError as exc:
        raise ConfigError(f"{key}={spec} is not allowed: {exc}; allowed: {INIT_FROM_ALLOWED}") from None
    ckpt = model_weights(arrays)  # a training checkpoint's model tensors, or plain canonical weights
    want = manifest(model)
    start = init_weights(model, seed)
    report = InitReport(str(spec), str(path), meta=meta)
    for name, pspec in want.items():
        if name not in ckpt:
            report.new.append(name)
            continue
        why = _fits(ckpt[name], pspec.shape, dtype if pspec.dtype == "float32" else pspec.dtype)
        if why is None:
            start[name] = np.array(ckpt[name])  # a copy: the checkpoint's arrays are not the model's
            report.loaded.append(name)
        else:
            report.new.append(name)
            report.skipped.append({"name": name, "reason": why})
    report.skipped += [{"name": k, "reason": "not in model"} for k in ckpt if k not in want]
    if not report.loaded:
        theirs, ours = ", ".join(sorted(ckpt)[:4]), ", ".join(list(want)[:4])
        raise ConfigError(f"{key}={spec} is not allowed: no tensor of {path} fits model {type(model).__name__} "
                          f"by canonical name and shape (checkpoint: {theirs or 'no tensors'} ...; model: {ours} ...); "
                          "allowed: a checkpoint of a model that shares layers with this one")
    return start, report


# ----------------------------------------------------------------------------- gradual unfreezing
@dataclass(frozen=True)
class Unfreeze:
    """Parameters matching ``params`` (a canonical-name glob) train once ``at_epoch`` epochs are complete."""

    at_epoch: int
    params: str


def parse_unfreeze(value: Any, freeze: Sequence[str], index: Mapping[str, tuple[str, ...]],
                   epochs: int) -> list[Unfreeze]:
    """``trainer.unfreeze`` -> a list of :class:`Unfreeze`, each checked in one line: keys ``at_epoch`` and
    ``params`` only; ``at_epoch`` an integer in 1..epochs-1 (0 would mean never frozen, ``epochs`` or more
    never trained); ``params`` matching at least one parameter, and only parameters that ``trainer.freeze``
    froze and no earlier entry has unfrozen yet. ``index``: native parameter -> its canonical names."""
    entries = list(value or [])
    if entries and not freeze:
        raise ConfigError("trainer.unfreeze is not allowed without trainer.freeze; allowed: patterns of "
                          "parameters that trainer.freeze froze")
    frozen = {c for names in index.values() for c in names if any(fnmatch.fnmatch(c, p) for p in freeze)}
    canon = [c for names in index.values() for c in names]
    out = []
    for i, e in enumerate(entries):
        where = f"trainer.unfreeze[{i}]"
        if not isinstance(e, Mapping):
            raise ConfigError(f"{where}={e!r} is not allowed; allowed: a mapping {{at_epoch: N, params: GLOB}}")
        check_keys(where, dict(e), ["at_epoch", "params"])
        at, pattern = e.get("at_epoch"), e.get("params")
        if not is_int(at) or not 1 <= at <= epochs - 1:
            span = f"an integer from 1 to {epochs - 1}" if epochs > 1 else "nothing (the run has 1 epoch)"
            raise ConfigError(f"{where}.at_epoch={at!r} is not allowed; allowed: {span} (epochs completed "
                              f"before the parameters train; the run has {epochs} epochs)")
        if not isinstance(pattern, str) or not pattern:
            raise ConfigError(f"{where}.params={pattern!r} is not allowed; allowed: a canonical-name glob such as "
                              "'conv2.*'")
        hits = [c for c in canon if fnmatch.fnmatch(c, pattern)]
        if not hits:
            raise ConfigError(f"{where}.params='{pattern}' matches no parameter; parameters look like: "
                              f"{', '.join(canon[:6])}, ...")
        earlier = {c for u in out if u.at_epoch < at for c in hits if fnmatch.fnmatch(c, u.params)}
        loose = [c for c in hits if c not in frozen or c in earlier]
        if loose:
            raise ConfigError(f"{where}.params='{pattern}' is not allowed: {', '.join(loose[:4])} "
                              f"{'is' if len(loose) == 1 else 'are'} not frozen at epoch {at}; allowed: "
                              f"parameters trainer.freeze={list(freeze)} froze and no earlier entry unfroze")
        out.append(Unfreeze(at, pattern))
    return out


def frozen_at(epoch: int, frozen: Sequence[str], unfreeze: Sequence[Unfreeze],
              index: Mapping[str, tuple[str, ...]]) -> list[str]:
    """The native parameters still frozen during (0-based) ``epoch``: a function of the epoch alone, so a
    resumed run recomputes the same set from its step."""
    done = [u.params for u in unfreeze if u.at_epoch <= epoch]
    return [n for n in frozen if not any(fnmatch.fnmatch(c, p) for c in index[n] for p in done)]


def steps_taken(step: int, steps_per_epoch: int, frozen: Sequence[str], unfreeze: Sequence[Unfreeze],
                index: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    """Optimizer updates each unfrozen parameter has had by global ``step`` (its own Adam step count: it
    started its moments when it started training). Parameters trained from the start are left out."""
    out = {}
    for n in frozen:
        ats = [u.at_epoch for u in unfreeze if any(fnmatch.fnmatch(c, u.params) for c in index[n])]
        if ats:
            out[n] = max(0, step - min(ats) * steps_per_epoch)
    return out


def write_report(run_dir: Path, report: InitReport) -> Path:
    """``init_from.json`` in the run folder, written atomically."""
    import json

    from ..checkpoint import atomic_write_text

    return atomic_write_text(Path(run_dir) / "init_from.json", json.dumps(report.as_dict(), indent=2))
