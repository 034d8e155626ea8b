"""``dualml parity``: run the parity suite between `backend` and `parity.against`.

The suite itself is dualml.parity (and dualml.onnx.export.onnx_parity for the exports); this file runs it
from a config, prints the table and writes the report.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from omegaconf import DictConfig

from ..backend import get_backend
from ..build import check_dtype
from ..cpu import describe_cpu
from ..devices import CPU, resolve_device
from ..errors import DualmlError
from ..onnx.export import onnx_markdown, onnx_parity
from ..parity import Tolerance, checked_model, default_cases, markdown, run_suite
from ..zoo import ZOO
from .log import result, say
from .report import write_report

#: the one-line description in ``dualml --help``
HELP = 'run the parity suite between `backend` and `parity.against`'
#: config sections (or keys) ``dualml parity --help`` lists
KEYS = ('backend', 'seed', 'out_dir', 'parity')
SECTION = None


def _set_devices(value: str, backends: Sequence[str]) -> dict[str, str]:
    """``parity.device``: both backends run every case on this device (cpu | cuda | cuda:N | auto), with the
    same tolerances; a device one of them cannot use is a one-line error before any case runs."""
    chosen = {}
    for b in backends:
        be = get_backend(b)
        device, _ = resolve_device(value, be.device_count(), backend=b, key="parity.device")
        chosen[b] = dataclasses.replace(device, exact=True) if device.is_cuda else device
    if any(d.is_cuda for d in chosen.values()):
        # cuBLAS/cuDNN honour this for every framework (paddle has no switch of its own we rely on): TF32 would
        # round float32 inputs to 10 mantissa bits, 1e-3 off, far outside the parity tolerances
        os.environ.setdefault("NVIDIA_TF32_OVERRIDE", "0")
    for b, device in chosen.items():
        get_backend(b).set_device(device)
    if any(d.is_cuda for d in chosen.values()):
        say("parity on " + ", ".join(f"{b} {d}" for b, d in chosen.items()))
    return {b: str(d) for b, d in chosen.items()}


def cmd_parity(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """Run the suite from the config, print the per-group table and failures; exit 1 if any case failed."""
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
    cpu = describe_cpu()
    say(f"parity in {dtype}: |a-b| <= {tol.atol:g} + {tol.rtol:g}*|b| (forward), "
          f"{tol.grad_atol:g} + {tol.grad_rtol:g}*|b| (gradients); CPU {cpu['cpu_flags']}, kernel limits "
          f"{cpu['kernel_limits']}")
    devices = _set_devices(cfg.parity.get("device", "cpu"), backends)
    try:
        report = run_suite(cases, backends, tol, seed=cfg.seed, dtype=dtype)
    finally:  # ONNX parity and anything after it compare on the host, as exported graphs are checked there
        for b in backends:
            get_backend(b).set_device(CPU)
    report["device"] = devices
    groups: dict[str, list[dict]] = {}
    for r in report["results"]:
        groups.setdefault(r["group"], []).append(r)
    say(f"{'group':8} {'runs':>5} {'passed':>7} {'max fwd abs':>12} {'max grad abs':>13}")
    for g, rs in groups.items():  # gradients of cases with a named float32 constant or kink are reported below
        plain = [r["grad_max_abs"] for r in rs if not r["float32_constants"] and not r["kinks"]]
        say(f"{g:8} {len(rs):5d} {sum(r['passed'] for r in rs):7d} "
              f"{max(r['forward_max_abs'] for r in rs):12.2e} {max(plain, default=0.0):13.2e}")
    for r in report["results"]:
        if not r["passed"]:
            say(f"FAIL {r['name']} [{r['mode']}]: {r['message']}"
                  + (f" | first divergence: {r['first_divergence']}" if r["first_divergence"] else ""))
    s = report["summary"]
    md = markdown(report)
    for c in report["float32_constants"]:
        worst = max(r["grad_max_abs"] for r in report["results"]
                    if any(x.startswith(c) for x in r["float32_constants"]))
        say(f"named float32 constant: {c}; largest gradient difference where it applies: {worst:.1e}")
    for r in report["results"]:
        if r["kinks"]:
            say(f"kink in {r['name']} [{r['mode']}]: {'; '.join(r['kinks'])}")
    onnx_failed = 0
    if cfg.parity.onnx and cfg.parity.zoo and dtype == "float64":
        say("ONNX parity runs with parity.dtype=float32 (the exports are float32 graphs)")
    elif cfg.parity.onnx and cfg.parity.zoo:
        models = {n: checked_model(n) for n in ZOO if not cfg.parity.only or cfg.parity.only in f"onnx:{n}"}
        if models:
            report["onnx"] = onnx_parity(models, backends, seed=cfg.seed, atol=cfg.parity.atol, rtol=cfg.parity.rtol)
            md += "\n" + onnx_markdown(report["onnx"])
            rs = report["onnx"]["results"]
            onnx_failed = report["onnx"]["failed"]
            say(f"{'onnx':8} {len(rs):5d} {len(rs) - onnx_failed:7d} {max(r['max_abs'] for r in rs):12.2e} "
                  f"{'(ORT vs ORT)':>13}")
            for r in rs:
                if not r["passed"]:
                    say(f"FAIL onnx:{r['model']}: max abs {r['max_abs']:.3g} {r['message']}")
    out = write_report(cfg, "parity", report, md)
    result(f"{s['passed']}/{s['cases']} parity runs passed in {dtype} ({backends[0]} vs {backends[1]})"
          + (f"; ONNX exports agree on {len(rs) - onnx_failed}/{len(rs)} zoo models" if "onnx" in report else ""))
    result(f"report: {out / 'report.json'} and {out / 'report.md'}")
    return 0 if s["failed"] == 0 and not onnx_failed else 1
