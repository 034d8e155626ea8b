"""INT8 post-training quantization of an exported fp32 ONNX file, and what it costs and gains.

Why through ONNX Runtime and not ``torch.ao.quantization`` / PaddleSlim: the two frameworks quantize
differently (observers, fused patterns, int8 layouts), so an "int8 model" would mean two things and
could only be run by its own framework. Quantizing the *exported* ONNX file with ORT's tool is one
path for both backends' exports (torch's TorchScript/dynamo exporters and paddle2onnx), and the
result runs where the fp32 file runs. No framework import here: numpy, onnx and onnxruntime only.

Both modes first run ORT's ``quant_pre_process`` (symbolic + ONNX shape inference and ORT's basic
graph optimizations, into a temporary file). That is what makes the two exporters' graphs look the
same to the quantizer: paddle2onnx stores weights as ``Constant`` nodes and keeps BatchNormalization
unfused, which the optimizer folds into initializers and into the Conv weights, as torch's exporter
already does. Without it (measured on paddle2onnx's cnn) the quantizer treats paddle's weights as
activations, quantizing them at run time, and the "int8" file came out larger than the fp32 one.

Settings (static; chosen by measuring the trained digits cnn; the table is in the commit message that added this file):

- QDQ format: ORT's CPU provider fuses QuantizeLinear/DequantizeLinear around Conv/Gemm/pooling into
  QLinearConv/QGemm/QLinearGlobalAveragePool kernels (checked on the optimized graph: the whole cnn
  runs in int8 between one QuantizeLinear and one DequantizeLinear).
- Weights ``QInt8``, symmetric (zero point 0), per output channel by default: signed symmetric
  weights need no zero-point correction terms in the int8 GEMM, and per-channel scales keep
  small-magnitude output channels from being rounded to a few levels.
- Activations ``QUInt8``, asymmetric: u8 x s8 is the native operand pair of x86 int8 dot products
  (AVX2 ``vpmaddubsw``, AVX512-VNNI/AVX-VNNI ``vpdpbusd``), and ORT turns s8 activations into u8 on
  x86 anyway (measured: QInt8 activations gave the identical outputs). Asymmetric u8 puts the zero
  point at 0 for post-ReLU tensors, so all 256 levels cover the real range and ORT can drop the Relu
  nodes. ``ActivationSymmetric`` is off: it moves the u8 zero point to 128 (half the levels unused
  after ReLU), keeps Relu and Q/DQ nodes in the fused graph (2.4x slower at batch 64) and, with
  per-channel weights, lost 61 accuracy points in the fused int8 kernels.
- ``reduce_range`` (7-bit weights, -64..63) only where the CPU needs it (``reduce_range="auto"``,
  the default; ``dualml.cpu.int8_reduce_range`` decides). Without VNNI, x86 int8 GEMMs use
  ``vpmaddubsw``, which adds two u8*s8 products into a *saturating* int16 (255*127*2 > 32767).
  Measured on an AVX2-only AMD EPYC (Zen 3): per-channel 8-bit weights made the fused int8 model
  disagree with fp32 on 2.8% of digits while the same QDQ model run unfused (float simulation)
  disagreed on 0.1%: the loss is kernel saturation, not rounding. 7-bit weights cannot saturate
  (255*63*2 < 32767). On AVX512-VNNI (int32 accumulation) full 8-bit files of the same models matched
  fp32 argmax on 100% of samples with half the logit error (0.040 vs 0.092) at the same speed, so
  there 7 bits cost precision for nothing. The choice is written into the file's metadata
  (``dualml.int8.reduce_range``) so a server on another kind of CPU can warn (``dualml serve`` does).
- MinMax calibration: entropy and percentile calibration gave no better accuracy on the cnn.

Dynamic mode quantizes weights only (``QInt8``); activations get a u8 scale computed per batch at run
time (DynamicQuantizeLinear), which needs no calibration data but pays for it at every call. ORT's
ConvInteger kernel is slow (measured 4-8x slower than fp32 Conv): dynamic mode is for MatMul-heavy
models (transformers, RNNs); convolutional nets want static mode (or ``op_types=["MatMul", "Gemm"]``).
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write_bytes
from ..cpu import REDUCE_RANGE_CHOICES, int8_reduce_range
from ..errors import DualmlError, not_allowed
from ..timing import interleaved
from . import ort

#: ``mode`` values of :func:`quantize_onnx`
MODES = ("dynamic", "static")
#: activation types for static mode (dynamic mode is always u8: ORT's DynamicQuantizeLinear)
ACTIVATION_TYPES = ("int8", "uint8")
CALIBRATION_METHODS = ("entropy", "minmax", "percentile")
#: op types that carry int8 arithmetic or the conversions around it
QUANT_OP_PREFIXES = ("QLinear",)
QUANT_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
             "DynamicQuantizeMatMul", "MatMulIntegerToFloat")


def _is_quant_op(op: str) -> bool:
    return op in QUANT_OPS or op.startswith(QUANT_OP_PREFIXES)


def _check_model(path: Path) -> tuple[str, list[Any]]:
    """The single input's name and shape of a loadable ONNX file (DualmlError otherwise)."""
    sess = ort.session(path)
    name, shape, dtype = ort.input_info(sess)
    if dtype != np.float32:
        raise DualmlError(f"{path}: input {name} is {dtype}; INT8 quantization needs a float32 model input")
    return name, shape


def _check_calibration(calibration: Sequence[np.ndarray], name: str, shape: list[Any]) -> list[np.ndarray]:
    """Calibration batches as float32, each shaped [n, *model input shape without the batch dim]."""
    if isinstance(calibration, np.ndarray) and calibration.ndim == len(shape):
        calibration = [calibration]  # one batch given as an array, not a list of batches
    batches = []
    for i, b in enumerate(calibration):
        a = np.asarray(b)
        if not np.issubdtype(a.dtype, np.floating):
            raise DualmlError(f"calibration batch {i} has dtype {a.dtype}; it must be a float array")
        fixed = shape[1:]
        ok = a.ndim == len(shape) and len(a) > 0 and all(
            not isinstance(d, int) or d == s for d, s in zip(fixed, a.shape[1:], strict=True))
        if not ok:
            want = ", ".join(str(d) if isinstance(d, int) else "?" for d in fixed)
            raise DualmlError(f"calibration batch {i} has shape {a.shape}; input '{name}' needs [n, {want}] "
                              "with n >= 1")
        batches.append(np.ascontiguousarray(a, dtype=np.float32))
    if not batches:
        raise DualmlError("mode=static needs calibration data: pass calibration=[batch, ...] (float32 arrays "
                          "shaped like the model input, e.g. from calibration_batches(train_x, ...))")
    return batches


def _reader(name: str, batches: list[np.ndarray]) -> Any:
    """A CalibrationDataReader feeding ``batches`` to input ``name`` once, rewindable."""
    from onnxruntime.quantization import CalibrationDataReader

    class _Batches(CalibrationDataReader):
        def __init__(self) -> None:
            self.rewind()

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self._it, None)
            return None if b is None else {name: b}

        def rewind(self) -> None:
            self._it = iter(batches)

        def __len__(self) -> int:
            return len(batches)

    return _Batches()


def initializer_bytes(path: str | os.PathLike) -> int:
    """Bytes of raw tensor data stored in the graph (initializers and Constant nodes): the weights,
    without the graph structure, names and metadata that dominate the file size of a tiny model."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path), load_external_data=False)
    total = sum(numpy_helper.to_array(t).nbytes for t in model.graph.initializer)
    for node in model.graph.node:
        if node.op_type == "Constant":
            total += sum(numpy_helper.to_array(a.t).nbytes for a in node.attribute if a.name == "value")
    return int(total)


#: metadata keys an INT8 file carries (read by ``dualml serve`` to warn on an unsuitable CPU)
META_REDUCE_RANGE = "dualml.int8.reduce_range"
META_WEIGHT_BITS = "dualml.int8.weight_bits"


def resolve_reduce_range(value: bool | str) -> tuple[bool, str]:
    """``reduce_range`` as given (True/False, or "auto"/"true"/"false") -> (bool, why), with "auto"
    decided by this CPU."""
    text = value.lower() if isinstance(value, str) else value
    if text == "auto":
        return int8_reduce_range()
    if text in ("true", "false"):
        value = text == "true"
    if not isinstance(value, bool):
        raise DualmlError(not_allowed("reduce_range", value, REDUCE_RANGE_CHOICES))
    return bool(value), ("7-bit weights (reduce_range=true, as set)" if value else
                         "8-bit weights (reduce_range=false, as set)")


def _with_metadata(path: Path, props: dict[str, str]) -> bytes:
    """The ONNX file at ``path`` with ``props`` added to its metadata, serialized."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    keep = [(p.key, p.value) for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    for k, v in [*keep, *props.items()]:
        model.metadata_props.add(key=k, value=str(v))
    return model.SerializeToString()


def quantize_onnx(fp32_path: str | os.PathLike, out_path: str | os.PathLike, mode: str,
                  calibration: Sequence[np.ndarray] | None = None, per_channel: bool = True, *,
                  activation_type: str = "uint8", reduce_range: bool | str = "auto",
                  activation_symmetric: bool = False, calibrate_method: str = "minmax",
                  op_types: Sequence[str] | None = None) -> dict[str, Any]:
    """Quantize ``fp32_path`` to INT8 at ``out_path`` and describe the result.

    ``mode='dynamic'``: int8 weights, activations quantized per batch at run time (no calibration).
    ``mode='static'``: QDQ format with int8 weights and activations whose ranges come from running the
    fp32 model on ``calibration`` (float32 batches shaped like the model input). The keyword-only
    settings exist to compare choices; the defaults are the measured best (see the module docstring).
    ``op_types`` limits quantization to those ONNX op types (default: every type ORT can quantize).
    ``reduce_range``: "auto" (7-bit weights only on a CPU that needs them, see the module docstring),
    True or False; the choice and why are in the result and in the file's metadata.

    Returns a JSON-able dict: mode, format, settings, calibration sample count, the result's op
    histogram and count of quantization ops, file and initializer sizes (bytes, int8/fp32 ratio) and
    seconds taken. ``out_path`` is replaced atomically, only after the quantized model loads in ONNX
    Runtime: a failure leaves an existing file untouched and no temporary files behind. ``calibration``
    is ignored in dynamic mode. Models stored with external data (> 2 GB) are not handled.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    t0 = time.perf_counter()
    if mode not in MODES:
        raise DualmlError(not_allowed("mode", mode, MODES))
    if activation_type not in ACTIVATION_TYPES:
        raise DualmlError(not_allowed("activation_type", activation_type, ACTIVATION_TYPES))
    if calibrate_method not in CALIBRATION_METHODS:
        raise DualmlError(not_allowed("calibrate_method", calibrate_method, CALIBRATION_METHODS))
    if mode == "static" and calibration is None:
        raise DualmlError("mode=static needs calibration data: pass calibration=[batch, ...] (float32 arrays "
                          "shaped like the model input, e.g. from calibration_batches(train_x, ...))")
    src, out = Path(fp32_path), Path(out_path)
    if src.resolve() == out.resolve():
        raise DualmlError(f"out_path {out} is the fp32 model itself; write the INT8 model to another file")
    ops = list(op_types) if op_types else None
    reduce_range_setting = reduce_range
    reduce_range, reduce_range_why = resolve_reduce_range(reduce_range)
    name, shape = _check_model(src)
    batches = _check_calibration(calibration, name, shape) if mode == "static" else []

    with tempfile.TemporaryDirectory(prefix="dualml-quant-") as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=False)
        except Exception as exc:  # shape inference/optimizer errors come as assorted types
            raise DualmlError(f"ONNX Runtime's quantization pre-processing failed on {src}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        try:
            if mode == "dynamic":
                quantize_dynamic(str(pre), str(q), per_channel=per_channel, reduce_range=reduce_range,
                                 weight_type=QuantType.QInt8, op_types_to_quantize=ops)
                fmt, act = "QOperator (IntegerOps)", "uint8 (dynamic, per batch)"
            else:
                method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                          "percentile": CalibrationMethod.Percentile}[calibrate_method]
                quantize_static(str(pre), str(q), _reader(name, batches), quant_format=QuantFormat.QDQ,
                                per_channel=per_channel, reduce_range=reduce_range,
                                activation_type=QuantType.QUInt8 if activation_type == "uint8" else QuantType.QInt8,
                                weight_type=QuantType.QInt8, calibrate_method=method, op_types_to_quantize=ops,
                                extra_options={"WeightSymmetric": True, "ActivationSymmetric": activation_symmetric})
                fmt, act = "QDQ", activation_type
        except Exception as exc:  # an op or graph the quantizer cannot handle: one line for the CLI
            raise DualmlError(f"ONNX Runtime's quantize_{mode} failed on {src}: "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from exc
        ort.session(q)  # refuse to publish a model ONNX Runtime cannot load
        hist = ort.op_histogram(q)
        fp32_w, int8_w = initializer_bytes(src), initializer_bytes(q)
        atomic_write_bytes(out, _with_metadata(q, {META_REDUCE_RANGE: str(reduce_range).lower(),
                                                   META_WEIGHT_BITS: "7" if reduce_range else "8"}))

    fp32_size, int8_size = src.stat().st_size, out.stat().st_size
    return {
        "mode": mode, "format": fmt, "per_channel": bool(per_channel), "reduce_range": bool(reduce_range),
        "reduce_range_setting": str(reduce_range_setting).lower(), "reduce_range_why": reduce_range_why,
        "weight_type": "int8 (symmetric)", "activation_type": act,
        "activation_symmetric": bool(activation_symmetric) if mode == "static" else None,
        "calibrate_method": calibrate_method if mode == "static" else None,
        "op_types": ops,
        "calibration_samples": int(sum(len(b) for b in batches)), "calibration_batches": len(batches),
        "ops": hist, "quant_ops": int(sum(n for op, n in hist.items() if _is_quant_op(op))),
        "fp32_bytes": int(fp32_size), "int8_bytes": int(int8_size), "size_ratio": int8_size / fp32_size,
        "fp32_weight_bytes": fp32_w, "int8_weight_bytes": int8_w,
        "weight_size_ratio": int8_w / fp32_w if fp32_w else math.nan,
        "seconds": time.perf_counter() - t0, "fp32_path": str(src), "int8_path": str(out),
    }


def calibration_batches(dataset_split_x: np.ndarray, n_batches: int, batch_size: int, seed: int) -> list[np.ndarray]:
    """``n_batches`` batches of ``batch_size`` rows drawn without replacement from ``dataset_split_x``
    (the train split: calibrating on test data would leak it into the reported accuracy), seeded so a
    re-run quantizes to the same file. Fewer rows than asked: all rows, in batches."""
    for key, v in (("n_batches", n_batches), ("batch_size", batch_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise DualmlError(f"{key}={v!r} is not allowed; it must be a positive integer")
    x = np.asarray(dataset_split_x)
    if x.ndim < 2 or len(x) == 0:
        raise DualmlError(f"calibration data must be [n, *sample_shape] with n >= 1; got shape {x.shape}")
    take = min(n_batches * batch_size, len(x))
    idx = np.random.default_rng(seed).choice(len(x), size=take, replace=False)
    return [np.ascontiguousarray(x[idx[i:i + batch_size]], dtype=np.float32) for i in range(0, take, batch_size)]


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if len(x) == 0 or y.ndim != 1 or len(x) != len(y):
        raise DualmlError(f"x must be [n, ...] and y [n] integer labels with the same n >= 1; got x {x.shape}, "
                          f"y {y.shape}")
    return x, y.astype(np.int64)


def onnx_logits(sess: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Outputs of an ONNX Runtime session on ``x``, batch by batch, as float64."""
    name, _, dtype = ort.input_info(sess)
    outs = [sess.run(None, {name: np.ascontiguousarray(x[i:i + batch_size], dtype=dtype)})[0]
            for i in range(0, len(x), batch_size)]
    return np.concatenate(outs).astype(np.float64)


def _metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    if logits.ndim != 2 or len(logits) != len(y) or y.max() >= logits.shape[1]:
        raise DualmlError(f"model output {logits.shape} is not [n, classes] logits for {len(y)} labels "
                          f"up to {y.max()}")
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return {"accuracy": float((logits.argmax(axis=1) == y).mean()),
            "loss": float(-logp[np.arange(len(y)), y].mean()), "n": int(len(y))}


def evaluate_onnx(path: str | os.PathLike, x: np.ndarray, y: np.ndarray, batch_size: int = 256,
                  threads: int = 1) -> dict[str, Any]:
    """Accuracy (argmax of the output vs integer labels) and mean cross-entropy of the output taken
    as logits, on a labelled split: the numbers to hold an int8 file against its fp32 source."""
    x, y = _check_xy(x, y)
    return _metrics(onnx_logits(ort.session(path, threads), x, batch_size), y)


def _batch(x: np.ndarray, n: int) -> np.ndarray:
    """The first ``n`` rows of ``x``, cycling when it has fewer."""
    reps = -(-n // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n] if reps > 1 else x[:n])


def latency_onnx(path: str | os.PathLike, x: np.ndarray, repeats: int = 50, warmup: int = 5,
                 threads: int = 1) -> dict[str, Any]:
    """Milliseconds per ``run`` of the whole batch ``x``: median, p10, p90 and IQR over ``repeats``
    timed runs after ``warmup`` untimed ones (the first runs allocate and pick kernels)."""
    sess = ort.session(path, threads)
    name, _, dtype = ort.input_info(sess)
    feed = {name: np.ascontiguousarray(x, dtype=dtype)}
    out = interleaved({"run": lambda: sess.run(None, feed)}, repeats=max(1, repeats), warmup=warmup)["run"]
    return {**out, "batch": int(len(x)), "threads": int(threads)}


def compare_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, test_x: np.ndarray,
                 test_y: np.ndarray, latency_batch: int = 1, threads: int = 1, *, repeats: int = 50,
                 warmup: int = 5) -> dict[str, Any]:
    """fp32 and int8 side by side: file sizes, test accuracy/loss and the drop in points, argmax
    agreement, and latency at ``latency_batch`` and at 64 rows of ``test_x``.

    Timing is interleaved (each repeat runs fp32 then int8, the order alternating per repeat) in one
    process, so load from other processes on a shared machine hits both models alike; the ratio is
    int8 median / fp32 median (< 1: int8 is faster), also flat as ``latency_ratio_b1`` /
    ``latency_ratio_b64`` with ``fp32_ms_b*`` / ``int8_ms_b*`` medians."""
    x, y = _check_xy(test_x, test_y)
    if not isinstance(latency_batch, int) or isinstance(latency_batch, bool) or latency_batch < 1:
        raise DualmlError(f"latency_batch={latency_batch!r} is not allowed; it must be a positive integer")
    s32, s8 = ort.session(fp32_path, threads), ort.session(int8_path, threads)
    l32, l8 = onnx_logits(s32, x), onnx_logits(s8, x)
    m32, m8 = _metrics(l32, y), _metrics(l8, y)
    size32, size8 = Path(fp32_path).stat().st_size, Path(int8_path).stat().st_size
    latency = {}
    for b in sorted({int(latency_batch), 64}):
        feeds = []
        for sess in (s32, s8):
            name, _, dtype = ort.input_info(sess)
            feeds.append({name: _batch(x, b).astype(dtype, copy=False)})
        t = interleaved({"fp32": lambda f=feeds[0]: s32.run(None, f), "int8": lambda f=feeds[1]: s8.run(None, f)},
                        repeats=max(1, repeats), warmup=warmup)
        f, i = t["fp32"], t["int8"]
        latency[f"batch_{b}"] = {"fp32": f, "int8": i, "ratio": i["median_ms"] / f["median_ms"]}
    return {
        "fp32_bytes": int(size32), "int8_bytes": int(size8), "size_ratio": size8 / size32,
        "fp32_accuracy": m32["accuracy"], "int8_accuracy": m8["accuracy"],
        "accuracy_drop_points": 100.0 * (m32["accuracy"] - m8["accuracy"]),
        "fp32_loss": m32["loss"], "int8_loss": m8["loss"],
        "argmax_agreement": float((l32.argmax(axis=1) == l8.argmax(axis=1)).mean()),
        "max_abs_logit_diff": float(np.abs(l32 - l8).max()),
        "latency": latency, "threads": int(threads), "repeats": int(repeats), "n_test": int(len(y)),
        # flat copies for one-line summaries and tables: latency_ratio_b1, int8_ms_b64, ...
        **{f"{k}_b{key[6:]}": v for key, d in latency.items()
           for k, v in (("latency_ratio", d["ratio"]), ("fp32_ms", d["fp32"]["median_ms"]),
                        ("int8_ms", d["int8"]["median_ms"]))},
    }
