"""INT8 quantization passes for paddle: PaddleSlim's observers and quanters on paddle's
``paddle.quantization`` PTQ/QAT (the dygraph API PaddleSlim 2.6's own ``SlimQAT`` builds on), and
QDQ ONNX through paddle2onnx. Measured with paddle 2.6.2, paddleslim 2.6.0, paddle2onnx 1.3.1 on
the digits cnn; every workaround below exists because the plain path gave a wrong ONNX model.

- static: ``PTQ(QuantConfig(activation=AbsmaxObserver(), weight=AbsMaxChannelWiseWeightObserver()))``,
  calibration forward passes, ``convert(remain_weight=True)``. PaddleSlim's own dygraph ``PTQ``
  (ImperativePTQ) writes ``fake_*_quantize_dequantize_*`` ops that paddle2onnx 1.3.1 rejects
  ("unsupported operator(s)"), so the newer API is used; its default ``convert`` stores the weights
  already rounded to integers, which paddle2onnx then quantizes a second time (ONNX Runtime accuracy
  36.7%), hence ``remain_weight=True``.
- qat: ``QAT(QuantConfig(activation=FakeQuanterWithAbsMaxObserver(), weight=PaddleSlim's
  FakeQuanterChannelWiseAbsMaxObserver()))``, trained with any paddle optimizer, then ``convert``.
- dynamic: paddle has no dynamic activation quantization on CPU; PaddleSlim's "dynamic" post-training
  quantization (``quant_post_dynamic``) is weight-only, and so is this pass: int8 per-channel weights
  for every ``nn.Linear`` (``AbsMaxChannelWiseWeightObserver``), activations stay float. Done on the
  dygraph model because ``quant_post_dynamic`` works on saved static programs that paddle2onnx
  cannot read back as int8.

BatchNorm is folded into the preceding Conv2D before static/QAT quantization (paddle's own
``fuse_conv_bn`` matches exact types and skips dualml's BatchNorm subclass): otherwise paddle2onnx
folds BN into the conv *after* the int8 weight scales were fixed and the int8 model breaks (36.7%).

Weights are quantized to 7 bits (-63..63), like ``dualml.onnx.int8``'s ``reduce_range``: paddle's
activations are symmetric int8, which ONNX Runtime shifts to uint8 for its x86 int8 kernels, and on
CPUs without VNNI (AVX2 ``vpmaddubsw``) 255*127*2 overflows the int16 sum: measured 36.7% instead of
98% with 8-bit weights in the fused graph, exact with 7-bit ones. paddle2onnx ignores ``bit_length``
and always divides the scale by 127, so after ``convert`` each 7-bit quanter is rewritten as the
identical 8-bit one (scale * 127/63).

paddle2onnx 1.3.1 also drops the QDQ of every MatMul in onnxruntime mode (its supported-op list reads
``"LeakyRelu" "MatMul"``, one string), and writes weights as float constants quantized at run time;
``dualml.compress.quantization`` puts both back from this model's own quantizers (the Linear's int8
weights and input scale), so the file computes what the native model computes.
"""
from __future__ import annotations

import copy
import logging
import os
import tempfile
from typing import Any

import numpy as np
import paddle

from dualml.errors import BackendError
from dualml.quiet import quiet

from .lane import LANE, PADDLE3, STACKS, VERSION

# PaddleSlim prints and logs on every call (deprecation notes, observer progress): the calls run in
# dualml.quiet.quiet(level=logging.ERROR)

#: weight precision of static and QAT (see the module docstring); dynamic (weight-only) uses 8
WEIGHT_BITS = 7


def _example(net: Any, sample: np.ndarray | None = None) -> Any:
    from dualml.compress.quantization import example_input

    return paddle.to_tensor(example_input(net, sample))


def _tag(qnet: Any, mode: str, tool: str) -> Any:
    object.__setattr__(qnet, "_dualml_quant", {"mode": mode, "tool": tool})
    return qnet


def _fold_bn(model: Any, x: Any) -> int:
    """Fold every BatchNorm2D that reads a Conv2D's output into that conv (eval statistics), replacing
    the BatchNorm by Identity. Pairs are found by running ``x`` through the model, and the folded
    model must give the same output, so a conv output that also feeds something else is refused."""
    model.eval()
    made: dict[int, Any] = {}
    pairs: list[tuple[Any, Any]] = []
    handles = []
    for layer in model.sublayers():
        if isinstance(layer, paddle.nn.Conv2D):
            handles.append(layer.register_forward_post_hook(lambda lay, inp, out: made.__setitem__(id(out), lay)))
        elif isinstance(layer, paddle.nn.BatchNorm2D):
            handles.append(layer.register_forward_pre_hook(
                lambda lay, inp: pairs.append((made[id(inp[0])], lay)) if id(inp[0]) in made else None))
    with paddle.no_grad():
        before = model(x).numpy()
    for h in handles:
        h.remove()
    paths = {id(layer): name for name, layer in model.named_sublayers()}
    for conv, bn in pairs:
        w = conv.weight.numpy()
        b = conv.bias.numpy() if conv.bias is not None else np.zeros(w.shape[0], np.float32)
        gamma = bn.weight.numpy() if bn.weight is not None else np.ones_like(b)
        beta = bn.bias.numpy() if bn.bias is not None else np.zeros_like(b)
        k = gamma / np.sqrt(bn._variance.numpy() + bn._epsilon)
        conv.weight.set_value((w * k.reshape(-1, *[1] * (w.ndim - 1))).astype(np.float32))
        if conv.bias is None:
            conv.bias = conv.create_parameter([w.shape[0]], is_bias=True)
        conv.bias.set_value(((b - bn._mean.numpy()) * k + beta).astype(np.float32))
        parent, _, leaf = paths[id(bn)].rpartition(".")
        setattr(model if not parent else dict(model.named_sublayers())[parent], leaf, paddle.nn.Identity())
    with paddle.no_grad():
        after = model(x).numpy()
    diff = float(np.abs(after - before).max(initial=0.0))
    if diff > 1e-3 * (1.0 + float(np.abs(before).max(initial=0.0))):
        raise BackendError(f"folding BatchNorm into the preceding Conv2D changed the output by {diff:.3g}: a conv "
                           "output is read by more than its BatchNorm; paddle quantization needs Conv->BN pairs")
    return len(pairs)


def _as_8bit(model: Any) -> None:
    """Rewrite every converted quanter of fewer than 8 bits as the identical 8-bit one (paddle2onnx
    reads the scale as if bit_length were 8)."""
    from paddle.nn.quant.format import LinearDequanter, LinearQuanter

    for layer in model.sublayers():
        if isinstance(layer, (LinearQuanter, LinearDequanter)) and layer._bit_length < 8:
            layer._scales.set_value(layer._scales * (127.0 / ((1 << (layer._bit_length - 1)) - 1)))
            layer._bit_length = 8


def _config(qat: bool) -> Any:
    from paddle.quantization import QuantConfig

    if qat:
        from paddle.quantization.quanters import FakeQuanterWithAbsMaxObserver
        from paddleslim.quant.quanters import FakeQuanterChannelWiseAbsMaxObserver

        cfg = QuantConfig(activation=FakeQuanterWithAbsMaxObserver(moving_rate=0.9),
                          weight=FakeQuanterChannelWiseAbsMaxObserver(bit_length=WEIGHT_BITS))
    else:
        from paddleslim.quant.observers import AbsMaxChannelWiseWeightObserver, AbsmaxObserver

        cfg = QuantConfig(activation=AbsmaxObserver(), weight=AbsMaxChannelWiseWeightObserver(quant_bits=WEIGHT_BITS))
    # the Identity left where a BatchNorm was folded computes nothing: an observer on it would round the
    # conv output a second time natively, which paddle2onnx (dropping the Identity) does not reproduce
    cfg.add_type_config(paddle.nn.Identity, activation=None, weight=None)
    return cfg


def _count_quanted(model: Any) -> int:
    from paddle.nn.quant.format import ConvertibleQuantedLayer

    return sum(isinstance(m, ConvertibleQuantedLayer) for m in model.sublayers())


#: Lane 3 (Paddle 3): why paddle-native INT8 is refused, per mode (measured with paddle 3.3.1 + paddle2onnx
#: 2.1.0 on the digits cnn; paddle 3 has no per-channel weight observer of its own, the ones above are
#: PaddleSlim's, which lane 3 lacks, so paddle's per-tensor AbsmaxObserver was tried):
#: - PTQ (static, dynamic): ``convert`` works, then ``paddle.jit.save`` fails in PIR: ``LinearQuanter.forward``'s
#:   PIR branch (paddle/nn/quant/format.py) creates a persistable value of the input's shape, and the batch
#:   dimension -1 is refused ("Expected data[i] >= 0, but received data[i]:-1", infermeta/nullary.cc). Saving
#:   under ``paddle.pir_utils.OldIrGuard`` or with a fixed batch works, but paddle2onnx 2.1.0 then aborts the
#:   process on ``quantize_linear`` at every opset ("Due to opset version, the model exporting is aborted" at
#:   13 and 16, "Only support e4m3 or e5m2 now" at 19): no route to an ONNX file.
#: - QAT: ``convert`` raises ``TypeError: Can't constructs a 'paddle.Tensor' with data type NoneType``: the
#:   abs-max quanter's ``zero_points()`` is None and ``LinearQuanter.__init__`` passes it to ``to_tensor``
#:   (its fallback line reads ``zero_point if zero_point is not None else zero_point``); past that, the same
#:   export failure as PTQ.
#: Searched PaddlePaddle's issues for a workaround: Paddle#54266 (the same TypeError elsewhere, open, no fix),
#: Paddle PR #59441 (``remain_weight``, used above); none for either failure. Lane 3 therefore quantizes the
#: fp32 export with ONNX Runtime (``export.quantize=static|dynamic``), which both lanes and backends share.
_LANE3_REFUSAL = {
    "static": "the PTQ-converted model fails in paddle.jit.save (PIR: LinearQuanter makes a persistable of the "
              "input shape, batch -1) and paddle2onnx 2.1.0 aborts on quantize_linear at every opset",
    "qat": "QAT.convert raises TypeError (LinearQuanter is given zero_point None) and the converted model meets "
           "the PTQ export failure (paddle2onnx 2.1.0 aborts on quantize_linear)",
}
_LANE3_REFUSAL["dynamic"] = _LANE3_REFUSAL["static"]


class PaddleQuantization:
    """Adapter mixin: the quantization methods of :class:`dualml.backend.Backend` for paddle."""

    def quantization_support(self, mode: str) -> str | None:
        if mode not in ("dynamic", "static", "qat"):
            return f"unknown quantization mode {mode!r}"
        if PADDLE3:
            return (f"paddle-native INT8 is lane 2.6 only ({STACKS['lane 2.6']}); on {LANE} (paddle {VERSION}) "
                    f"{_LANE3_REFUSAL[mode]}; on {LANE} use export.quantize=static|dynamic (the fp32 ONNX export "
                    "quantized by ONNX Runtime, QDQ)")
        return None

    def _require_lane(self, mode: str) -> None:
        why = self.quantization_support(mode)
        if why is not None:
            raise BackendError(f"quantize mode={mode} is not supported on backend=paddle: {why}")

    def quantize_dynamic(self, net: Any) -> Any:
        """Weight-only int8 (per output channel) for every ``nn.Linear``; activations stay float."""
        self._require_lane("dynamic")
        from paddle.quantization import PTQ, QuantConfig
        from paddleslim.quant.observers import AbsMaxChannelWiseWeightObserver

        cfg = QuantConfig(activation=None, weight=None)
        cfg.add_type_config(paddle.nn.Linear, weight=AbsMaxChannelWiseWeightObserver(quant_bits=8))
        ptq = PTQ(cfg)
        model = copy.deepcopy(net)
        model.eval()
        with quiet(level=logging.ERROR):
            q = ptq.quantize(model, inplace=True)
            if not _count_quanted(q):
                raise BackendError(f"quantize mode=dynamic found no nn.Linear in {type(net).__name__} (the paddle "
                                   "pass is weight-only int8 of Linear layers); use mode=static for conv models")
            with paddle.no_grad():
                q(_example(net))  # the weight observers read the weights in a forward
            qnet = ptq.convert(q, inplace=True, remain_weight=True)
        return _tag(qnet, "dynamic", f"paddle {paddle.__version__} paddle.quantization.PTQ, weight-only "
                                     "(PaddleSlim AbsMaxChannelWiseWeightObserver, Linear, int8)")

    def quantize_static(self, net: Any, calibration: list[np.ndarray]) -> Any:
        """Post-training int8 of Conv2D/Linear weights (per channel, 7-bit) and activations (abs-max
        of the calibration batches, int8 symmetric)."""
        self._require_lane("static")
        from paddle.quantization import PTQ

        model = copy.deepcopy(net)
        model.eval()
        with quiet(level=logging.ERROR):
            _fold_bn(model, _example(net, calibration[0][:4]))
            ptq = PTQ(_config(qat=False))
            q = ptq.quantize(model, inplace=True)
            with paddle.no_grad():
                for batch in calibration:
                    q(paddle.to_tensor(np.ascontiguousarray(batch)))
            qnet = ptq.convert(q, inplace=True, remain_weight=True)
        _as_8bit(qnet)
        return _tag(qnet, "static", f"paddle {paddle.__version__} paddle.quantization.PTQ with PaddleSlim observers "
                                    f"(AbsmaxObserver, AbsMaxChannelWiseWeightObserver {WEIGHT_BITS}-bit; "
                                    f"{sum(len(b) for b in calibration)} calibration samples)")

    def prepare_qat(self, net: Any) -> Any:
        """Fake-quant model (BatchNorm folded first) trainable with any paddle optimizer."""
        self._require_lane("qat")
        from paddle.quantization import QAT

        model = copy.deepcopy(net)
        with quiet(level=logging.ERROR):
            _fold_bn(model, _example(net))
            model.train()
            qat = QAT(_config(qat=True))
            q = qat.quantize(model, inplace=True)
        object.__setattr__(q, "_dualml_qat", qat)
        return q

    def convert_qat(self, qat_net: Any) -> Any:
        qat = getattr(qat_net, "_dualml_qat", None)
        if qat is None:
            raise BackendError(f"{type(qat_net).__name__} did not come from prepare_qat")
        qat_net.eval()
        with quiet(level=logging.ERROR):
            qnet = qat.convert(qat_net, inplace=False, remain_weight=True)
        _as_8bit(qnet)
        return _tag(qnet, "qat", f"paddle {paddle.__version__} paddle.quantization.QAT with PaddleSlim "
                                 f"FakeQuanterChannelWiseAbsMaxObserver ({WEIGHT_BITS}-bit weights) and "
                                 "FakeQuanterWithAbsMaxObserver activations")

    def export_quantized_onnx(self, qnet: Any, sample: np.ndarray, path: str,
                              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """``paddle.jit.save`` -> paddle2onnx (child process, onnxruntime deploy backend) -> int8
        weights folded and Linear QDQ completed -> dualml's finalize."""
        import paddle2onnx

        from dualml import __version__
        from dualml.compress.quantization import complete_qdq, fold_weight_quantize
        from dualml.errors import ExportError
        from dualml.onnx.export import finalize

        from .export import _paddle2onnx, saved_program

        quant = getattr(qnet, "_dualml_quant", None)
        if quant is None:
            raise BackendError(f"{type(qnet).__name__} is not a quantized model from quantize_dynamic/quantize_static/"
                               "convert_qat")
        qnet.eval()
        spec = paddle.static.InputSpec([None, *sample.shape[1:]], str(sample.dtype), "input")
        with tempfile.TemporaryDirectory(prefix="dualml-paddle-qexport-") as tmp:
            prefix, raw = os.path.join(tmp, "model"), os.path.join(tmp, "raw.onnx")
            try:
                with quiet(level=logging.ERROR):
                    paddle.jit.save(qnet, prefix, input_spec=[spec])
            except Exception as exc:  # dy2static raises assorted types
                text = (str(exc).strip().splitlines() or [""])[-1][:300]
                raise ExportError(f"paddle export of quantized {type(qnet).__name__} failed in paddle.jit.save: "
                                  f"{type(exc).__name__}: {text}") from None
            _paddle2onnx(*saved_program(prefix), raw, 16, type(qnet).__name__)
            folded = fold_weight_quantize(raw)
            linears = complete_qdq(raw, _linears(qnet))
            info = {"exporter": "paddle2onnx", "exporter_version": f"paddle2onnx {paddle2onnx.__version__}, paddle "
                    f"{paddle.__version__}", "fallback_reason": None}
            meta = {"dualml_version": __version__, "backend": "paddle", "backend_version": paddle.__version__,
                    "exporter": info["exporter"], "exporter_version": info["exporter_version"],
                    "quantization": quant["mode"], "quantization_tool": quant["tool"], **(metadata or {})}
            graph = finalize(raw, path, meta)
        return {**info, "quantization": quant["mode"], "quantization_tool": quant["tool"],
                "folded_weights": folded, "completed_linears": linears, **graph}


def _linears(qnet: Any) -> list[Any]:
    """What each quantized Linear computes, for ``complete_qdq`` (float weight [in, out] as paddle2onnx
    stores it, its int8 values and scales, the input's int8 scale)."""
    from paddle.nn.quant.qat.linear import QuantedLinear

    from dualml.compress.quantization import QuantizedLinear

    def scale(qd: Any) -> np.ndarray:  # paddle keeps abs-max; ONNX wants the step (bit_length 8 after _as_8bit)
        return (qd._quanter._scales.numpy() / ((1 << (qd._quanter._bit_length - 1)) - 1)).astype(np.float32)

    out = []
    for layer in qnet.sublayers():
        if not isinstance(layer, QuantedLinear) or layer.weight_quanter is None:
            continue
        w = layer.weight.numpy()
        s = scale(layer.weight_quanter)
        axis = int(layer.weight_quanter._quanter._quant_axis)
        shape = [1] * w.ndim
        if s.ndim and s.size > 1:
            shape[axis] = -1
        r = w / s.reshape(shape)
        q = np.clip(np.sign(r) * np.floor(np.abs(r) + 0.5), -128, 127).astype(np.int8)  # paddle rounds half away
        act = layer.activation_quanter
        out.append(QuantizedLinear(weight=w, q=q, scale=s if s.size > 1 else s.reshape(()), axis=axis,
                                   activation=None if act is None else (float(scale(act).reshape(-1)[0]), 0)))
    return out
