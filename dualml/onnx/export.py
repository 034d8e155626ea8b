"""ONNX export of either backend, made uniform and verified.

The adapters only run their framework's exporter (torch: dynamo, else TorchScript; paddle:
paddle2onnx). Everything a user relies on afterwards is done here, once, for both: the fixed I/O
names (``input`` -> ``output``, dynamic dim ``batch``), metadata properties, ``onnx.checker``, the
atomic write, and verification of ONNX Runtime against the eager model at two batch sizes (so a
dynamic batch that silently became fixed is caught).
"""
from __future__ import annotations

import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import get_backend
from ..build import build, native_leaves
from ..checkpoint import atomic_write_bytes, load_weights, model_weights, resolve_checkpoint  # noqa: F401  (re-exported)
from ..errors import ConfigError, DualmlError, ExportError, VerificationError, did_you_mean
from ..module import Module
from ..version import __version__
from . import ort

QUANTIZE = ("none", "dynamic", "static")


def config_hash(config: Any) -> str:
    """SHA-256 of a config as canonical JSON: equal configs give equal hashes across machines."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()


def _rename(graph: Any, old: str, new: str) -> None:
    if old == new:
        return
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.name == old:
            v.name = new


def finalize(raw_path: str | Path, out: str | Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Give an exporter's file dualml's I/O names, a symbolic ``batch`` dim and ``metadata`` properties,
    check it with ``onnx.checker`` and write it atomically to ``out``."""
    import onnx

    model = onnx.load(str(raw_path))
    graph = model.graph
    inits = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in inits]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ExportError(f"the exported graph has inputs {[i.name for i in inputs]} and outputs "
                          f"{[o.name for o in graph.output]}; dualml exports single-input, single-output models")
    _rename(graph, inputs[0].name, ort.INPUT_NAME)
    _rename(graph, graph.output[0].name, ort.OUTPUT_NAME)
    for v in (inputs[0], graph.output[0]):
        dims = v.type.tensor_type.shape.dim
        if dims:
            dims[0].ClearField("dim_value")
            dims[0].dim_param = ort.BATCH_DIM
    for node in graph.node:  # the dynamo exporter's per-node stack traces: a third of a small file, and
        del node.metadata_props[:]  # they leak the exporting machine's source paths into deployments
    del model.metadata_props[:]
    for k, v in metadata.items():
        model.metadata_props.add(key=k, value=str(v))
    model.producer_name = f"dualml {__version__} ({metadata.get('backend', '?')})"
    try:
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:  # onnx raises ValidationError and shape-inference errors
        raise ExportError(f"onnx.checker rejects the {metadata.get('exporter')} export: "
                          f"{str(exc).splitlines()[0]}") from None
    atomic_write_bytes(out, model.SerializeToString())
    opsets = {o.domain or "ai.onnx": o.version for o in model.opset_import}
    return {"opset": opsets.get("ai.onnx"), "opsets": opsets, "ir_version": model.ir_version,
            "bytes": Path(out).stat().st_size, "ops": ort.op_histogram(out)}


def eager(net: Any, backend: str, x: np.ndarray) -> np.ndarray:
    """The native model's output on ``x`` in eval mode, as numpy."""
    be = get_backend(backend)
    be.set_train(net, False)
    with be.no_grad():
        return be.numpy(net(be.tensor(x)))


def compare(got: np.ndarray, ref: np.ndarray, atol: float, rtol: float) -> dict[str, Any]:
    """Max abs/rel difference and whether |got - ref| <= atol + rtol*|ref| holds everywhere."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return {"max_abs": float("inf"), "max_rel": float("inf"), "passed": False,
                "message": f"shape {list(got.shape)} != {list(ref.shape)}"}
    d = np.abs(got - ref)
    rel = d / np.maximum(np.abs(ref), 1e-12)
    return {"max_abs": float(d.max(initial=0.0)), "max_rel": float(rel.max(initial=0.0)),
            "passed": bool((d <= atol + rtol * np.abs(ref)).all()), "message": ""}


def verify(path: str | Path, net: Any, backend: str, x: np.ndarray, atol: float = 1e-5,
           rtol: float = 1e-5) -> dict[str, Any]:
    """ONNX Runtime vs eager on the batch ``x`` and on its first sample alone (dynamic batch works)."""
    sess = ort.session(path)
    runs = {}
    for label, xb in ((f"batch {len(x)}", x), ("batch 1", x[:1])):
        runs[label] = compare(ort.run(sess, xb), eager(net, backend, xb), atol, rtol)
    worst = max(runs.values(), key=lambda r: r["max_abs"])
    return {"atol": atol, "rtol": rtol, "runs": runs, "max_abs": worst["max_abs"],
            "max_rel": max(r["max_rel"] for r in runs.values()), "passed": all(r["passed"] for r in runs.values())}


def _first_failing_layer(net: Any, backend: str, x: np.ndarray, opset: int | None, exporter: str) -> str:
    """Export each single-input leaf alone on the input it sees in ``x``'s forward; name the first
    that fails. Only run after the whole model failed, to point the user at a layer."""
    be = get_backend(backend)
    leaves = native_leaves(net)
    seen: dict[str, np.ndarray] = {}

    def pre(path: str, inputs: tuple) -> None:
        if len(inputs) == 1 and be.is_tensor(inputs[0]) and path not in seen:
            seen[path] = be.numpy(inputs[0])
    try:
        with be.no_grad(), be.hooks(leaves, pre=pre):
            net(be.tensor(x))
    except Exception:  # a forward that fails is reported by the export error itself
        return ""
    with tempfile.TemporaryDirectory(prefix="dualml-layer-") as tmp:
        for path, xin in seen.items():
            try:
                be.export_onnx(leaves[path], xin, str(Path(tmp) / "layer.onnx"), opset, exporter)
            except ExportError as exc:
                kind = getattr(leaves[path], "_dualml_spec", None)
                return (f"; the first layer that fails alone is '{path}' "
                        f"({kind.kind if kind else type(leaves[path]).__name__}): {exc}")
    return "; every layer exports alone, so the failure is in the model's own forward code"


def export_model(model: Module, backend: str, weights: dict[str, np.ndarray] | None, out: str | Path,
                 sample: np.ndarray, opset: int | None = None, exporter: str = "auto", seed: int = 0,
                 metadata: dict[str, Any] | None = None, atol: float = 1e-5, rtol: float = 1e-5) -> dict[str, Any]:
    """Build ``model`` on ``backend`` with canonical ``weights``, export, finalize and verify it.

    Raises ExportError when the exporter fails (naming exporter, layer and what to try) and
    VerificationError when ONNX Runtime disagrees with eager beyond atol/rtol (the file is removed,
    so no unverified model is left where a deployment would pick it up).
    """
    be = get_backend(backend)
    allowed = ("auto", *be.exporters)  # the adapter says which export paths it has
    if exporter not in allowed:
        raise ConfigError(f"export.exporter={exporter} is not allowed for backend={be.name}; allowed: "
                          f"{', '.join(allowed)}{did_you_mean(str(exporter), allowed)}")
    net = build(model, backend, seed=seed, weights=weights)
    out = Path(out)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dualml-export-") as tmp:
        raw = str(Path(tmp) / "raw.onnx")
        try:
            info = be.export_onnx(net, sample, raw, opset, exporter)
        except ExportError as exc:
            raise ExportError(f"{exc}{_first_failing_layer(net, backend, sample, opset, exporter)}") from None
        seconds = time.perf_counter() - t0
        meta = {"dualml_version": __version__, "backend": backend, "backend_version": be.version,
                "exporter": info["exporter"], "exporter_version": info["exporter_version"],
                "input": ort.INPUT_NAME, "output": ort.OUTPUT_NAME, **(metadata or {})}
        graph = finalize(raw, out, {k: v for k, v in meta.items() if v is not None})
    check = verify(out, net, backend, sample, atol, rtol)
    report = {"file": str(out), "backend": backend, **info, "export_seconds": round(seconds, 3), **graph,
              "metadata": meta, "verification": check}
    if not check["passed"]:
        out.unlink(missing_ok=True)
        raise VerificationError(
            f"ONNX Runtime disagrees with eager {backend}: max abs diff {check['max_abs']:.3g}, max rel "
            f"{check['max_rel']:.3g} > atol {atol} + rtol {rtol} ({info['exporter']} export removed)")
    return report


# ---------------------------------------------------------------- the `dualml export` command

def checkpoint_model(cfg: Any, path: Path, explicit_model: bool) -> tuple[str, dict, dict[str, np.ndarray], dict]:
    """(model name, model params, canonical weights, metadata) of a training checkpoint or a plain
    canonical weights file. The checkpoint's own model config wins unless the user named a model,
    in which case the two must agree."""
    from omegaconf import OmegaConf

    arrays, meta = load_weights(path)
    weights = model_weights(arrays)
    ours = OmegaConf.to_container(cfg.model, resolve=True)
    theirs = (meta.get("config") or {}).get("model")
    if theirs is None:  # plain weights (dualml.save_weights): the config says what the model is
        if meta.get("model") not in (None, ours["name"]):
            raise ConfigError(f"{path} holds weights of model {meta['model']} but the config builds "
                              f"{ours['name']}; pass model={meta['model']}")
        params = dict(ours)
    elif explicit_model and theirs != ours:
        diff = [f"model.{k}: checkpoint {theirs.get(k)!r}, config {ours.get(k)!r}"
                for k in sorted(set(ours) | set(theirs)) if theirs.get(k) != ours.get(k)]
        raise ConfigError(f"{path} does not match the model config: {'; '.join(diff)} (drop the model "
                          "override to export the checkpoint's own model)")
    else:
        params = dict(theirs)
    return params.pop("name"), params, weights, meta


def sample_batch(cfg: Any, model: Module, n: int) -> tuple[np.ndarray, str]:
    """``n`` test samples from the data config when they fit the model, else seeded random ones."""
    from ..train.data import load_dataset

    spec = model.input_spec(n)[0]
    try:
        ds = load_dataset(cfg.data, input_shape=tuple(spec.shape[1:]), seed=cfg.seed)
        x = ds.test.x[:n]
        if x.dtype == np.dtype(spec.dtype) and len(x) == n:
            return np.ascontiguousarray(x), f"data.name={cfg.data.name} test split"
    except DualmlError:
        pass
    return spec.sample(np.random.default_rng(cfg.seed)), f"random {spec.dtype} {list(spec.shape)}"


# ---------------------------------------------------------------- cross-backend ONNX parity

def onnx_parity(models: dict[str, Module], backends: tuple[str, str] = ("torch", "paddle"), seed: int = 0,
                batch: int = 4, atol: float = 1e-5, rtol: float = 1e-5, out_dir: str | Path | None = None,
                ) -> dict[str, Any]:
    """Export every model on both backends from the same canonical weights (seed) and compare the
    two files' ONNX Runtime outputs on one input. Each export is also verified against its own
    eager model. The operator histograms show how differently the exporters built the graphs."""
    from ..module import init_weights
    from ..quiet import progress_bar

    results = []
    with tempfile.TemporaryDirectory(prefix="dualml-onnx-parity-") as tmp:
        folder = Path(out_dir or tmp)
        for name, model in progress_bar(models.items(), desc="onnx parity", unit="model", leave=False):
            weights = init_weights(model, seed)
            x = model.input_spec(batch)[0].sample(np.random.default_rng(seed))
            exports, outputs = {}, {}
            for b in backends:
                path = folder / f"{name}-{b}.onnx"
                try:
                    exports[b] = export_model(model, b, weights, path, x, seed=seed, atol=atol, rtol=rtol,
                                              metadata={"model": name})
                except DualmlError as exc:
                    exports[b] = {"error": str(exc)}
                    continue
                outputs[b] = ort.run(ort.session(path), x)
            if len(outputs) == len(backends):
                cmp = compare(outputs[backends[0]], outputs[backends[1]], atol, rtol)
            else:
                cmp = {"max_abs": float("inf"), "max_rel": float("inf"), "passed": False,
                       "message": "; ".join(f"{b}: {e['error']}" for b, e in exports.items() if "error" in e)}
            results.append({"model": name, "input": list(x.shape), **cmp,
                            "exports": {b: {k: e.get(k) for k in ("exporter", "opset", "bytes", "ops", "error",
                                                                  "fallback_reason")}
                                        | {"vs_eager_max_abs": e.get("verification", {}).get("max_abs")}
                                        for b, e in exports.items()}})
    return {"backends": list(backends), "atol": atol, "rtol": rtol, "results": results,
            "passed": sum(r["passed"] for r in results), "failed": sum(not r["passed"] for r in results)}


def onnx_markdown(report: dict[str, Any]) -> str:
    """Per model: the ORT-vs-ORT difference, then both graphs' operator histograms side by side."""
    a, b = report["backends"]
    lines = ["## ONNX: the two exports in ONNX Runtime", "",
             f"| model | {a} exporter | {b} exporter | max abs | max rel | pass |", "|---|---|---|---|---|---|"]
    for r in report["results"]:
        ea, eb = r["exports"].get(a, {}), r["exports"].get(b, {})
        ok = "yes" if r["passed"] else "NO"
        lines.append(f"| {r['model']} | {ea.get('exporter')} opset {ea.get('opset')} | {eb.get('exporter')} opset "
                     f"{eb.get('opset')} | {r['max_abs']:.2e} | {r['max_rel']:.2e} | {ok} |")
    for r in report["results"]:
        ops_a, ops_b = r["exports"].get(a, {}).get("ops") or {}, r["exports"].get(b, {}).get("ops") or {}
        lines += ["", f"### {r['model']}: operators", "", f"| op | {a} | {b} |", "|---|---|---|"]
        lines += [f"| {op} | {ops_a.get(op, 0)} | {ops_b.get(op, 0)} |" for op in sorted(set(ops_a) | set(ops_b))]
    return "\n".join(lines) + "\n"
