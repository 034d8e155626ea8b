"""ONNX Runtime in one place: sessions, running a batch, the I/O names dualml exports use.

Export verification, quantization, ``predict``, ``serve`` and the benchmarks all run ONNX models
through here, so they agree on names, thread settings and error messages. No framework import.
"""
from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DualmlError

#: every dualml export has one input ``input`` (batch dimension ``batch``, dynamic) and one output ``output``
INPUT_NAME = "input"
OUTPUT_NAME = "output"
BATCH_DIM = "batch"


#: short names ``serve.providers`` takes besides ONNX Runtime's own (``CUDAExecutionProvider``)
PROVIDER_ALIASES = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider",
                    "tensorrt": "TensorrtExecutionProvider", "rocm": "ROCMExecutionProvider",
                    "openvino": "OpenVINOExecutionProvider", "dml": "DmlExecutionProvider"}


def resolve_providers(value: Any, available: list[str] | None = None) -> list[str]:
    """``serve.providers`` as ONNX Runtime provider names, in priority order. ``auto`` (or null): CUDA when
    this onnxruntime has ``CUDAExecutionProvider`` (onnxruntime-gpu), then CPU; else CPU. Otherwise a comma
    list of names or aliases (``cuda,cpu``); a name this onnxruntime lacks is a one-line ConfigError listing
    the ones it has (why a GPU build is needed is then plain, not a silent fall-back to the CPU)."""
    if available is None:
        import onnxruntime as ort

        available = list(ort.get_available_providers())
    if value is None or str(value).strip().lower() == "auto":
        return (["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available
                else ["CPUExecutionProvider"])
    items = value if isinstance(value, (list, tuple)) else str(value).split(",")
    out = []
    for item in (str(i).strip() for i in items):
        name = PROVIDER_ALIASES.get(item.lower(), item)
        if name not in available:
            raise ConfigError(f"serve.providers={value} is not allowed; this onnxruntime has no {item!r}; allowed: "
                              f"auto, {', '.join(available)} (aliases: cpu, cuda, ...)")
        if name not in out:
            out.append(name)
    if not out:
        raise ConfigError(f"serve.providers={value!r} is not allowed; allowed: auto, {', '.join(available)}")
    return out


def session(path: str | os.PathLike, threads: int = 1, providers: list[str] | None = None) -> Any:
    """An InferenceSession with ``threads`` intra-op threads (1 keeps runs comparable) on ``providers``
    (default: the CPU, what export verification and benchmarks compare against)."""
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        ckpt = path.with_name(path.name + ".safetensors")
        hint = (f"; {ckpt} is a dualml checkpoint: run `dualml export checkpoint={path} out=model.onnx` first"
                if ckpt.is_file() else "")
        raise DualmlError(f"ONNX model {path} does not exist{hint}")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unreadable models
        if is_safetensors(path):  # "Protobuf parsing failed" would not say what the file is
            raise DualmlError(f"{path} is a dualml checkpoint (safetensors weights), not an ONNX model; run "
                              f"`dualml export checkpoint={path} out=model.onnx` first and give model.onnx") from None
        raise DualmlError(f"ONNX Runtime cannot load {path}: {str(exc).splitlines()[0]}") from None


def is_safetensors(path: Path) -> bool:
    """Whether ``path`` starts like a safetensors file: an 8-byte little-endian header length that fits
    the file, then the JSON header's ``{``."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


#: ONNX Runtime type strings of the tensors ``dualml serve`` takes and returns, as numpy dtypes
ORT_DTYPES: dict[str, np.dtype] = {f"tensor({k})": np.dtype(v) for k, v in (
    ("float", np.float32), ("double", np.float64), ("float16", np.float16), ("bool", np.bool_),
    ("int8", np.int8), ("int16", np.int16), ("int32", np.int32), ("int64", np.int64),
    ("uint8", np.uint8), ("uint16", np.uint16), ("uint32", np.uint32), ("uint64", np.uint64))}


def io_specs(args: Any, what: str) -> list[tuple[str, list[Any], np.dtype]]:
    """(name, shape with None/str for dynamic dims, numpy dtype) of every one of ``sess.get_inputs()``
    or ``get_outputs()``; a tensor type numpy has no dtype for (strings, maps) is a DualmlError."""
    specs = []
    for a in args:
        dtype = ORT_DTYPES.get(a.type)
        if dtype is None:
            raise DualmlError(f"{what} {a.name} has type {a.type}; supported: "
                              + ", ".join(t[7:-1] for t in ORT_DTYPES))
        specs.append((a.name, list(a.shape), dtype))
    return specs


def input_info(sess: Any) -> tuple[str, list[Any], np.dtype]:
    """(name, shape with None/str for dynamic dims, numpy dtype) of the model's single input."""
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise DualmlError(f"the model has {len(inputs)} inputs ({[i.name for i in inputs]}); dualml serves "
                          "single-input models")
    i = inputs[0]
    dtype = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(int64)": np.int64,
             "tensor(int32)": np.int32, "tensor(float16)": np.float16}.get(i.type)
    if dtype is None:
        raise DualmlError(f"input {i.name} has type {i.type}; supported: float, double, int64, int32, float16")
    return i.name, list(i.shape), np.dtype(dtype)


def run(sess: Any, x: np.ndarray) -> np.ndarray:
    """The first output of ``sess`` on the batch ``x``."""
    name = sess.get_inputs()[0].name
    return sess.run(None, {name: x})[0]


def op_histogram(path: str | os.PathLike) -> dict[str, int]:
    """Operator type -> count over the main graph (what the exporters turned the model into)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
