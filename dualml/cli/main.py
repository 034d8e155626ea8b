"""``dualml <command> key=value ...``: every command reads the config, writes a report and prints
where it went. Bad input exits 2 with one line; a failed check exits 1."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from ..errors import DualmlError

COMMANDS = {
    "train": "train `model` on `data` with `trainer` settings on `backend`; prints the run folder",
    "parity": "run the parity suite between `backend` and `parity.against`",
    "curves": "train the config on `backend` and `parity.against` in float64 and float32; same training?",
    "demo": "build `model` on both backends from one seed, move weights through safetensors, compare",
    "layout": "print the canonical weight layout of `model` and each backend's native names",
    "export": "export `backend`'s model (from export.checkpoint) to ONNX, verify it in ONNX Runtime",
    "predict": "run an ONNX model on an .npy file: `dualml predict model.onnx input=x.npy`",
    "serve": "serve an ONNX model over HTTP with request batching: `dualml serve model.onnx`",
    "compress": "run the compression pipeline `compress` (configs/compress/*.yaml) on `backend`, measure each pass",
    "bench": "measure `model` on torch and paddle side by side (train step, eager/ORT latency, memory, export, INT8)",
    "decide": "score the decision matrix `decision` (configs/decision/*.yaml) from the bench report; pick a backend",
    "estimate": "memory formula for training `model` at data.batch_size, term by term, next to the measured peak",
    "config": "print the resolved config",
}
#: commands implemented outside this file ("module:function"), imported only when run
EXTERNAL = {"export": "dualml.onnx.export:cmd_export", "predict": "dualml.onnx.serve:cmd_predict",
            "serve": "dualml.onnx.serve:cmd_serve", "compress": "dualml.compress.pipeline:cmd_compress",
            "bench": "dualml.evidence.bench:cmd_bench", "decide": "dualml.evidence.decide:cmd_decide",
            "estimate": "dualml.evidence.estimate:cmd_estimate", "curves": "dualml.evidence.curves:cmd_curves"}
#: commands that also get the command line's overrides (to relaunch or reload the config from them)
TAKES_OVERRIDES = ("train", "export", "curves")
#: commands whose own config section's keys may be given bare (``out=m.onnx`` = ``export.out=m.onnx``);
#: a bare word (no ``=``) is that section's ``model``
SECTIONS = {"export": "export", "predict": "predict", "serve": "serve", "decide": "decide"}


def _write_report(cfg: DictConfig, name: str, report: dict[str, Any], md: str | None = None) -> Path:
    from ..checkpoint import atomic_write_text

    out = Path(cfg.out_dir) / name
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=str))
    if md is not None:
        atomic_write_text(out / "report.md", md)
    return out


def _launch_data_parallel(cfg: DictConfig, overrides: Sequence[str]) -> int:
    """``trainer.devices=N``: re-run this command on N workers under the framework's own launcher."""
    import os
    import subprocess
    import tempfile
    import time

    from ..backend import get_backend

    n = int(cfg.trainer.devices)
    run = cfg.trainer.run_dir or f"runs/{cfg.model.name}-{cfg.backend}-dp{n}-{time.strftime('%Y%m%d-%H%M%S')}"
    if Path(run).exists() and not cfg.trainer.resume:
        raise DualmlError(f"run folder {run} already exists; choose another trainer.run_dir or continue it "
                          "with trainer.resume=true (nothing was overwritten)")
    args = ["train", *[o for o in overrides if not o.startswith("trainer.run_dir=")], f"trainer.run_dir={run}"]
    logs = tempfile.mkdtemp(prefix="dualml-launch-")
    script = str(Path(__file__).with_name("launch_worker.py"))
    cmd = get_backend(cfg.backend).launch_command(n, script, args, logs)
    print(f"launching {n} {cfg.backend} workers: {' '.join(cmd)}")
    rc = subprocess.call(cmd, env={**os.environ, "DUALML_WORKER": "1"})
    print(f"launcher logs: {logs}")
    return rc


def cmd_train(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    import os

    from ..train.trainer import Trainer, TrainingDiverged

    if int(cfg.trainer.devices) > 1 and not os.environ.get("DUALML_WORKER"):
        return _launch_data_parallel(cfg, overrides)
    if int(cfg.trainer.devices) < 1:
        raise DualmlError(f"trainer.devices={cfg.trainer.devices} is not allowed; allowed: an integer >= 1")
    trainer = Trainer(cfg)
    try:
        metrics = trainer.fit()
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run = trainer.run_dir
    if not trainer.is_main:
        return 0
    if trainer.world_size > 1:
        print(f"data parallel over {trainer.world_size} ranks; mean |rank - rank 0| weight difference "
              f"{metrics['rank_weight_diff_mean']:.3g}")
    print(f"{metrics['model']} [{metrics['backend']}]: test accuracy {metrics['test_acc']:.4f}, test loss "
          f"{metrics['test_loss']:.4f} after {metrics['steps']} steps / {metrics['epochs']} epochs "
          f"in {metrics['seconds']:.1f} s" + (" (stopped early)" if metrics["stopped_early"] else ""))
    print(f"run folder: {run} (metrics.json, curves.png, steps.csv, epochs.csv, tb/, best/last.safetensors)")
    return 0


def cmd_parity(cfg: DictConfig) -> int:
    from ..build import check_dtype
    from ..parity import Tolerance, default_cases, markdown, run_suite

    backends = (cfg.backend, cfg.parity.against)
    if backends[0] == backends[1]:
        raise DualmlError(f"parity.against={backends[1]} is the same as backend={backends[0]}; "
                          "compare two different backends")
    cases = [c for c in default_cases(zoo=cfg.parity.zoo, backends=backends)
             if not cfg.parity.only or cfg.parity.only in c.name]
    if not cases:
        raise DualmlError(f"parity.only={cfg.parity.only} matches no case")
    dtype = check_dtype("parity.dtype", cfg.parity.dtype)
    tol = (Tolerance.float64(float(cfg.parity.float64_rtol)) if dtype == "float64" else
           Tolerance(cfg.parity.atol, cfg.parity.rtol, cfg.parity.grad_atol, cfg.parity.grad_rtol))
    from ..cpu import describe_cpu

    cpu = describe_cpu()
    print(f"parity in {dtype}: |a-b| <= {tol.atol:g} + {tol.rtol:g}*|b| (forward), "
          f"{tol.grad_atol:g} + {tol.grad_rtol:g}*|b| (gradients); CPU {cpu['cpu_flags']}, kernel limits "
          f"{cpu['kernel_limits']}")
    report = run_suite(cases, backends, tol, seed=cfg.seed, dtype=dtype)
    groups: dict[str, list[dict]] = {}
    for r in report["results"]:
        groups.setdefault(r["group"], []).append(r)
    print(f"{'group':8} {'runs':>5} {'passed':>7} {'max fwd abs':>12} {'max grad abs':>13}")
    for g, rs in groups.items():  # gradients of cases with a named float32 constant or kink are reported below
        plain = [r["grad_max_abs"] for r in rs if not r["float32_constants"] and not r["kinks"]]
        print(f"{g:8} {len(rs):5d} {sum(r['passed'] for r in rs):7d} "
              f"{max(r['forward_max_abs'] for r in rs):12.2e} {max(plain, default=0.0):13.2e}")
    for r in report["results"]:
        if not r["passed"]:
            print(f"FAIL {r['name']} [{r['mode']}]: {r['message']}"
                  + (f" | first divergence: {r['first_divergence']}" if r["first_divergence"] else ""))
    s = report["summary"]
    md = markdown(report)
    for c in report["float32_constants"]:
        worst = max(r["grad_max_abs"] for r in report["results"]
                    if any(x.startswith(c) for x in r["float32_constants"]))
        print(f"named float32 constant: {c}; largest gradient difference where it applies: {worst:.1e}")
    for r in report["results"]:
        if r["kinks"]:
            print(f"kink in {r['name']} [{r['mode']}]: {'; '.join(r['kinks'])}")
    onnx_failed = 0
    if cfg.parity.onnx and cfg.parity.zoo and dtype == "float64":
        print("ONNX parity runs with parity.dtype=float32 (the exports are float32 graphs)")
    elif cfg.parity.onnx and cfg.parity.zoo:
        from ..onnx.export import onnx_markdown, onnx_parity
        from ..zoo import ZOO, create_model

        models = {n: create_model(n) for n in ZOO if not cfg.parity.only or cfg.parity.only in f"onnx:{n}"}
        if models:
            report["onnx"] = onnx_parity(models, backends, seed=cfg.seed, atol=cfg.parity.atol, rtol=cfg.parity.rtol)
            md += "\n" + onnx_markdown(report["onnx"])
            rs = report["onnx"]["results"]
            onnx_failed = report["onnx"]["failed"]
            print(f"{'onnx':8} {len(rs):5d} {len(rs) - onnx_failed:7d} {max(r['max_abs'] for r in rs):12.2e} "
                  f"{'(ORT vs ORT)':>13}")
            for r in rs:
                if not r["passed"]:
                    print(f"FAIL onnx:{r['model']}: max abs {r['max_abs']:.3g} {r['message']}")
    out = _write_report(cfg, "parity", report, md)
    print(f"{s['passed']}/{s['cases']} parity runs passed in {dtype} ({backends[0]} vs {backends[1]})"
          + (f"; ONNX exports agree on {len(rs) - onnx_failed}/{len(rs)} zoo models" if "onnx" in report else ""))
    print(f"report: {out / 'report.json'} and {out / 'report.md'}")
    return 0 if s["failed"] == 0 and not onnx_failed else 1


def cmd_demo(cfg: DictConfig) -> int:
    import numpy as np
    from sklearn.datasets import load_digits

    from .. import build, convert, get_backend, get_weights, set_weights
    from ..checkpoint import load_weights, save_weights
    from ..config import model_params
    from ..module import describe
    from ..parity import Case, run_case
    from ..zoo import create_model

    name, params = model_params(cfg)
    model = create_model(name, **params)
    spec = model.input_spec(8)[0]
    if name in ("mlp", "cnn"):  # real data: the first 8 digits, scaled to [0, 1]
        x = (load_digits().images[:8] / 16.0).astype("float32").reshape(spec.shape)
    else:
        x = spec.sample(np.random.default_rng(cfg.seed))
    a, b = cfg.backend, cfg.parity.against
    net_a = build(model, a, seed=cfg.seed)
    print(f"built {name} for {a}: {type(net_a).__module__}.{type(net_a).__name__}; leaves are "
          f"{sorted({type(m).__module__.split('.')[0] + '.' + type(m).__name__ for m in _leaves(net_a)})}")
    path = Path(cfg.out_dir) / "demo" / f"{name}.safetensors"
    save_weights(path, get_weights(net_a), {"model": name, "backend": a, "architecture": describe(model)})
    weights, meta = load_weights(path)
    net_b = build(model, b, weights=weights)
    print(f"moved {len(weights)} canonical tensors {a} -> {path} -> {b} ({type(net_b).__name__} on {b})")
    ya = get_backend(a).numpy(net_a(get_backend(a).tensor(x)))
    yb = get_backend(b).numpy(net_b(get_backend(b).tensor(x)))
    diff = float(np.abs(ya - yb).max())
    back = get_weights(convert(net_b, a))
    exact = all(np.array_equal(back[k], weights[k]) for k in weights)
    set_weights(net_a, back)
    print(f"forward on {x.shape[0]} inputs: max |{a} - {b}| = {diff:.3g}; predictions agree: "
          f"{bool((ya.argmax(-1) == yb.argmax(-1)).all())}; round trip {a}->{b}->{a} bit-exact: {exact}")
    results = [run_case(Case(f"model:{name}", "model", model, model.input_spec(2)), mode, (a, b), seed=cfg.seed)
               for mode in ("eval", "train")]
    for r in results:
        print(f"parity [{r.mode}]: {'pass' if r.passed else 'FAIL'} forward max abs {r.forward_max_abs:.2e}, "
              f"grad max abs {r.grad_max_abs:.2e} {r.message}")
    report = {"model": name, "backends": [a, b], "weights_file": str(path), "forward_max_abs": diff,
              "roundtrip_bit_exact": exact, "parity": [r.__dict__ for r in results]}
    out = _write_report(cfg, "demo", report)
    print(f"report: {out / 'report.json'}")
    return 0 if exact and all(r.passed for r in results) else 1


def _leaves(native: Any) -> list[Any]:
    from ..build import native_leaves

    return list(native_leaves(native).values())


def cmd_layout(cfg: DictConfig) -> int:
    from ..backend import get_backend, layer_impl
    from ..config import model_params
    from ..module import join, named_leaves
    from ..zoo import create_model

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
    print(md)
    out = _write_report(cfg, "layout", {"model": name, "table": rows}, md)
    print(f"report: {out / 'report.md'}")
    return 0


def cmd_config(cfg: DictConfig) -> int:
    print(OmegaConf.to_yaml(cfg))
    return 0


def usage() -> str:
    lines = ["usage: dualml <command> [key=value ...]", "", "commands:"]
    lines += [f"  {k:8} {v}" for k, v in COMMANDS.items()]
    lines += ["", "examples: dualml parity backend=torch parity.against=paddle",
              "          dualml demo model=cnn", "          dualml layout model=transformer",
              "          dualml export backend=paddle checkpoint=runs/RUN/best out=model.onnx",
              "          dualml serve model.onnx port=8000"]
    return "\n".join(lines)


def _expand(command: str, overrides: list[str]) -> list[str]:
    """``dualml serve m.onnx port=9000`` -> ``serve.model=m.onnx serve.port=9000`` (section keys only)."""
    section = SECTIONS.get(command)
    if section is None:
        return overrides
    from ..config import config_dir

    keys = set(OmegaConf.load(config_dir() / "config.yaml").get(section, {}).keys())
    out = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if "=" not in item and not item.startswith("-"):
            out.append(f"{section}.model={item}")
        elif key in keys:
            out.append(f"{section}.{item}")
        else:
            out.append(item)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    from ..errors import did_you_mean
    from .auto import load

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: command '{command}' is not allowed; allowed: {', '.join(COMMANDS)}"
              f"{did_you_mean(command, COMMANDS)}", file=sys.stderr)
        return 2
    try:
        overrides = _expand(command, overrides)
        cfg = load(overrides)
        if command in EXTERNAL:
            import importlib

            module, name = EXTERNAL[command].split(":")
            func = getattr(importlib.import_module(module), name)
        else:
            func = globals()[f"cmd_{command}"]
        return func(cfg, overrides) if command in TAKES_OVERRIDES else func(cfg)
    except DualmlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
