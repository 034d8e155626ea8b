"""Quantization passes (dynamic INT8, static post-training, quantization-aware training) on either
backend, through the framework's own tools behind adapter methods.

The adapters do the quantizing (``backends/dualml_torch/quantization.py``: torch.ao.quantization;
``backends/dualml_paddle/quantization.py``: PaddleSlim observers/quanters on paddle.quantization) and
write QDQ ONNX files; what is neutral lives here: choosing the mode, the short QAT loop (the Trainer
cannot run it: a prepared QAT model is no longer a dualml-built model), accuracy of the native
quantized model, and the ONNX graph surgery both exporters need to carry int8 Linear layers into the
file (torch has no exporter for dynamically quantized Linear; paddle2onnx 1.3.1 drops the QDQ of
every MatMul). No framework import here.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..backend import get_backend
from ..errors import BackendError, ConfigError, DualmlError, not_allowed

#: quantization modes of a ``quantize`` pipeline step; ``qat`` runs through :func:`qat_train`
MODES = ("dynamic", "static", "qat")


def _require(backend: str, mode: str) -> Any:
    be = get_backend(backend)
    why = be.quantization_support(mode)
    if why is not None:
        raise BackendError(f"quantize mode={mode} is not supported on backend={backend}: {why}")
    return be


def example_input(net: Any, sample: np.ndarray | None = None) -> np.ndarray:
    """The batch a quantizer traces or runs ``net`` on: ``sample`` when given, else one drawn from the
    input spec of the dualml model ``net`` was built from (a natively written model has none)."""
    if sample is None:
        model = getattr(net, "_dualml_model", None)
        if model is None:
            raise BackendError(f"{type(net).__name__} was not built by dualml.build: quantization needs an example "
                               "input to run it")
        sample = model.input_spec(2)[0].sample(np.random.default_rng(0))
    return np.ascontiguousarray(sample)


def quantize(net: Any, backend: str, mode: str, calibration: Sequence[np.ndarray] | None = None) -> Any:
    """Post-training INT8 of a native model: ``dynamic`` (int8 Linear weights, no data) or ``static``
    (weights and activations, ranges from ``calibration``: float32 batches shaped like the input, from
    the train split). Returns the framework's quantized model; ``net`` is left unchanged."""
    if mode not in MODES:
        raise ConfigError(not_allowed("quantize.mode", mode, MODES))
    if mode == "qat":
        raise ConfigError("quantize.mode=qat trains: call qat_train(net, backend, dataset, ...) instead of quantize()")
    be = _require(backend, mode)
    if mode == "dynamic":
        return be.quantize_dynamic(net)
    batches = [np.ascontiguousarray(b, dtype=np.float32) for b in (calibration or [])]
    if not batches or any(b.ndim < 2 or len(b) == 0 for b in batches):
        raise ConfigError("quantize.mode=static needs calibration data: a list of float32 batches [n, ...] from the "
                          "train split (dualml.onnx.int8.calibration_batches)")
    return be.quantize_static(net, batches)


def qat_train(net: Any, backend: str, dataset: Any, epochs: int, lr: float, batch_size: int, seed: int) -> Any:
    """Quantization-aware training: fake-quantize ``net`` (the adapter's ``prepare_qat``), fine-tune it
    ``epochs`` epochs on ``dataset.train`` with Adam at ``lr`` (the framework's optimizer, batches from
    dualml's seeded loader), then convert it to the quantized model."""
    from ..train.data import Loader
    from ..train.optim import OptimSpec, ParamGroup

    if not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"quantize.epochs={epochs!r} is not allowed for mode=qat; allowed: an integer >= 1")
    if not lr or lr <= 0:
        raise ConfigError(f"quantize.lr={lr!r} is not allowed; allowed: > 0")
    be = _require(backend, "qat")
    qat = be.prepare_qat(net)
    opt = be.make_optimizer(qat, OptimSpec(name="adam", lr=float(lr)), [ParamGroup(be.parameter_names(qat))], [])
    loader = Loader(dataset.train, batch_size, shuffle=True, seed=seed, drop_last=True)
    step = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        be.set_train(qat, True)
        for x, y in loader:
            be.seed(seed * 1_000_003 + step)
            loss = be.cross_entropy(qat(be.tensor(x)), be.tensor(y))
            if not math.isfinite(be.item(loss)):
                raise DualmlError(f"quantization-aware training diverged: loss {be.item(loss)} at step {step}; "
                                  "lower quantize.lr")
            be.backward_scaled(loss, 1.0)
            be.optimizer_step(opt)
            step += 1
    be.set_train(qat, False)
    return be.convert_qat(qat)


def native_logits(qnet: Any, backend: str, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of a native (quantized or not) model on ``x`` in eval mode, batch by batch."""
    be = get_backend(backend)
    be.set_train(qnet, False)
    with be.no_grad():
        return np.concatenate([be.numpy(qnet(be.tensor(np.ascontiguousarray(x[i:i + batch_size]))))
                               for i in range(0, len(x), batch_size)])


def evaluate_native(qnet: Any, backend: str, x: np.ndarray, y: np.ndarray, batch_size: int = 256) -> float:
    """Top-1 accuracy of a native (quantized or not) model on ``x``/``y``, in eval mode."""
    return float((native_logits(qnet, backend, x, batch_size).argmax(axis=1) == np.asarray(y)).mean())


# ---------------------------------------------------------------------------- ONNX graph surgery

@dataclass(frozen=True)
class QuantizedLinear:
    """What one quantized Linear computes, to rebuild it in an exported float graph: ``weight`` is
    the float array as the exporter stored it (``q * scale``), ``q`` its int8 values, ``scale``
    per tensor (shape ``()``) or per channel along ``axis``; ``activation`` is None (weight-only),
    ``"dynamic"`` (uint8, scale per batch) or ``(scale, zero_point)`` (static int8)."""

    weight: np.ndarray
    q: np.ndarray
    scale: np.ndarray
    axis: int
    activation: str | tuple[float, int] | None = None


def _constants(graph: Any) -> dict[str, np.ndarray]:
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


def _prune(graph: Any) -> None:
    """Drop initializers and Constant nodes nothing reads any more."""
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    keep = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def _match(w: np.ndarray, lq: QuantizedLinear) -> tuple[np.ndarray, int] | None:
    """(int8 values, channel axis) laid out like ``w`` when ``w`` is ``lq.weight`` or its transpose."""
    if w.shape == lq.weight.shape and np.array_equal(w, lq.weight):
        return lq.q, lq.axis
    if w.ndim == 2 and w.shape == lq.weight.T.shape and np.array_equal(w, lq.weight.T):
        return np.ascontiguousarray(lq.q.T), 1 - lq.axis
    return None


def complete_qdq(path: str | Path, linears: Sequence[QuantizedLinear]) -> int:
    """Rewrite the ONNX file at ``path`` so that each MatMul/Gemm whose weight is one of ``linears``
    reads an int8 initializer through DequantizeLinear, and its input goes through the Linear's
    activation quantization (QuantizeLinear/DequantizeLinear, or DynamicQuantizeLinear/
    DequantizeLinear). Returns how many nodes were rewritten."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consts = _constants(g)
    nodes, done = [], 0
    for node in g.node:
        hit = None
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in consts:
            hit = next(((lq, m) for lq in linears if (m := _match(consts[node.input[1]], lq)) is not None), None)
        if hit is None:
            nodes.append(node)
            continue
        (lq, (q, axis)), base = hit, f"dualml_q{done}"
        scale = np.asarray(lq.scale, np.float32)
        g.initializer.extend([numpy_helper.from_array(q.astype(np.int8), f"{base}_w"),
                              numpy_helper.from_array(scale, f"{base}_w_scale"),
                              numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{base}_w_zp")])
        extra = {"axis": axis} if scale.ndim else {}
        nodes.append(helper.make_node("DequantizeLinear", [f"{base}_w", f"{base}_w_scale", f"{base}_w_zp"],
                                      [f"{base}_w_dq"], **extra))
        node.input[1] = f"{base}_w_dq"
        x = node.input[0]
        if lq.activation == "dynamic":
            nodes += [helper.make_node("DynamicQuantizeLinear", [x], [f"{base}_x_q", f"{base}_x_s", f"{base}_x_zp"]),
                      helper.make_node("DequantizeLinear", [f"{base}_x_q", f"{base}_x_s", f"{base}_x_zp"],
                                       [f"{base}_x_dq"])]
        elif lq.activation is not None:
            s, zp = lq.activation
            g.initializer.extend([numpy_helper.from_array(np.asarray(s, np.float32), f"{base}_x_s"),
                                  numpy_helper.from_array(np.asarray(zp, np.int8), f"{base}_x_zp")])
            nodes += [helper.make_node("QuantizeLinear", [x, f"{base}_x_s", f"{base}_x_zp"], [f"{base}_x_q"]),
                      helper.make_node("DequantizeLinear", [f"{base}_x_q", f"{base}_x_s", f"{base}_x_zp"],
                                       [f"{base}_x_dq"])]
        if lq.activation is not None:
            node.input[0] = f"{base}_x_dq"
        nodes.append(node)
        done += 1
    del g.node[:]
    g.node.extend(nodes)
    _prune(g)
    onnx.save(model, str(path))
    return done


def fold_weight_quantize(path: str | Path) -> int:
    """Replace every QuantizeLinear of a constant (a float weight quantized at run time, as
    paddle2onnx writes them) by its int8 result stored as an initializer: the file then holds int8
    weights, and the arithmetic is unchanged (round half to even and saturate, as QuantizeLinear)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consts = _constants(g)
    rename: dict[str, str] = {}
    keep = []
    for node in g.node:
        if node.op_type == "QuantizeLinear" and len(node.input) >= 3 and all(i in consts for i in node.input[:3]):
            w, s, zp = (consts[i] for i in node.input[:3])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            shape = [1] * w.ndim
            if s.ndim:
                shape[axis] = -1
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(w / s.reshape(shape)) + zp.reshape(shape).astype(np.int64), info.min, info.max)
            name = f"{node.output[0]}_folded"
            g.initializer.append(numpy_helper.from_array(q.astype(zp.dtype), name))
            rename[node.output[0]] = name
            continue
        keep.append(node)
    for node in keep:
        node.input[:] = [rename.get(i, i) for i in node.input]
    del g.node[:]
    g.node.extend(keep)
    _prune(g)
    onnx.save(model, str(path))
    return len(rename)
