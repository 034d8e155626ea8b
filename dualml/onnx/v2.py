"""Open Inference Protocol (KServe v2, also spoken by Triton, Seldon MLServer and BentoML) tensors.

What ``dualml serve``'s ``/v2/models/{name}/infer`` reads and writes, apart from the HTTP: datatype
names, a request's ``inputs`` turned into ONNX Runtime feeds (JSON ``data`` or the binary tensor
extension that ``tritonclient`` uses by default), and outputs turned back into a response. Kept apart
from the server so the checks can be tested without sockets.

The checks are strict where the protocol is typed: an input's ``datatype`` must be the model's (a
binary tensor's bytes mean nothing under another type), its ``shape`` must fit the model's fixed
dims, and ``data`` must hold exactly prod(shape) values. JSON has no NaN or infinity: a JSON float
that overflows (``1e400``) is refused rather than run; binary tensors may carry any value.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DualmlError

#: numpy dtype -> v2 datatype name (BYTES and BF16 are not served: numpy has no dtype for them)
DATATYPES: dict[np.dtype, str] = {np.dtype(k): v for k, v in (
    (np.bool_, "BOOL"), (np.uint8, "UINT8"), (np.uint16, "UINT16"), (np.uint32, "UINT32"), (np.uint64, "UINT64"),
    (np.int8, "INT8"), (np.int16, "INT16"), (np.int32, "INT32"), (np.int64, "INT64"),
    (np.float16, "FP16"), (np.float32, "FP32"), (np.float64, "FP64"))}
NUMPY: dict[str, np.dtype] = {v: k for k, v in DATATYPES.items()}
#: the request header that splits a body into its JSON part and the binary tensors after it
HEADER_LENGTH = "Inference-Header-Content-Length"


class ProtocolError(DualmlError):
    """A v2 request the model cannot take: HTTP 400 with ``{"error": ...}``, as the protocol says."""


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, shape (int, or None/str for a dynamic dim) and numpy dtype."""

    name: str
    shape: tuple[Any, ...]
    dtype: np.dtype

    @property
    def datatype(self) -> str:
        return DATATYPES[self.dtype]

    def v2_shape(self) -> list[int]:
        """The shape as the protocol writes it: -1 for a dynamic dim."""
        return [d if isinstance(d, int) else -1 for d in self.shape]

    def metadata(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.datatype, "shape": self.v2_shape()}

    def fits(self, shape: tuple[int, ...]) -> bool:
        return len(shape) == len(self.shape) and all(
            not isinstance(w, int) or w == g for g, w in zip(shape, self.shape))


def _json_values(data: Any, spec: TensorSpec, shape: tuple[int, ...]) -> np.ndarray:
    """JSON ``data`` (flat or nested) as ``spec.dtype`` in ``shape``; ProtocolError says what is wrong."""
    want = spec.dtype
    try:
        a = np.asarray(data)
    except (ValueError, TypeError, RecursionError):
        raise ProtocolError(f"input {spec.name}: data is a ragged nested list; give prod(shape) values") from None
    if a.dtype.kind not in "biuf":
        raise ProtocolError(f"input {spec.name}: data holds non-numbers (strings, null or objects); "
                            f"datatype {spec.datatype} takes {'true/false' if want.kind == 'b' else 'numbers'}")
    if want.kind == "b" and a.dtype.kind != "b" and a.size:
        raise ProtocolError(f"input {spec.name}: BOOL data must be true/false, got {a.dtype} numbers")
    if want.kind in "iu" and a.dtype.kind not in "iu" and a.size:
        raise ProtocolError(f"input {spec.name}: {spec.datatype} data must be integers, got {a.dtype} values")
    if want.kind == "f" and a.dtype.kind == "b" and a.size:
        raise ProtocolError(f"input {spec.name}: {spec.datatype} data must be numbers, got true/false")
    if a.size != math.prod(shape):
        raise ProtocolError(f"input {spec.name}: data holds {a.size} values; shape {list(shape)} needs "
                            f"{math.prod(shape)}")
    if want.kind in "iu" and a.size:
        info = np.iinfo(want)
        if int(a.min()) < info.min or int(a.max()) > info.max:
            raise ProtocolError(f"input {spec.name}: values outside {spec.datatype}'s range [{info.min}, {info.max}]")
    if want.kind == "f" and a.size:
        if not np.isfinite(a).all():
            raise ProtocolError(f"input {spec.name}: a number is too large for a float (such as 1e400); "
                                "JSON has no infinity or NaN")
        with np.errstate(over="ignore"):
            out = a.astype(want).reshape(shape)
        if not np.isfinite(out).all():
            raise ProtocolError(f"input {spec.name}: values too large for {spec.datatype} (they would become inf)")
        return out
    return a.astype(want).reshape(shape)


def _shape(raw: Any, spec: TensorSpec) -> tuple[int, ...]:
    if not isinstance(raw, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in raw):
        raise ProtocolError(f"input {spec.name}: shape must be a list of non-negative integers, got {raw!r}")
    shape = tuple(raw)
    if not spec.fits(shape):
        raise ProtocolError(f"input {spec.name}: shape {list(shape)} does not fit the model's {spec.v2_shape()} "
                            "(-1: any size)")
    return shape


def parse_request(body: bytes, header_length: str | None, inputs: list[TensorSpec],
                  outputs: list[TensorSpec]) -> tuple[dict[str, np.ndarray], list[tuple[TensorSpec, bool]], Any]:
    """An infer request's body -> (feeds by input name, [(output, as binary?)] to return, request id).

    ``header_length`` is the ``Inference-Header-Content-Length`` header (None: the body is all JSON).
    Every model input must be given, once; unknown inputs and outputs are refused by name."""
    if header_length is not None:
        if not header_length.strip().isdigit() or int(header_length) > len(body):
            raise ProtocolError(f"{HEADER_LENGTH} {header_length!r} is not a byte count within the body "
                                f"({len(body)} bytes)")
        n = int(header_length)
        head, blob = body[:n], memoryview(body)[n:]
    else:
        head, blob = body, memoryview(b"")
    request = loads(head)
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise ProtocolError('body must be a JSON object with "inputs": [{"name", "shape", "datatype", "data"}, ...]')
    by_name = {s.name: s for s in inputs}
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    for item in request["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ProtocolError('every entry of "inputs" must be an object with a "name"')
        spec = by_name.get(item["name"])
        if spec is None:
            raise ProtocolError(f"unknown input {item['name']!r}; the model's inputs: {sorted(by_name)}")
        if spec.name in feeds:
            raise ProtocolError(f"input {spec.name} is given twice")
        if item.get("datatype") != spec.datatype:
            raise ProtocolError(f"input {spec.name}: datatype {item.get('datatype')!r}; the model takes "
                                f"{spec.datatype}")
        shape = _shape(item.get("shape"), spec)
        params = item.get("parameters") or {}
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        if size is not None:
            need = math.prod(shape) * spec.dtype.itemsize
            if not isinstance(size, int) or size != need or offset + size > len(blob):
                raise ProtocolError(f"input {spec.name}: binary_data_size {size!r}; shape {list(shape)} of "
                                    f"{spec.datatype} needs {need} bytes and {len(blob) - offset} are left in the body")
            # copied: the body's bytes need not be aligned for the dtype
            feeds[spec.name] = np.frombuffer(blob[offset:offset + size], dtype=spec.dtype).reshape(shape).copy()
            offset += size
        elif "data" in item:
            feeds[spec.name] = _json_values(item["data"], spec, shape)
        else:
            raise ProtocolError(f"input {spec.name} has neither \"data\" nor parameters.binary_data_size")
    if offset != len(blob):
        raise ProtocolError(f"the body holds {len(blob) - offset} bytes after the declared binary inputs")
    missing = [s.name for s in inputs if s.name not in feeds]
    if missing:
        raise ProtocolError(f"missing inputs {missing}; the model's inputs: {[s.name for s in inputs]}")
    rows = {len(v) for v in feeds.values()}
    if len(rows) > 1:
        raise ProtocolError(f"inputs have different batch sizes {sorted(rows)}; the first dim is the batch")
    if rows == {0}:
        raise ProtocolError("inputs hold an empty batch; send at least one sample")
    return feeds, _wanted(request, outputs), request.get("id")


def _wanted(request: dict[str, Any], outputs: list[TensorSpec]) -> list[tuple[TensorSpec, bool]]:
    params = request.get("parameters") or {}
    default_binary = bool(params.get("binary_data_output", False)) if isinstance(params, dict) else False
    asked = request.get("outputs")
    if asked is None:
        return [(s, default_binary) for s in outputs]
    if not isinstance(asked, list):
        raise ProtocolError('"outputs" must be a list of {"name": ...}')
    by_name, wanted = {s.name: s for s in outputs}, []
    for item in asked:
        spec = by_name.get(item.get("name")) if isinstance(item, dict) else None
        if spec is None:
            raise ProtocolError(f"unknown output {item!r}; the model's outputs: {sorted(by_name)}")
        p = item.get("parameters") or {}
        wanted.append((spec, bool(p.get("binary_data", default_binary)) if isinstance(p, dict) else default_binary))
    return wanted


def loads(data: bytes | str) -> Any:
    """JSON as the server takes it: NaN/Infinity literals refused, and the parser's own limits
    (4300-digit integers, nesting deeper than the recursion limit) turned into ProtocolError."""
    try:
        return json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ProtocolError("body is not acceptable JSON: nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError; so is the digit limit
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "integer string conversion" in text:  # Python's own limit, whose message advises the server's code
            text = "an integer has more than 4300 digits"
        raise ProtocolError(f"body is not valid JSON: {text}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def dumps(obj: Any) -> bytes:
    """JSON that is JSON: NaN or infinity in ``obj`` is a ValueError, not a ``NaN`` literal."""
    return json.dumps(obj, allow_nan=False, separators=(",", ":")).encode()


def encode_response(model: str, version: str, request_id: Any,
                    results: list[tuple[TensorSpec, np.ndarray, bool]]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None) of an infer response; binary outputs follow the JSON part.
    A JSON output holding NaN or infinity is a ValueError (the caller answers 500 and suggests binary)."""
    outs, blobs = [], []
    for spec, y, binary in results:
        y = np.asarray(y)
        entry: dict[str, Any] = {"name": spec.name, "datatype": DATATYPES.get(y.dtype, spec.datatype),
                                 "shape": list(y.shape)}
        if binary:
            raw = np.ascontiguousarray(y).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = y.ravel().tolist()
        outs.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outs}
    if request_id is not None:
        head["id"] = request_id
    text = dumps(head)
    if not blobs:
        return text, None
    return b"".join([text, *blobs]), len(text)
