"""One backend-neutral training loop over native models.

The loop is written once; every framework call goes through the adapter (forward, loss, backward,
clip, optimizer step). What makes "same config and seed => same loss curve" true on both backends:
bit-identical initial weights (canonical, numpy-seeded), identical batches (numpy, order seeded by
(seed, epoch)), learning rates computed once per step by ``dualml.train.schedules``, optimizers with one
defined meaning (``dualml.train.optim``), and dropout RNG re-seeded from (seed, step) (only when a layer draws
random numbers), which also makes a resumed run draw exactly what the uninterrupted run would have drawn.

Checkpoints are one safetensors file each (``last``, ``best``): canonical weights, canonical
optimizer slots, and JSON metadata with step, epoch, history and the config, written atomically.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from ..backend import Backend, StepPlan, get_backend
from ..build import (
    build,
    canonical_from_native_names,
    check_dtype,
    get_weights,
    native_names_from_canonical,
    param_index,
    set_weights,
)
from ..checkpoint import (
    MODEL_PREFIX,
    atomic_write_bytes,
    atomic_write_text,
    clean_stale_temps,
    load_weights,
    model_weights,
    png_bytes,
    save_weights,
)
from ..config import model_params
from ..devices import resolve_device
from ..errors import ConfigError, DualmlError, DualmlWarning
from ..module import Module, describe, named_leaves
from ..zoo import create_model
from .metrics import LOSSES, REGRESSION_LOSSES, horizon_metrics
from .metrics import regression_loss as numpy_regression_loss
from .optim import OptimSpec, make_groups, parse_optim

#: config keys that may differ between a checkpoint and the run resuming it
RESUME_MAY_CHANGE = ("backend", "trainer.resume", "trainer.run_dir", "trainer.epochs", "trainer.max_steps",
                     "out_dir", "parity", "trainer.devices", "trainer.eval_batch_size", "trainer.early_stopping",
                     "trainer.checkpoint_every", "trainer.device", "trainer.nnodes", "trainer.node_rank",
                     "trainer.master_addr", "trainer.master_port", "trainer.rendezvous_timeout_s",
                     # the weights a run started from are in its checkpoints; a resume must not name them again
                     "trainer.init_from")


class TrainingDiverged(DualmlError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class History:
    steps: list[dict[str, float]] = field(default_factory=list)
    epochs: list[dict[str, float]] = field(default_factory=list)


@dataclass
class LossScaler:
    """Dynamic loss scaling for fp16, written once for both backends (torch.amp.GradScaler's rule and
    defaults): the loss is multiplied by ``scale`` before backward so small fp16 gradients do not
    flush to zero; gradients are divided back before clipping and the update. A step whose
    gradients overflowed (inf/nan) is skipped and the scale halved; after ``interval`` good steps
    in a row it doubles. Its state is in every checkpoint, so a resumed run scales identically."""

    scale: float = 65536.0
    good: int = 0
    skipped: int = 0
    interval: int = 2000

    def update(self, finite: bool) -> None:
        if not finite:
            self.scale, self.good, self.skipped = self.scale * 0.5, 0, self.skipped + 1
            return
        self.good += 1
        if self.good >= self.interval:
            self.scale, self.good = self.scale * 2.0, 0


def _joined() -> None:
    """Tell a launching ``dualml train`` that this worker got through the rendezvous: it bounds the wait for
    a missing master from its side (``trainer.rendezvous_timeout_s``), which paddle's launcher does not."""
    import os

    path = os.environ.get("DUALML_JOINED_DIR")
    if path:
        Path(path, f"joined.{os.getpid()}").touch()


def architecture_hash(model: Module) -> str:
    return hashlib.sha256(describe(model).encode()).hexdigest()[:16]


def _softmax_ce(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((logits.argmax(1) == y).mean())


def _flat(cfg: Any, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in (cfg.items() if isinstance(cfg, dict) else []):
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(_flat(v, key) if isinstance(v, dict) else {key: v})
    return out


class Trainer:
    """Train ``cfg.model`` on ``cfg.data`` with ``cfg.trainer`` on ``cfg.backend``.

    ``write=False`` keeps everything in memory (parity tests); otherwise a run folder holds the
    config used, step/epoch CSVs, TensorBoard events, checkpoints, metrics.json and curves.png.
    """

    def __init__(self, cfg: DictConfig, model: Module | None = None, dataset: Any = None,
                 write: bool = True, progress: bool = True, weights: dict[str, np.ndarray] | None = None,
                 loss_fn: Callable[[Any, Any, Any, np.ndarray], Any] | None = None,
                 after_step: Callable[[Trainer], None] | None = None, model_name: str | None = None) -> None:
        """``weights``: canonical weights to start from instead of the seeded init (fine-tuning a
        compressed model). ``loss_fn(backend, logits, labels, x)`` replaces cross-entropy (knowledge
        distillation gets the numpy batch ``x`` to ask its teacher). ``after_step(trainer)`` runs
        after every optimizer update (re-applying pruning masks). ``model_name`` names a user's own
        ``model`` in the run folder and checkpoints (default: the config's model name)."""
        from .data import Loader, load_dataset, widen

        self.cfg = cfg
        self.t = cfg.trainer
        self.write, self.progress = write, progress
        self.be: Backend = get_backend(cfg.backend)
        # the device first: nccl (GPU) or gloo (CPU) is chosen from it when the process group is joined
        self.device, self.device_note = resolve_device(self.t.get("device", "auto"), self.be.device_count(),
                                                       self.be.local_rank(), int(self.t.get("devices", 1)),
                                                       self.be.name)
        self._host_device = self.be.device  # given back when fit() ends: models built later stay on the host
        self.be.set_device(self.device)
        self.rank, self.world_size = self.be.distributed_init()
        _joined()
        self.is_main = self.rank == 0
        name, params = model_params(cfg)
        self.model_name = name if model_name is None else model_name
        self.model = model if model is not None else create_model(name, **params)
        self.spec: OptimSpec = parse_optim(OmegaConf.to_container(self.t.optimizer, resolve=True))
        self.sched = OmegaConf.to_container(self.t.schedule, resolve=True)
        self.accumulate = int(self.t.accumulate)
        if self.accumulate < 1:
            raise ConfigError(f"trainer.accumulate={self.accumulate} is not allowed; allowed: an integer >= 1")
        if self.t.amp not in (None, "bf16", "fp16"):
            raise ConfigError(f"trainer.amp={self.t.amp} is not allowed; allowed: null, bf16, fp16")
        self.scaler = LossScaler() if self.t.amp == "fp16" else None
        self.dtype = check_dtype("trainer.dtype", self.t.get("dtype", "float32"))
        if self.dtype != "float32" and self.t.amp is not None:
            raise ConfigError(f"trainer.amp={self.t.amp} with trainer.dtype={self.dtype} is not allowed; mixed "
                              "precision needs trainer.dtype=float32")
        if self.t.early_stopping.monitor not in ("val_acc", "val_loss", "val_mae"):
            raise ConfigError(f"trainer.early_stopping.monitor={self.t.early_stopping.monitor} is not allowed; "
                              "allowed: val_acc, val_loss, val_mae")
        self.loss_kind = str(self.t.get("loss", "cross_entropy"))
        if self.loss_kind not in LOSSES:
            raise ConfigError(f"trainer.loss={self.loss_kind} is not allowed; allowed: {', '.join(LOSSES)}")
        # a zoo model declares its input; a user's model need not: the data's own sample shape is used
        spec = self.model.input_spec(1)[0] if hasattr(self.model, "input_spec") else None
        sample_shape = None if spec is None else tuple(spec.shape[1:])
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
        self.data = dataset if dataset is not None else load_dataset(data_cfg, input_shape=sample_shape, seed=cfg.seed)
        if self.dtype != "float32":  # widened once (exact), so batches and evaluation need no cast
            self.data = widen(self.data, self.dtype)
        self._check_task(loss_fn)
        self.batch_size = int(data_cfg.get("batch_size", 64))
        self.loader = Loader(self.data.train, self.batch_size, shuffle=True, seed=cfg.seed,
                             drop_last=True, rank=self.rank, world_size=self.world_size)
        if len(self.loader) < self.accumulate:  # not one optimizer step per epoch: the loop would find no batch
            n, most = len(self.data.train.y), len(self.data.train.y) // self.accumulate
            raise ConfigError(f"data.batch_size={self.batch_size} is not allowed with a train split of {n} samples"
                              f" and trainer.accumulate={self.accumulate}; allowed: data.batch_size <= {most}")
        self.steps_per_epoch = max(1, len(self.loader) // self.accumulate)
        self.total_steps = int(self.t.max_steps) if self.t.max_steps else int(self.t.epochs) * self.steps_per_epoch
        from .schedules import check_schedule, schedule
        self.sched = check_schedule(self.sched, self.total_steps, self.spec.lr, prefix="trainer.schedule",
                                    lr_key="trainer.optimizer.lr")
        # hot-path values as plain Python (OmegaConf attribute access costs microseconds each)
        self.lrs = schedule(self.spec.lr, self.sched, self.total_steps).tolist()
        self.amp = self.t.amp
        self.clip_norm = None if self.t.clip_norm is None else float(self.t.clip_norm)
        self.seed = int(cfg.seed)
        self.init_report = None
        init_spec = self.t.get("init_from", None)
        if init_spec is not None:
            if self.t.resume:
                raise ConfigError(f"trainer.init_from={init_spec} with trainer.resume=true is not allowed; a resume "
                                  "continues its own run's weights: drop trainer.init_from (or resume=true)")
            if weights is not None:
                raise ConfigError(f"trainer.init_from={init_spec} is not allowed together with Trainer(weights=...); "
                                  "give one of them")
            from .transfer import init_from
            weights, self.init_report = init_from(self.model, str(init_spec), int(cfg.seed), self.dtype)
        # built on the host (canonical numpy weights), then moved: the checkpoint never depends on the device
        self.net = self.be.to_device(build(self.model, cfg.backend, seed=cfg.seed, weights=weights, dtype=self.dtype))
        self.loss_fn, self.after_step = loss_fn, after_step
        # re-seeding the framework RNG per step only matters when something draws from it (a user
        # loss_fn might); otherwise it is pure cost (~3% of an mlp step, bench_trainer)
        self.reseed = loss_fn is not None or any(leaf.draws_random for _, leaf in named_leaves(self.model))
        self._check_data_fits()
        self.train_net = self.be.wrap_data_parallel(self.net) if self.world_size > 1 else self.net
        self.index = index = param_index(self.net)
        self._set_unfreeze(index)
        self.groups, self.frozen = make_groups(index, OmegaConf.to_container(self.t.param_groups),
                                               list(self.t.freeze), include_frozen=bool(self.unfreeze))
        self.opt = self.be.make_optimizer(self.net, self.spec, self.groups, self.frozen)
        self.frozen_now = list(self.frozen)
        # what every step works on, handed to the adapter's train_step (the adapter owns the step)
        if loss_fn is not None:
            loss = lambda logits, labels, x, y: loss_fn(self.be, logits, labels, x)  # noqa: E731
        elif self.regression:
            from .losses import regression_loss

            kind, mask, scale, delta = self.loss_kind, self.mask_zeros, self.data.target_scale, self.huber_delta
            loss = lambda logits, labels, x, y: regression_loss(self.be, kind, logits, labels, y, mask,  # noqa: E731
                                                                 scale, delta)
        else:
            loss = None
        self.plan = StepPlan(self.train_net, self.net, self.opt, self.groups, loss, self.amp, self.clip_norm,
                             self.world_size)
        self.step, self.epoch, self.history = 0, 0, History()
        self._in_train_mode = False
        self.best: dict[str, Any] = {}
        self.run_dir: Path | None = None

    # ------------------------------------------------------------------ set-up checks
    def _set_unfreeze(self, index: dict[str, tuple[str, ...]]) -> None:
        """``trainer.unfreeze``, checked before the optimizer is built (dualml/train/transfer.py)."""
        from .transfer import parse_unfreeze

        raw = OmegaConf.to_container(self.t.unfreeze, resolve=True) if self.t.get("unfreeze") else []
        epochs = -(-self.total_steps // self.steps_per_epoch)  # the last one may be partial (max_steps)
        self.unfreeze = parse_unfreeze(raw, list(self.t.freeze), index, epochs)
        if self.unfreeze and self.world_size > 1:
            raise ConfigError(f"trainer.unfreeze with trainer.devices={self.world_size} is not allowed; DDP fixes "
                              "the trained parameters when it wraps the model; allowed: trainer.devices=1")

    def _apply_unfreeze(self) -> None:
        """Make the parameters whose ``at_epoch`` has come trainable (at the start of an epoch, and on resume:
        the frozen set is a function of the epoch, so a resumed run recomputes it from its step)."""
        if not self.unfreeze:
            return
        from .transfer import frozen_at

        now = frozen_at(self.epoch, self.frozen, self.unfreeze, self.index)
        thawed = [n for n in self.frozen_now if n not in now]
        if thawed:
            self.be.set_trainable(self.net, thawed, True)
            self.frozen_now = now

    def _check_task(self, loss_fn: Any) -> None:
        """The loss must fit the targets: cross-entropy needs class labels, mse/mae/huber float targets
        (data=traffic). Caught here, in one line, rather than as a shape error inside the first step."""
        self.regression = getattr(self.data, "task", "classification") == "regression"
        name = getattr(self.data, "name", "?")
        if loss_fn is None and self.regression and self.loss_kind == "cross_entropy":
            raise ConfigError(f"trainer.loss=cross_entropy is not allowed with data {name} (regression targets); "
                              f"allowed: {', '.join(REGRESSION_LOSSES)} (e.g. trainer.loss=mae)")
        if not self.regression and self.loss_kind != "cross_entropy":
            raise ConfigError(f"trainer.loss={self.loss_kind} is not allowed with data {name} (class labels); "
                              "allowed: cross_entropy")
        mask = self.t.get("loss_mask_zeros", None)
        if mask is not None and not isinstance(mask, bool):
            raise ConfigError(f"trainer.loss_mask_zeros={mask!r} is not allowed; allowed: null, false, true")
        self.mask_zeros = self.regression if mask is None else bool(mask)
        self.huber_delta = float(self.t.get("huber_delta", 1.0))
        if not self.huber_delta > 0:
            raise ConfigError(f"trainer.huber_delta={self.huber_delta} is not allowed; it must be a number > 0")
        monitor = self.t.early_stopping.monitor
        if monitor == "val_mae" and not self.regression:
            raise ConfigError(f"trainer.early_stopping.monitor=val_mae is not allowed with data {name} (class "
                              "labels); allowed: val_acc, val_loss")
        # a regression run has no accuracy: the default monitor (val_acc) means its masked MAE there
        self.monitor = "val_mae" if self.regression and monitor == "val_acc" else str(monitor)

    def _check_data_fits(self) -> None:
        x = self.data.train.x[:2]
        dtype = str(self.model.input_spec(1)[0].dtype) if hasattr(self.model, "input_spec") else str(x.dtype)
        dtype = self.dtype if dtype == "float32" else dtype
        if str(x.dtype) != dtype:
            raise ConfigError(f"data {self.data.name} has dtype {x.dtype}; model {self.model_name} takes {dtype}")
        self.be.set_train(self.net, False)
        with self.be.no_grad():
            out = self.be.numpy(self.net(self.be.tensor(x)))
        if self.regression:
            want = int(np.prod(self.data.train.y.shape[1:]))
            steps = self.data.train.y.shape[1]   # a forecaster names its horizon, other models their outputs
            fix = f"model.output_len={steps}" if hasattr(self.model, "output_len") else f"model.num_classes={want}"
            if out.reshape(len(out), -1).shape[1] != want:
                raise ConfigError(f"model {self.model_name} outputs shape {list(out.shape)} but data "
                                  f"{self.data.name} has {want} targets per sample "
                                  f"{list(self.data.train.y.shape[1:])}; set {fix}")
            return
        if out.ndim != 2 or out.shape[1] != self.data.num_classes:
            raise ConfigError(f"model {self.model_name} outputs shape {list(out.shape)} but data "
                              f"{self.data.name} has {self.data.num_classes} classes; set model.num_classes="
                              f"{self.data.num_classes}")

    # ------------------------------------------------------------------ run folder and checkpoints
    def _open_run(self) -> None:
        if not self.write:
            return
        if not self.is_main:  # rank 0 owns the folder; the others only read a checkpoint to resume
            self.run_dir = Path(self.t.run_dir)
            if self.t.resume:
                self._resume(self.run_dir / "last.safetensors")
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run = Path(self.t.run_dir or Path("runs") / f"{self.model_name}-{self.cfg.backend}-{stamp}")
        if self.t.resume:
            if not (run / "last.safetensors").is_file():
                raise DualmlError(f"trainer.resume=true but {run}/last.safetensors does not exist; give "
                                  "trainer.run_dir=<an existing run>")
            self.run_dir = run
            self._resume(run / "last.safetensors")
            return
        if run.exists():
            raise DualmlError(f"run folder {run} already exists; choose another trainer.run_dir or continue it "
                              "with trainer.resume=true (nothing was overwritten)")
        try:
            run.mkdir(parents=True)
        except OSError as exc:  # read-only place, a parent that is a file, no space...
            raise ConfigError(f"trainer.run_dir={run} is not allowed; it cannot be created ({exc.strerror or exc}"
                              f"{': ' + str(exc.filename) if exc.filename and str(exc.filename) != str(run) else ''})"
                              "; allowed: a folder in a writable place") from None
        self.run_dir = run
        atomic_write_text(run / "config.yaml", OmegaConf.to_yaml(self.cfg))
        if self.init_report is not None:
            from .transfer import write_report
            write_report(run, self.init_report)

    def _state_meta(self) -> dict[str, Any]:
        return {"kind": "dualml-train-checkpoint", "step": self.step, "epoch": self.epoch,
                "backend": self.be.name, "model": self.model_name, "architecture": architecture_hash(self.model),
                "optimizer": asdict(self.spec), "seed": self.cfg.seed, "best": self.best,
                "rng": "derived from (seed, step): nothing to restore",
                "loss_scaler": asdict(self.scaler) if self.scaler else None,
                "config": OmegaConf.to_container(self.cfg, resolve=True)}

    def save_checkpoint(self, path: Path) -> None:
        arrays = {MODEL_PREFIX + k: v for k, v in get_weights(self.net).items()}
        native = self.be.optimizer_slots(self.opt, self.net, self.spec)
        for slot, values in native.items():
            arrays.update({f"optim/{slot}/{k}": v for k, v in canonical_from_native_names(self.net, values).items()})
        extras = self.be.optimizer_extras(self.opt, self.net)
        arrays.update({f"native/{self.be.name}/{k}": v for k, v in extras.items()})
        save_weights(path, arrays, self._state_meta())

    def _resume(self, path: Path) -> None:
        if self.is_main:
            files, size = clean_stale_temps(path.parent)
            if files:
                warnings.warn(f"removed {files} stale temp file(s) ({size} bytes) from {path.parent}: left by a "
                              "write that was killed before it finished", DualmlWarning, stacklevel=2)
        arrays, meta = load_weights(path)
        if meta.get("kind") != "dualml-train-checkpoint":
            raise DualmlError(f"{path} is not a training checkpoint")
        problems = []
        if meta["architecture"] != architecture_hash(self.model):
            problems.append(f"model: checkpoint is {meta['model']} ({meta['architecture']}), config builds "
                            f"{self.model_name} ({architecture_hash(self.model)})")
        ours = _flat(OmegaConf.to_container(self.cfg, resolve=True))
        theirs = _flat(meta["config"])
        theirs.setdefault("trainer.dtype", "float32")  # checkpoints from before the key existed
        for key, old in (("trainer.loss", "cross_entropy"), ("trainer.loss_mask_zeros", None),
                         ("trainer.huber_delta", 1.0)):
            theirs.setdefault(key, old)
        for key in sorted(set(ours) | set(theirs)):
            if any(key == k or key.startswith(k + ".") for k in RESUME_MAY_CHANGE):
                continue
            if ours.get(key) != theirs.get(key):
                problems.append(f"{key}: checkpoint {theirs.get(key)!r}, now {ours.get(key)!r}")
        if problems:
            raise DualmlError(f"cannot resume from {path}: {'; '.join(problems)} (nothing was overwritten)")
        set_weights(self.net, model_weights(arrays))
        slots = {}
        for slot in self.spec.slots:
            canon = {k[len(f"optim/{slot}/"):]: v for k, v in arrays.items() if k.startswith(f"optim/{slot}/")}
            slots[slot] = native_names_from_canonical(self.net, canon)
        prefix = f"native/{self.be.name}/"
        extras = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        from .transfer import steps_taken

        own = steps_taken(meta["step"], self.steps_per_epoch, self.frozen, self.unfreeze, self.index)
        self.be.load_optimizer_slots(self.opt, self.net, self.spec, slots, meta["step"], extras, own or None)
        self.step, self.best = meta["step"], meta["best"]
        if self.scaler is not None and meta.get("loss_scaler"):
            self.scaler = LossScaler(**meta["loss_scaler"])
        self.epoch = self.step // self.steps_per_epoch  # complete epochs; the loader skips into the next
        self.resumed_from = {"step": self.step, "backend": meta["backend"]}
        self._warn_replanned(theirs)
        if self.is_main:
            self.history.steps = self._truncate_csv("steps.csv", self.step)
            self.history.epochs = self._truncate_csv("epochs.csv", self.step)

    def _warn_replanned(self, theirs: dict[str, Any]) -> None:
        """Warn when a resume changes the planned total steps (``trainer.epochs``/``max_steps`` may change)
        and with it the learning-rate curve: a cosine schedule re-planned from 57 to 114 steps jumps from
        its tail back up to a high rate, which is legitimate but must not pass unseen."""
        from .schedules import schedule

        old = theirs.get("trainer.max_steps") or int(theirs.get("trainer.epochs", 0)) * self.steps_per_epoch
        if not old or old == self.total_steps:
            return
        n = min(old, self.total_steps)
        raw = OmegaConf.to_container(self.t.schedule, resolve=True)  # derived keys (t_max) follow the total
        planned = schedule(self.spec.lr, raw, old)
        if np.array_equal(planned[:n], np.asarray(self.lrs[:n])):
            return  # constant, step, ...: the curve is the same where both plans have it
        last = f"; the last step ran at lr {planned[min(self.step, old) - 1]:.3g}" if self.step else ""
        then = f", the next runs at {self.lrs[self.step]:.3g}" if self.step < self.total_steps else ""
        warnings.warn(f"resume re-plans the {raw.get('name', 'constant')} lr schedule from {old} to "
                      f"{self.total_steps} total steps (trainer.epochs or trainer.max_steps changed), so the lr "
                      f"curve changes{last}{then}", DualmlWarning, stacklevel=3)

    def _truncate_csv(self, name: str, last_step: int) -> list[dict[str, float]]:
        """Drop rows the killed run logged after its last checkpoint (they will be logged again)."""
        path = self.run_dir / name
        if not path.is_file():
            return []
        rows = list(csv.DictReader(path.open()))
        keep = [r for r in rows if int(float(r["step"])) <= last_step]
        buf = io.StringIO()
        if rows:
            w = csv.DictWriter(buf, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(keep)
        atomic_write_text(path, buf.getvalue())
        return [{k: float(v) for k, v in r.items()} for r in keep]

    @property
    def writes(self) -> bool:
        return self.run_dir is not None and self.is_main

    def _append_csv(self, name: str, row: dict[str, Any]) -> None:
        if not self.writes:
            return
        path = self.run_dir / name
        new = not path.is_file()
        try:
            with path.open("a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
        except OSError as exc:  # a full disk fails in the buffered write, which names no file
            exc.filename = exc.filename or str(path)
            raise

    # ------------------------------------------------------------------ evaluation
    def _on_device(self) -> None:
        """The adapter's device is process-wide (paddle's place is): another Trainer may have moved it."""
        if self.be.device is not self.device:
            self.be.set_device(self.device)

    def evaluate(self, split: Any) -> dict[str, float]:
        return self._scores(self._outputs(split), split.y)

    def _outputs(self, split: Any) -> np.ndarray:
        """The model's eval-mode outputs for a whole split, batch by batch."""
        self._on_device()
        self.be.set_train(self.net, False)
        self._in_train_mode = False
        outs = []
        bs = int(self.t.eval_batch_size)
        with self.be.no_grad():
            for i in range(0, len(split.y), bs):
                outs.append(self.be.numpy(self.net(self.be.tensor(split.x[i:i + bs]))))
        return np.concatenate(outs)

    def _scores(self, out: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        if self.regression:
            return self._regression_scores(out, y)
        loss, acc = _softmax_ce(out, y)
        return {"loss": loss, "acc": acc}

    def _forecast(self, out: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Outputs as forecasts in the targets' units (the data's target scaling undone), shaped like ``y``."""
        pred = out.reshape(y.shape).astype(np.float64)
        if self.data.target_scale is not None:
            mean, std = self.data.target_scale
            pred = pred * std + mean
        return pred

    def _regression_scores(self, out: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        """The configured loss and the masked MAE/RMSE/MAPE (overall and at horizons 3/6/12) of un-scaled
        forecasts; ``acc`` is NaN (there are no classes)."""
        pred = self._forecast(out, y)
        loss = numpy_regression_loss(self.loss_kind, pred, y, self.mask_zeros, self.huber_delta)
        h = horizon_metrics(pred, y) if y.ndim == 3 else {"all": horizon_metrics(pred[:, None], y[:, None])["all"]}
        return {"loss": loss, "acc": float("nan"), **h["all"], "horizons": {k: v for k, v in h.items() if k != "all"}}

    # ------------------------------------------------------------------ the loop
    def train_step(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
        """One optimizer step over ``accumulate`` micro-batches; returns loss, lr, grad_norm, acc.

        The step itself (forward, loss, gradients, update) is the adapter's ``Backend.train_step``;
        around it, written once: the scheduled rate, the (seed, step) re-seed, stopping on a non-finite
        loss, the loss scaler's bookkeeping, the step count and ``after_step``. The batches become
        tensors without a copy where the framework allows (torch): pass arrays that are not written
        to while the step runs (the Loader yields fresh ones)."""
        be = self.be
        lr = self.lrs[self.step]
        if not self._in_train_mode:
            be.set_train(self.train_net, True)
            self._in_train_mode = True
        scale = self.scaler.scale if self.scaler else None
        r = be.train_step(self.plan, batches, lr, self.seed * 1_000_003 + self.step if self.reseed else None, scale)
        if not math.isfinite(r.loss):
            raise TrainingDiverged(f"loss is {r.loss} at step {self.step} (epoch {self.epoch}); stopped before "
                                   "the update, the last good checkpoint is kept"
                                   + (f" in {self.run_dir}" if self.run_dir else "")
                                   + ("; with amp=fp16 the forward pass itself may overflow float16 (loss "
                                      "scaling only protects gradients): try amp=bf16" if self.scaler else ""))
        row = {"step": self.step + 1, "epoch": self.epoch, "loss": r.loss, "lr": lr, "grad_norm": r.grad_norm,
               "acc": r.acc}
        self.step += 1
        if self.scaler is not None:
            row["loss_scale"] = scale
            self.scaler.update(r.finite)
            if not r.finite:  # overflow: no update this step; the learning-rate schedule moves on
                return row
        if self.after_step is not None:
            self.after_step(self)
        return row

    def fit(self) -> dict[str, Any]:
        """Train to ``total_steps`` (or an early stop), evaluate, write the run folder; returns the metrics.
        The adapter's device is ``trainer.device`` while it runs and what it was before once it returns, so
        code that builds models afterwards (export, parity, a teacher) does not find its tensors on a GPU."""
        try:
            return self._fit()
        finally:
            self.be.set_device(self._host_device)

    def _fit(self) -> dict[str, Any]:
        from ..quiet import progress_bar

        self._on_device()
        self._open_run()
        writer = None
        if self.writes:
            from tensorboardX import SummaryWriter
            writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.step or None)
        t0 = time.perf_counter()
        stop = False
        bar = progress_bar(total=self.total_steps, initial=self.step, desc=f"train {self.model_name} [{self.be.name}]",
                   unit="step", enabled=self.progress and self.is_main, dynamic_ncols=True)
        patience = int(self.t.early_stopping.patience)
        monitor = self.monitor
        try:
            while self.step < self.total_steps and not stop:
                self._apply_unfreeze()
                self.loader.set_epoch(self.epoch)
                skip = (self.step - self.epoch * self.steps_per_epoch) * self.accumulate
                it = iter(self.loader.skip(skip) if skip else self.loader)
                run_loss, run_acc, n = 0.0, 0.0, 0
                for _ in range(self.steps_per_epoch - skip // self.accumulate):
                    if self.step >= self.total_steps:
                        break
                    batches = [next(it) for _ in range(self.accumulate)]
                    row = self.train_step(batches)
                    self.history.steps.append(row)
                    self._append_csv("steps.csv", row)
                    if writer:
                        for k in ("loss", "lr", "grad_norm", "acc"):
                            if math.isfinite(row[k]):  # grad_norm is NaN unless clipping computes it
                                writer.add_scalar(f"train/{k}", row[k], self.step)
                    run_loss, run_acc, n = run_loss + row["loss"], run_acc + row["acc"], n + 1
                    if not bar.disable:  # a disabled bar still builds its postfix string (~10 us per step)
                        bar.update(1)
                        # refresh=False: tqdm redraws on its own clock; forcing a redraw every step costs ~45 us
                        bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.2e}", refresh=False)
                    if self.writes and self.t.checkpoint_every and self.step % int(self.t.checkpoint_every) == 0:
                        self.save_checkpoint(self.run_dir / "last.safetensors")
                complete = self.step % self.steps_per_epoch == 0
                if not (complete or self.step >= self.total_steps):
                    continue
                val = self.evaluate(self.data.val)
                # a run ending mid-epoch (max_steps) is evaluated there, at a fractional epoch
                epoch_no = self.epoch + 1 if complete else round(self.step / self.steps_per_epoch, 3)
                erow = {"epoch": epoch_no, "step": self.step, "train_loss": run_loss / max(n, 1),
                        "train_acc": run_acc / max(n, 1), "val_loss": val["loss"], "val_acc": val["acc"],
                        "seconds": time.perf_counter() - t0}
                if self.regression:
                    erow.update({"val_mae": val["mae"], "val_rmse": val["rmse"], "val_mape": val["mape"]})
                self.history.epochs.append(erow)
                self._append_csv("epochs.csv", erow)
                if writer:
                    for k in ("val_loss", "val_acc", "train_acc", "val_mae", "val_rmse", "val_mape"):
                        if math.isfinite(erow.get(k, float("nan"))):  # a regression run has no accuracy
                            writer.add_scalar(f"epoch/{k}", erow[k], self.step)
                value = {"val_acc": val["acc"], "val_loss": val["loss"], "val_mae": val.get("mae")}[monitor]
                better = not self.best or (value > self.best["value"] if monitor == "val_acc"
                                           else value < self.best["value"])
                if complete:
                    self.epoch += 1
                if better:
                    self.best = {"value": value, "epoch": epoch_no, "step": self.step, "monitor": monitor}
                    if self.writes:
                        self.save_checkpoint(self.run_dir / "best.safetensors")
                elif patience and self.epoch - self.best["epoch"] >= patience:
                    stop = True
                if self.writes:
                    self.save_checkpoint(self.run_dir / "last.safetensors")
        finally:
            bar.close()
            if writer:
                writer.close()
        return self._finish(stop, time.perf_counter() - t0)

    def _finish(self, stopped_early: bool, seconds: float) -> dict[str, Any]:
        best_file = self.run_dir / "best.safetensors" if self.writes else None
        final = get_weights(self.net) if best_file and best_file.is_file() else None
        rank_diff = None
        if self.world_size > 1:  # every rank must hold rank 0's weights
            flat = np.concatenate([v.ravel().astype(np.float64) for v in get_weights(self.net).values()])
            rank_diff = float(self.be.all_reduce_mean([float(np.abs(flat - self.be.broadcast_array(flat)).max())])[0])
        if final is not None:  # test metrics are the best checkpoint's; the model keeps its final weights
            arrays, _ = load_weights(best_file)
            set_weights(self.net, model_weights(arrays))
        test_out = self._outputs(self.data.test)
        test = self._scores(test_out, self.data.test.y)
        metrics = {"model": self.model_name, "backend": self.be.name, "steps": self.step, "epochs": self.epoch,
                   "test_acc": test["acc"], "test_loss": test["loss"], "best": self.best,
                   "stopped_early": stopped_early, "seconds": seconds,
                   "resumed_from": getattr(self, "resumed_from", None), "world_size": self.world_size,
                   "device": str(self.device),
                   "rank_weight_diff_mean": rank_diff}
        if self.init_report is not None:
            metrics["init_from"] = {"checkpoint": self.init_report.checkpoint, "loaded": len(self.init_report.loaded),
                                    "skipped": len(self.init_report.skipped), "new": len(self.init_report.new)}
        if self.regression:  # masked metrics (mph for data=traffic) next to the forecasts needing no model
            metrics.update({"loss": self.loss_kind, "loss_mask_zeros": self.mask_zeros, "test_mae": test["mae"],
                            "test_rmse": test["rmse"], "test_mape": test["mape"], "test_horizons": test["horizons"],
                            "baselines": self.data.baselines})
        if self.writes:
            atomic_write_text(self.run_dir / "metrics.json", json.dumps(metrics, indent=2))
            self._plot()
            if self.regression and self.data.test.y.ndim == 3:
                self._plot_forecast(self._forecast(test_out, self.data.test.y), self.data.test.y, test["horizons"])
        if final is not None:
            set_weights(self.net, final)
        return metrics

    def _plot_forecast(self, pred: np.ndarray, y: np.ndarray, horizons: dict[str, dict[str, float]]) -> None:
        """forecast.png for a (batch, horizon, nodes) forecaster: the last step's forecast against the truth
        for three sensors over the first day of the test split (consecutive windows, so sample i's last
        step is one time step after sample i-1's), and masked MAE by horizon next to the baselines. Why:
        a MAE alone hides *where* a forecaster fails (rush hours, weekends); the picture shows it."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        n = min(len(y), 288)  # one day of 5-minute steps
        sensors = [int(s) for s in np.argsort(-(y[:n, -1] != 0).sum(axis=0), kind="stable")[:3]]
        fig, axes = plt.subplots(1, len(sensors) + 1, figsize=(4.2 * (len(sensors) + 1), 3.4))
        for ax, s in zip(axes, sensors, strict=False):
            true = np.where(y[:n, -1, s] != 0, y[:n, -1, s], np.nan)  # missing readings are gaps, not zeros
            ax.plot(true, "k", lw=0.8, label="true")
            ax.plot(pred[:n, -1, s], lw=0.8, label=f"forecast ({self.be.name})")
            ax.set_title(f"sensor {s}, {y.shape[1]} steps ahead")
            ax.set_xlabel("test sample (time step)")
            ax.legend(fontsize=7)
        hs = sorted(horizons, key=int)
        ax = axes[-1]
        ax.plot([int(h) for h in hs], [horizons[h]["mae"] for h in hs], "o-", label=f"{self.model_name}")
        for name, b in (self.data.baselines or {}).items():
            bh = [h for h in hs if h in b]
            ax.plot([int(h) for h in bh], [b[h]["mae"] for h in bh], "s--", label=name)
        ax.set_xlabel("horizon (steps)")
        ax.set_title("masked MAE by horizon (test)")
        ax.legend(fontsize=7)
        fig.suptitle(f"{self.model_name} on {self.data.name} [{self.be.name}]")
        fig.tight_layout()
        atomic_write_bytes(self.run_dir / "forecast.png", png_bytes(fig, dpi=100))

    def _plot(self) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
        steps = [r["step"] for r in self.history.steps]
        a.plot(steps, [r["loss"] for r in self.history.steps], lw=0.8, label="train loss (step)")
        ep = self.history.epochs
        if ep:
            a.plot([r["step"] for r in ep], [r["val_loss"] for r in ep], "o-", label="val loss")
            if self.regression:  # masked MAE in target units (mph for data=traffic), no accuracy
                b.plot([r["epoch"] for r in ep], [r["val_mae"] for r in ep], "o-", label="val masked MAE")
            else:
                b.plot([r["epoch"] for r in ep], [r["train_acc"] for r in ep], "o-", label="train acc")
                b.plot([r["epoch"] for r in ep], [r["val_acc"] for r in ep], "o-", label="val acc")
        a.set_xlabel("optimizer step")
        a.set_yscale("log")
        a.legend()
        b.set_xlabel("epoch")
        b.legend()
        fig.suptitle(f"{self.model_name} on {self.data.name} [{self.be.name}]")
        fig.tight_layout()
        atomic_write_bytes(self.run_dir / "curves.png", png_bytes(fig, dpi=100))
