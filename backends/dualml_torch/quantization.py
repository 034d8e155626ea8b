"""INT8 quantization passes for torch through ``torch.ao.quantization``: eager dynamic, FX graph
mode static (post-training, calibrated) and FX graph mode quantization-aware training.

Everything torch-specific about quantization lives in this one module on purpose:
``torch.ao.quantization`` is deprecated upstream in favour of torchao (whose PT2E flow replaces FX
graph mode; ``torch.ao.quantization.quantize_pt2e`` is already gone from torch 2.13), so moving to
torchao means rewriting this file behind the same methods; configs and the neutral passes in
``dualml.compress.quantization`` do not change.

Choices (measured on the trained digits cnn, see tests/test_quantization_passes.py):

- static and QAT use the ``x86`` backend config (``get_default_qconfig_mapping("x86")``): FX fuses
  Conv+BN+ReLU itself, weights are int8 per output channel (symmetric) and activations uint8 with
  ``reduce_range`` (0..127). That 7-bit activation range is what keeps ONNX Runtime's fused int8
  kernels exact on CPUs without VNNI (AVX2 ``vpmaddubsw`` adds two u8*s8 products into a
  saturating int16: 127*127*2 fits, 255*127*2 does not).
- PT2E (``prepare_pt2e`` + ``X86InductorQuantizer``) is not available in torch 2.13 without
  torchao, and ``torch.export`` (so the dynamo ONNX exporter) cannot trace FX-converted quantized
  modules; the TorchScript exporter can, and writes QuantizeLinear/DequantizeLinear around float
  Conv/Gemm (QDQ), which ONNX Runtime fuses into QLinearConv etc.
- dynamic quantizes ``nn.Linear`` only (torch has no dynamic conv). No exporter translates
  ``quantized::linear_dynamic``, so the ONNX file is written from a float twin carrying the
  dequantized int8 weights, then each Linear's weight becomes an int8 initializer behind a
  DequantizeLinear and its input goes through DynamicQuantizeLinear -> DequantizeLinear: the same
  arithmetic as torch's (per-batch uint8 activation scale), in standard ops. Weights are restricted
  to -64..63 for the same saturation reason as above (the ONNX side quantizes activations to the
  full 0..255).
"""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from typing import Any

import numpy as np
import torch

from dualml.errors import BackendError

#: the torch.ao backend config used for static and QAT (fbgemm's successor on x86 CPUs)
QENGINE = "x86"


def _example(net: Any, sample: np.ndarray | None) -> tuple[Any, ...]:
    """FX's example inputs."""
    from dualml.compress.quantization import example_input

    return (torch.from_numpy(example_input(net, sample)),)


def _tag(qnet: Any, mode: str, tool: str) -> Any:
    """Record how ``qnet`` was quantized (read by the exporter and reports)."""
    object.__setattr__(qnet, "_dualml_quant", {"mode": mode, "tool": tool})
    return qnet


def _fx(fn: Any, what: str, *args: Any) -> Any:
    """Run an FX quantization step, turning torch.fx tracing failures into one BackendError line."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the per-call deprecation notice pointing at torchao
        try:
            return fn(*args)
        except Exception as exc:  # symbolic tracing raises TraceError, TypeError, RuntimeError, ...
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise BackendError(f"torch FX {what} failed ({type(exc).__name__}: {first}); the forward must be "
                               "symbolically traceable (no data-dependent Python control flow)") from None


def _dynamic_qconfig() -> Any:
    from torch.ao.quantization import MinMaxObserver, PlaceholderObserver, QConfig

    return QConfig(activation=PlaceholderObserver.with_args(dtype=torch.quint8, is_dynamic=True),
                   weight=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                                   quant_min=-64, quant_max=63))


def _no_op(module: Any, args: Any) -> None:
    return None


class TorchQuantization:
    """Adapter mixin: the quantization methods of :class:`dualml.backend.Backend` for torch."""

    def quantization_support(self, mode: str) -> str | None:
        return None if mode in ("dynamic", "static", "qat") else f"unknown quantization mode {mode!r}"

    def quantize_dynamic(self, net: Any) -> Any:
        """int8 weights for every ``nn.Linear``, activations quantized per batch at run time."""
        from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            qnet = torch.ao.quantization.quantize_dynamic(copy.deepcopy(net).eval(),
                                                          {torch.nn.Linear: _dynamic_qconfig()}, dtype=torch.qint8)
        if not any(isinstance(m, DynamicLinear) for m in qnet.modules()):
            raise BackendError(f"quantize mode=dynamic found no nn.Linear in {type(net).__name__} (torch quantizes "
                               "only Linear layers dynamically); use mode=static for convolutional models")
        for m in qnet.modules():
            # nn.TransformerEncoderLayer's inference fast-path check reads linear1.weight as a tensor, which a
            # dynamically quantized Linear has as a method (AttributeError in torch 2.13); any forward hook
            # makes the layer take its ordinary path first, which runs the quantized Linears as modules
            if isinstance(m, torch.nn.TransformerEncoderLayer) and any(
                    isinstance(c, DynamicLinear) for c in m.modules()):
                m.register_forward_pre_hook(_no_op)
        return _tag(qnet, "dynamic", f"torch {torch.__version__} torch.ao.quantization.quantize_dynamic (Linear, "
                                     "int8 weights -64..63, uint8 activations per batch)")

    def quantize_static(self, net: Any, calibration: list[np.ndarray]) -> Any:
        """FX graph mode post-training quantization: observers, calibration batches, convert."""
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = QENGINE
        net = copy.deepcopy(net).eval()
        prepared = _fx(prepare_fx, "prepare_fx", net, get_default_qconfig_mapping(QENGINE),
                       _example(net, calibration[0]))
        with torch.no_grad():
            for batch in calibration:
                prepared(torch.from_numpy(np.ascontiguousarray(batch)))
        qnet = _fx(convert_fx, "convert_fx", prepared)
        return _tag(qnet, "static", f"torch {torch.__version__} torch.ao.quantization FX prepare_fx/convert_fx "
                                    f"({QENGINE} qconfig, {sum(len(b) for b in calibration)} calibration samples)")

    def prepare_qat(self, net: Any) -> Any:
        """FX graph mode QAT model: Conv+BN(+ReLU) fused into QAT modules with fake-quant on weights
        and activations; train it with any torch optimizer, then :meth:`convert_qat`."""
        from torch.ao.quantization import get_default_qat_qconfig_mapping
        from torch.ao.quantization.quantize_fx import prepare_qat_fx

        torch.backends.quantized.engine = QENGINE
        net = copy.deepcopy(net).train()
        return _fx(prepare_qat_fx, "prepare_qat_fx", net, get_default_qat_qconfig_mapping(QENGINE), _example(net, None))

    def convert_qat(self, qat_net: Any) -> Any:
        from torch.ao.quantization.quantize_fx import convert_fx

        qnet = _fx(convert_fx, "convert_fx", copy.deepcopy(qat_net).eval())
        return _tag(qnet, "qat", f"torch {torch.__version__} torch.ao.quantization FX prepare_qat_fx/convert_fx "
                                 f"({QENGINE} qconfig)")

    def export_quantized_onnx(self, qnet: Any, sample: np.ndarray, path: str,
                              metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        """QDQ ONNX of a quantized model through the TorchScript exporter, finalized by dualml."""
        from dualml import __version__
        from dualml.compress.quantization import QuantizedLinear, complete_qdq
        from dualml.onnx.export import finalize

        quant = getattr(qnet, "_dualml_quant", None)
        if quant is None:
            raise BackendError(f"{type(qnet).__name__} is not a quantized model from quantize_dynamic/quantize_static/"
                               "convert_qat")
        with tempfile.TemporaryDirectory(prefix="dualml-qexport-") as tmp:
            raw = os.path.join(tmp, "raw.onnx")
            if quant["mode"] == "dynamic":
                twin, linears = _float_twin(qnet, QuantizedLinear)
                info = self.export_onnx(twin, sample, raw, None, "torchscript")
                complete_qdq(raw, linears)
            else:
                info = self.export_onnx(qnet, sample, raw, None, "torchscript")
            meta = {"dualml_version": __version__, "backend": "torch", "backend_version": torch.__version__,
                    "exporter": info["exporter"], "exporter_version": info["exporter_version"],
                    "quantization": quant["mode"], "quantization_tool": quant["tool"], **(metadata or {})}
            graph = finalize(raw, path, meta)
        return {**info, "quantization": quant["mode"], "quantization_tool": quant["tool"], **graph}


def _float_twin(qnet: Any, record: type) -> tuple[Any, list[Any]]:
    """A float copy of a dynamically quantized model whose Linears carry the dequantized int8
    weights, plus what each one computes in int8 (for ``complete_qdq`` to rebuild in the graph)."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear

    twin = copy.deepcopy(qnet)
    linears = []
    for name, mod in list(twin.named_modules()):
        if not isinstance(mod, DynamicLinear):
            continue
        w = mod.weight()
        fl = torch.nn.Linear(mod.in_features, mod.out_features, bias=mod.bias() is not None)
        with torch.no_grad():
            fl.weight.copy_(w.dequantize())
            if mod.bias() is not None:
                fl.bias.copy_(mod.bias())
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scale, axis = w.q_per_channel_scales().numpy().astype(np.float32), int(w.q_per_channel_axis())
        else:
            scale, axis = np.asarray(w.q_scale(), np.float32), 0
        linears.append(record(weight=fl.weight.detach().numpy().copy(), q=w.int_repr().numpy().astype(np.int8),
                              scale=scale, axis=axis, activation="dynamic"))
        parent, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(parent) if parent else twin, leaf, fl)
    return twin, linears
