"""Does the Trainer cost anything per step? ``dualml.Trainer`` vs a hand-written native training loop.

The Trainer is one backend-neutral loop that reaches the framework only through the adapter. Its
promise is that this indirection is (nearly) free: a user who writes the loop by hand in torch or
paddle would not train faster. This script checks that promise for ``mlp`` and ``cnn`` on digits
(batch 64), per backend, by timing the same work both ways:

* the Trainer: ``Trainer(cfg, write=False, progress=False)`` (no run folder, no CSV/TensorBoard, no
  progress bar, so disk I/O does not blur the comparison), the dualml-built model;
* the native loop: the hand-written twin of the model (``tests/fixtures/handwritten_<backend>.py``) carrying the
  Trainer's initial weights (``dualml.export_native``), the framework's own Adam (lr 1e-2, same betas
  and eps), the framework's own cross-entropy, the same cosine learning rate set on the optimizer
  every step, ``loss.item()`` and the batch's correct-prediction count every step (the per-step loss
  and accuracy the Trainer reports, so both do the same work), no accumulation, no clipping; batches
  from the same ``dualml.train.data.Loader`` over the same digits split. A third loop without the
  accuracy count (loss only) is timed too and reported beside it.

Two comparisons:

1. ``train_step``: ``trainer.train_step([batch])`` (the body of ``fit``'s loop) against one native step
   on the same pre-drawn batches. The sides run in alternating blocks of ``--block-steps`` steps
   (who goes first rotates every block, so drift and cache effects cancel in the ratio); the per-step
   time of a block is its time / steps, and the median over blocks is reported. The default block is
   one step, many rounds: on this shared 2-core machine 25 blocks of 20 steps gave per-round ratio
   IQRs of 10-20 points (a median good to ~2 points), 800 one-step rounds pin the median to well
   under a point, which a 5% target needs.
2. ``fit``: a fresh ``Trainer.fit()`` for ``max_steps`` = ``--fit-epochs`` whole epochs against a native
   loop doing what ``fit`` does for that run: iterate the loader, evaluate the validation split after
   every epoch (batch 512, numpy softmax cross-entropy), the test split at the end. Construction of
   either side is not timed. Repeats alternate order too.

Because both sides start from the same weights and see the same batches and learning rates, their
loss curves must agree; the largest per-step difference is reported as evidence that the two loops
really do the same work.

It also times the Trainer with ``trainer.amp=bf16`` against fp32 (``amp=null``), same interleaving,
and records what autocast really produced (the dtype of the logits inside the adapter's context),
since a bf16 flag that silently runs fp32 would otherwise look like "no speed-up".

Each backend runs in its own subprocess (importing paddle sets ``OMP_NUM_THREADS=1`` for the
process; both frameworks keep OpenMP pools), so torch is never timed next to a loaded paddle. The
parent imports no framework. Both run single-threaded by default (``--threads 1``): paddle uses one
thread unless told otherwise, and on a small shared machine torch's default (one OpenMP thread per
core) turned a 1 ms mlp step into 30-45 ms with an IQR as large as the median whenever another
process held a core (measured on the 2-CPU box this was written on), which no interleaving can
average out. ``--threads 0`` keeps each framework's default. Overhead = trainer / native - 1
(target: <= 5 %).

Usage: ``python benchmarks/bench_trainer.py [--models mlp,cnn] [--blocks 800] [--block-steps 1]
[--fit-repeats 7] [--fit-epochs 2] [--threads 1] [--out DIR]``. Writes ``DIR/bench_trainer.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import atomic_write, run_workers, threads
from tqdm import tqdm

import dualml
from dualml.checkpoint import png_bytes

BACKENDS = ("torch", "paddle")
MODELS = ("mlp", "cnn")
BATCH = 64
LR = 1e-2
BETAS = (0.9, 0.999)
EPS = 1e-8
EVAL_BATCH = 512  # configs/trainer/default.yaml eval_batch_size
SEED = 0


# ---------------------------------------------------------------------------------------------- native side
def _np_softmax_ce(logits: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in float64 numpy: what a hand-written eval loop would report."""
    z = logits.astype(np.float64) - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].mean()), float((logits.argmax(1) == y).mean())


class NativeLoop:
    """A training loop written by hand in one framework, as a user would without dualml.

    Framework specifics are confined to ``__init__``/``step``/``_forward_eval``; everything is the
    plain idiom of each framework (``zero_grad``/``clear_grad``, ``optimizer.step``, ``loss.item()``).
    """

    def __init__(self, backend: str, model_name: str, model_kwargs: dict[str, Any], init: dict[str, np.ndarray],
                 total_steps: int, net: Any = None, accuracy: bool = True) -> None:
        """The hand-written model carrying ``init`` (native names), or, with ``net``, that model as is
        (a dualml-built one: the same loop over it separates loop cost from model cost).

        ``accuracy``: also count the batch's correct predictions every step, as the Trainer does for its
        progress bar and per-step metrics (numpy argmax of the logits, the cheapest way on both
        frameworks); ``False`` is the bare loop that only reads the loss."""
        self.backend, self.total_steps, self.t = backend, total_steps, 0
        self.accuracy, self.last_acc = accuracy, float("nan")
        if backend == "torch":
            import torch
            from fixtures.handwritten_torch import HANDWRITTEN

            self.torch = torch
            self.net = net
            if net is None:
                self.net = HANDWRITTEN[model_name](**model_kwargs)
                self.net.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in init.items()}, strict=True)
            self.opt = torch.optim.Adam(self.net.parameters(), lr=LR, betas=BETAS, eps=EPS)
            self.ce = torch.nn.functional.cross_entropy
        else:
            import paddle
            from fixtures.handwritten_paddle import HANDWRITTEN

            self.paddle = paddle
            self.net = net
            if net is None:
                self.net = HANDWRITTEN[model_name](**model_kwargs)
                missing, unexpected = self.net.set_state_dict(init)
                if missing or unexpected:
                    raise RuntimeError(f"hand-written {model_name} state mismatch: missing {missing}, unexpected "
                                       f"{unexpected}")
            self.opt = paddle.optimizer.Adam(learning_rate=LR, beta1=BETAS[0], beta2=BETAS[1], epsilon=EPS,
                                             parameters=self.net.parameters())
            self.ce = paddle.nn.functional.cross_entropy
        self.net.train()

    def lr(self) -> float:
        """Cosine annealing to 0 over the run, closed form (torch ``CosineAnnealingLR``'s values)."""
        return LR * (1 + math.cos(math.pi * self.t / self.total_steps)) / 2

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        lr = self.lr()
        if self.backend == "torch":
            torch = self.torch
            for group in self.opt.param_groups:
                group["lr"] = lr
            logits = self.net(torch.from_numpy(x))
            loss = self.ce(logits, torch.from_numpy(y))
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.accuracy:
                self.last_acc = np.count_nonzero(logits.detach().numpy().argmax(1) == y) / len(y)
            self.opt.step()
        else:
            paddle = self.paddle
            self.opt.set_lr(lr)
            logits = self.net(paddle.to_tensor(x))
            loss = self.ce(logits, paddle.to_tensor(y))
            loss.backward()
            if self.accuracy:
                self.last_acc = np.count_nonzero(logits.numpy().argmax(1) == y) / len(y)
            self.opt.step()
            self.opt.clear_grad()
        self.t += 1
        return loss.item()

    def _forward_eval(self, x: np.ndarray) -> np.ndarray:
        if self.backend == "torch":
            with self.torch.no_grad():
                return self.net(self.torch.from_numpy(x)).numpy()
        with self.paddle.no_grad():
            return self.net(self.paddle.to_tensor(x)).numpy()

    def evaluate(self, split: Any) -> tuple[float, float]:
        self.net.eval()
        chunks = range(0, len(split.y), EVAL_BATCH)
        out = np.concatenate([self._forward_eval(split.x[i:i + EVAL_BATCH]) for i in chunks])
        self.net.train()
        return _np_softmax_ce(out, split.y)

    def fit(self, loader: Any, data: Any, epochs: int) -> list[float]:
        """What ``Trainer.fit`` does for a run of whole epochs: train, validate each epoch, test at the end."""
        losses = []
        for epoch in range(epochs):
            loader.set_epoch(epoch)
            for x, y in loader:
                losses.append(self.step(x, y))
            self.evaluate(data.val)
        self.evaluate(data.test)
        return losses


# ---------------------------------------------------------------------------------------------- timing
def time_blocks(sides: dict[str, Callable[[], None]], blocks: int) -> dict[str, list[float]]:
    """Run each side's block ``blocks`` times, rotating who goes first; seconds per block per side."""
    names = list(sides)
    out: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    for b in range(blocks):
        order = names[b % len(names):] + names[:b % len(names)]
        for n in order:
            t0 = time.perf_counter()
            sides[n]()
            out[n].append(time.perf_counter() - t0)
    return out


def stats_ms(seconds: list[float], per: int) -> dict[str, float]:
    """Median and IQR in ms per step, for blocks of ``per`` steps."""
    ms = np.asarray(seconds) * 1e3 / per
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1), "min": float(ms.min())}


def paired_ratio(a: list[float], b: list[float]) -> dict[str, float]:
    """Median and IQR of a/b over rounds: each round's blocks ran back to back, so a change in machine
    load between rounds cancels in that round's ratio (a ratio of medians would mix rounds)."""
    r = np.asarray(a) / np.asarray(b)
    q1, med, q3 = np.percentile(r, [25, 50, 75])
    return {"median": float(med), "iqr": float(q3 - q1)}


def _config(backend: str, model: str, max_steps: int, amp: str | None = None) -> Any:
    from dualml.config import load_config

    overrides = [f"backend={backend}", f"model={model}", "data=digits", f"data.batch_size={BATCH}",
                 f"trainer.max_steps={max_steps}", "trainer.optimizer.name=adam", f"trainer.optimizer.lr={LR}",
                 "trainer.schedule.name=cosine", "trainer.accumulate=1", "trainer.clip_norm=null", f"seed={SEED}"]
    if amp:
        overrides.append(f"trainer.amp={amp}")
    return load_config(overrides)


def _native_for(trainer: Any, backend: str, model: str, total_steps: int, built: bool = False,
                accuracy: bool = True) -> NativeLoop:
    """The hand-written twin of ``trainer``'s model starting from the Trainer's initial weights, or
    (``built``) a second dualml build of the model with those weights, trained by the same native loop."""
    from dualml.config import model_params

    _, kwargs = model_params(trainer.cfg)
    weights = dualml.get_weights(trainer.net)
    if built:
        return NativeLoop(backend, model, kwargs, {}, total_steps,
                          net=dualml.build(trainer.model, backend, weights=weights), accuracy=accuracy)
    return NativeLoop(backend, model, kwargs, dualml.export_native(trainer.model, weights, backend), total_steps,
                      accuracy=accuracy)


def _batches(loader: Any, n: int) -> list[tuple[np.ndarray, np.ndarray]]:
    out: list[tuple[np.ndarray, np.ndarray]] = []
    epoch = 0
    while len(out) < n:
        loader.set_epoch(epoch)
        out.extend(loader)
        epoch += 1
    return out[:n]


def bench_train_step(backend: str, model: str, blocks: int, per: int, warmup: int) -> dict[str, Any]:
    """Trainer.train_step vs the native step on identical batches, weights and learning rates."""
    from dualml.train.data import Loader
    from dualml.train.trainer import Trainer

    total = warmup + blocks * per
    trainer = Trainer(_config(backend, model, total), write=False, progress=False)
    loops = {"native": _native_for(trainer, backend, model, total),
             "native_built": _native_for(trainer, backend, model, total, built=True),
             "native_loss_only": _native_for(trainer, backend, model, total, accuracy=False)}
    batches = _batches(Loader(trainer.data.train, BATCH, shuffle=True, seed=SEED, drop_last=True), total)
    losses: dict[str, list[float]] = {"trainer": [], **{k: [] for k in loops}}
    accs: dict[str, list[float]] = {"trainer": [], "native": []}

    def run(side: str, n: int) -> None:
        for _ in range(n):
            x, y = batches[len(losses[side])]
            if side == "trainer":
                row = trainer.train_step([(x, y)])
                losses[side].append(row["loss"])
                accs[side].append(row["acc"])
            else:
                losses[side].append(loops[side].step(x, y))
                if side in accs:
                    accs[side].append(loops[side].last_acc)

    for side in losses:
        run(side, warmup)
    secs = time_blocks({side: (lambda side=side: run(side, per)) for side in losses}, blocks)
    st, sn, sb, sl = (stats_ms(secs[k], per) for k in ("trainer", "native", "native_built", "native_loss_only"))
    total, loop, mdl, bare = (paired_ratio(secs[a], secs[b]) for a, b in
                              (("trainer", "native"), ("trainer", "native_built"), ("native_built", "native"),
                               ("trainer", "native_loss_only")))
    diff = max(float(np.abs(np.asarray(losses["trainer"]) - np.asarray(losses[k])).max()) for k in loops)
    acc_diff = float(np.abs(np.asarray(accs["trainer"]) - np.asarray(accs["native"])).max())
    return {"trainer_ms": st["median"], "trainer_iqr_ms": st["iqr"], "native_ms": sn["median"],
            "native_iqr_ms": sn["iqr"], "native_built_ms": sb["median"], "native_built_iqr_ms": sb["iqr"],
            "native_loss_only_ms": sl["median"], "native_loss_only_iqr_ms": sl["iqr"],
            "overhead": total["median"] - 1, "overhead_iqr": total["iqr"], "loop_overhead": loop["median"] - 1,
            "model_overhead": mdl["median"] - 1, "overhead_vs_loss_only": bare["median"] - 1,
            "overhead_vs_loss_only_iqr": bare["iqr"], "steps_timed": blocks * per,
            "loss_max_abs_diff": diff, "acc_max_abs_diff": acc_diff,
            "final_loss": {k: v[-1] for k, v in losses.items()}}


def bench_fit(backend: str, model: str, repeats: int, epochs: int) -> dict[str, Any]:
    """A fresh Trainer.fit() (write=False) vs a fresh native loop doing the same run, interleaved."""
    from dualml.train.data import Loader
    from dualml.train.trainer import Trainer

    # the dataset is loaded once (by the probe) and shared: loading it is not what is timed
    probe = Trainer(_config(backend, model, 1), write=False, progress=False)
    data, steps = probe.data, epochs * probe.steps_per_epoch
    del probe
    secs: dict[str, list[float]] = {"trainer": [], "native": []}
    loss_diff = 0.0
    gc.collect()
    for r in range(repeats + 1):  # repeat 0 warms both up and is discarded
        trainer = Trainer(_config(backend, model, steps), dataset=data, write=False, progress=False)
        native = _native_for(trainer, backend, model, steps)
        loader = Loader(data.train, BATCH, shuffle=True, seed=SEED, drop_last=True)
        results: dict[str, Any] = {}
        order = ("trainer", "native") if r % 2 == 0 else ("native", "trainer")
        for side in order:
            t0 = time.perf_counter()
            results[side] = trainer.fit() if side == "trainer" else native.fit(loader, data, epochs)
            if r:
                secs[side].append(time.perf_counter() - t0)
        trainer_losses = [row["loss"] for row in trainer.history.steps]
        loss_diff = max(loss_diff, float(np.abs(np.asarray(trainer_losses) - np.asarray(results["native"])).max()))
    st, sn = stats_ms(secs["trainer"], steps), stats_ms(secs["native"], steps)
    ratio = paired_ratio(secs["trainer"], secs["native"])
    return {"trainer_ms_per_step": st["median"], "trainer_iqr_ms": st["iqr"], "native_ms_per_step": sn["median"],
            "native_iqr_ms": sn["iqr"], "overhead": ratio["median"] - 1, "overhead_iqr": ratio["iqr"], "steps": steps,
            "epochs": epochs, "repeats": repeats, "loss_max_abs_diff": loss_diff}


def amp_effect(trainer: Any) -> dict[str, str]:
    """What the adapter's autocast really produced: logits dtype for one training batch."""
    be = trainer.be
    with be.autocast(trainer.t.amp):
        logits = trainer.net(be.tensor(trainer.data.train.x[:2]))
    return {"logits_dtype": be.dtype_name(logits)}


def bench_amp(backend: str, model: str, blocks: int, per: int, warmup: int) -> dict[str, Any]:
    """Trainer.train_step with trainer.amp=bf16 vs amp=null, same batches, interleaved blocks."""
    from dualml.train.data import Loader
    from dualml.train.trainer import Trainer

    total = warmup + blocks * per
    trainers = {"fp32": Trainer(_config(backend, model, total), write=False, progress=False),
                "bf16": Trainer(_config(backend, model, total, amp="bf16"), write=False, progress=False)}
    batches = _batches(Loader(trainers["fp32"].data.train, BATCH, shuffle=True, seed=SEED, drop_last=True), total)
    losses: dict[str, list[float]] = {k: [] for k in trainers}

    def run(side: str, n: int) -> None:
        for _ in range(n):
            losses[side].append(trainers[side].train_step([batches[len(losses[side])]])["loss"])

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an adapter's "bf16 not available here" notice is recorded below instead
        effect = {k: amp_effect(t) for k, t in trainers.items()}
        for side in trainers:
            run(side, warmup)
        secs = time_blocks({k: (lambda k=k: run(k, per)) for k in trainers}, blocks)
    s32, s16 = stats_ms(secs["fp32"], per), stats_ms(secs["bf16"], per)
    ratio = paired_ratio(secs["bf16"], secs["fp32"])
    return {"fp32_ms": s32["median"], "fp32_iqr_ms": s32["iqr"], "bf16_ms": s16["median"], "bf16_iqr_ms": s16["iqr"],
            "bf16_over_fp32": ratio["median"], "bf16_over_fp32_iqr": ratio["iqr"],
            "logits_dtype": effect["bf16"]["logits_dtype"],
            "loss_max_abs_diff": float(np.abs(np.asarray(losses["bf16"]) - np.asarray(losses["fp32"])).max()),
            "final_loss": {k: v[-1] for k, v in losses.items()}}


# ---------------------------------------------------------------------------------------------- report




def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def markdown(report: dict[str, Any]) -> str:
    cfg, res, lines = report["config"], report["results"], []
    lines += ["# dualml Trainer vs a hand-written native training loop", "",
              f"Digits, batch {BATCH}, Adam lr {LR} with per-step cosine lr, accumulate 1, no clipping, fp32. "
              f"Overhead = trainer / native - 1 (target <= 5%). Each backend in its own process.", "",
              "## train_step: `Trainer.train_step([batch])` (the loop body of `fit`) vs one native step", "",
              f"Median ms per step over {cfg['blocks']} rotating blocks of {cfg['block_steps']} steps (IQR in "
              "parentheses). native = the hand-written model in a hand-written loop; native loop, built model = "
              "the same loop over a dualml-built copy, which splits the overhead into the loop's share (trainer vs "
              "that) and the built model's (that vs native; see bench_core). Overheads are medians of per-round "
              "ratios (IQR in percentage points in parentheses): a round's blocks run back to back, so load "
              "changes between rounds cancel. Both native loops read the loss and count the batch's correct "
              "predictions every step, the per-step metrics the Trainer reports; native loss only = the "
              "hand-written loop without the accuracy count, for reference. loss / acc diff = largest per-step "
              "|trainer - native| (same weights, batches and lr: 0 means the loops do the same work).", "",
              "| model | backend | trainer ms | native ms | native loop, built model ms | overhead | of which loop "
              "| of which model | native loss only ms | overhead vs loss only | loss diff | acc diff |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for m in cfg["models"]:
        for b in BACKENDS:
            r = res[m][b]["train_step"]
            lines.append(f"| {m} | {b} | {r['trainer_ms']:.3f} ({r['trainer_iqr_ms']:.3f}) | {r['native_ms']:.3f} "
                         f"({r['native_iqr_ms']:.3f}) | {r['native_built_ms']:.3f} ({r['native_built_iqr_ms']:.3f}) | "
                         f"**{_pct(r['overhead'])}** ({100 * r['overhead_iqr']:.1f}) | {_pct(r['loop_overhead'])} | "
                         f"{_pct(r['model_overhead'])} | {r['native_loss_only_ms']:.3f} "
                         f"({r['native_loss_only_iqr_ms']:.3f}) | {_pct(r['overhead_vs_loss_only'])} "
                         f"({100 * r['overhead_vs_loss_only_iqr']:.1f}) | "
                         f"{r['loss_max_abs_diff']:.1e} | {r['acc_max_abs_diff']:.1e} |")
    lines += ["", f"## fit: `Trainer(cfg, write=False, progress=False).fit()` vs the native loop, "
              f"{cfg['fit_epochs']} epochs", "",
              f"ms per optimizer step (whole run / steps, incl. per-epoch validation and the final test "
              f"evaluation on both sides), median of {cfg['fit_repeats']} alternating repeats after one warm-up; "
              "overhead = median of per-repeat ratios.", "",
              "| model | backend | steps | trainer ms/step | native ms/step | overhead | loss diff |",
              "|---|---|---|---|---|---|---|"]
    for m in cfg["models"]:
        for b in BACKENDS:
            r = res[m][b]["fit"]
            lines.append(f"| {m} | {b} | {r['steps']} | {r['trainer_ms_per_step']:.3f} ({r['trainer_iqr_ms']:.3f}) | "
                         f"{r['native_ms_per_step']:.3f} ({r['native_iqr_ms']:.3f}) | **{_pct(r['overhead'])}** "
                         f"({100 * r['overhead_iqr']:.1f}) | "
                         f"{r['loss_max_abs_diff']:.1e} |")
    lines += ["", "## torch / paddle (median time ratio; < 1 means torch is faster)", "",
              "| model | train_step trainer | train_step native | fit trainer | fit native |", "|---|---|---|---|---|"]
    for m in cfg["models"]:
        tp = res[m]["torch_over_paddle"]
        lines.append(f"| {m} | {tp['train_step_trainer']:.3f} | {tp['train_step_native']:.3f} | "
                     f"{tp['fit_trainer']:.3f} | {tp['fit_native']:.3f} |")
    lines += ["", "## trainer.amp=bf16 vs fp32 (Trainer.train_step, same interleaving)", "",
              "logits dtype = what the adapter's autocast actually produced for the model output.", "",
              "| model | backend | fp32 ms | bf16 ms | bf16 / fp32 | logits dtype under amp=bf16 | max loss diff |",
              "|---|---|---|---|---|---|---|"]
    for m in cfg["models"]:
        for b in BACKENDS:
            r = res[m][b]["amp"]
            lines.append(f"| {m} | {b} | {r['fp32_ms']:.3f} ({r['fp32_iqr_ms']:.3f}) | {r['bf16_ms']:.3f} "
                         f"({r['bf16_iqr_ms']:.3f}) | {r['bf16_over_fp32']:.3f} ({r['bf16_over_fp32_iqr']:.3f}) | "
                         f"{r['logits_dtype']} | "
                         f"{r['loss_max_abs_diff']:.1e} |")
    mc = report["machine"]
    threads = ", ".join(f"{b}: {t}" for b, t in mc["threads"].items())
    lines += ["", f"Machine: {mc['platform']}, {mc['cpu_count']} CPUs (bf16 flags: "
              f"{', '.join(mc['cpu_bf16_flags']) or 'none'}), python {mc['python']}, torch {mc['torch']}, paddle "
              f"{mc['paddle']}, numpy {mc['numpy']}; intra-op threads ({threads}); 1-min load average "
              f"{mc['loadavg_1m_start']:.2f} at start (the minute before the run; near or above the CPU count "
              f"means other work competed for the CPUs), "
              f"{mc['loadavg_1m_end']:.2f} at end (includes this run). Total {report['elapsed_s']:.0f} s.", ""]
    return "\n".join(lines)


def plot(report: dict[str, Any]) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, res = report["config"]["models"], report["results"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    series = [(bk, kind, key, label) for bk in BACKENDS for kind, key, label in
              (("train_step", "overhead", "train_step"), ("train_step", "overhead_vs_loss_only",
                                                          "train_step vs loss-only loop"), ("fit", "overhead", "fit"))]
    width = 0.8 / len(series)
    for i, (bk, kind, key, label) in enumerate(series):
        vals = [100 * res[m][bk][kind][key] for m in models]
        a.bar(np.arange(len(models)) + (i - (len(series) - 1) / 2) * width, vals, width, label=f"{bk} {label}")
    a.axhline(5.0, color="red", linewidth=0.8, linestyle="--", label="target 5%")
    a.axhline(0.0, color="black", linewidth=0.6)
    a.set_xticks(np.arange(len(models)), models)
    a.set_ylabel("Trainer overhead vs native loop (%)")
    a.set_title("Trainer / hand-written loop - 1")
    a.legend(fontsize=8)
    width = 0.8 / len(BACKENDS)
    for i, bk in enumerate(BACKENDS):
        vals = [res[m][bk]["amp"]["bf16_over_fp32"] for m in models]
        b.bar(np.arange(len(models)) + (i - (len(BACKENDS) - 1) / 2) * width, vals, width,
              label=f"{bk} (logits {res[models[0]][bk]['amp']['logits_dtype']})")
    b.axhline(1.0, color="black", linewidth=0.8, linestyle="--")
    b.set_xticks(np.arange(len(models)), models)
    b.set_ylabel("step time bf16 / fp32")
    b.set_title("trainer.amp=bf16 (< 1 = faster)")
    b.legend(fontsize=8)
    fig.tight_layout()
    return png_bytes(fig, dpi=120)


# ---------------------------------------------------------------------------------------------- processes
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default=",".join(MODELS), help="comma-separated: mlp, cnn (default: both)")
    ap.add_argument("--blocks", type=int, default=800, help="timed blocks per side (default 800)")
    ap.add_argument("--block-steps", type=int, default=1, help="optimizer steps per block (default 1)")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps per side first (default 20)")
    ap.add_argument("--fit-repeats", type=int, default=7, help="timed fit() runs per side (default 7)")
    ap.add_argument("--fit-epochs", type=int, default=2, help="epochs per fit() run (default 2)")
    ap.add_argument("--threads", type=int, default=1,
                    help="intra-op threads for both frameworks (default 1; 0 = each framework's default)")
    ap.add_argument("--out", default="reports/bench_trainer", help="report directory")
    ap.add_argument("--worker", choices=BACKENDS, help=argparse.SUPPRESS)  # internal: one backend, JSON to --out
    args = ap.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; allowed: {', '.join(MODELS)}")
    if min(args.blocks, args.block_steps, args.fit_repeats, args.fit_epochs) < 1 or args.warmup < 0:
        ap.error("--blocks, --block-steps, --fit-repeats, --fit-epochs must be >= 1 and --warmup >= 0")
    return args




def worker(args: argparse.Namespace) -> None:
    """One backend in this process: every model, every comparison, as JSON."""
    backend = args.worker
    warnings.filterwarnings("ignore", category=UserWarning)  # paddle's BatchNorm "always track" notice
    be = dualml.get_backend(backend)  # import the framework (paddle after zlib) before timing anything
    if args.threads:
        be.set_threads(args.threads)
    results: dict[str, Any] = {}
    for m in tqdm(args.models, desc=f"bench_trainer {backend}", unit="model", file=sys.stderr):
        results[m] = {"train_step": bench_train_step(backend, m, args.blocks, args.block_steps, args.warmup),
                      "fit": bench_fit(backend, m, args.fit_repeats, args.fit_epochs),
                      "amp": bench_amp(backend, m, args.blocks, args.block_steps, args.warmup)}
    atomic_write(Path(args.out), json.dumps({"results": results, "threads": threads(backend)}).encode())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    env = dict(os.environ)
    if args.threads:  # paddle reads OMP_NUM_THREADS at import (and sets 1 when unset); torch reads it too
        env["OMP_NUM_THREADS"] = str(args.threads)
    worker_args = ["--models", ",".join(args.models), "--blocks", str(args.blocks), "--block-steps",
                   str(args.block_steps), "--warmup", str(args.warmup), "--fit-repeats", str(args.fit_repeats),
                   "--fit-epochs", str(args.fit_epochs), "--threads", str(args.threads)]
    parts, machine = run_workers(__file__, worker_args, BACKENDS, env)
    results: dict[str, Any] = {m: {b: parts[b]["results"][m] for b in BACKENDS} for m in args.models}
    for per in results.values():
        t, p = per["torch"], per["paddle"]
        per["torch_over_paddle"] = {
            "train_step_trainer": t["train_step"]["trainer_ms"] / p["train_step"]["trainer_ms"],
            "train_step_native": t["train_step"]["native_ms"] / p["train_step"]["native_ms"],
            "fit_trainer": t["fit"]["trainer_ms_per_step"] / p["fit"]["trainer_ms_per_step"],
            "fit_native": t["fit"]["native_ms_per_step"] / p["fit"]["native_ms_per_step"]}
    report = {
        "config": {"models": args.models, "blocks": args.blocks, "block_steps": args.block_steps,
                   "threads": args.threads or "framework default",
                   "warmup": args.warmup, "fit_repeats": args.fit_repeats, "fit_epochs": args.fit_epochs,
                   "batch": BATCH, "optimizer": f"Adam lr={LR} betas={BETAS} eps={EPS}, cosine lr set every step",
                   "seed": SEED,
                   "notes": "Trainer(cfg, write=False, progress=False); train_step timed as "
                            "trainer.train_step([batch]) (fit's loop body) vs a native step; fit timed whole "
                            "(incl. per-epoch val and final test eval) vs a native loop doing the same; "
                            "overhead = trainer/native - 1; one process per backend"},
        "machine": machine,
        "results": results,
        "elapsed_s": time.perf_counter() - started,
    }
    atomic_write(out / "bench_trainer.json", json.dumps(report, indent=2).encode())
    atomic_write(out / "bench_trainer.md", markdown(report).encode())
    atomic_write(out / "bench_trainer.png", plot(report))
    print(markdown(report))
    print(f"reports written to {out.resolve()}/bench_trainer.{{json,md,png}} ({report['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
