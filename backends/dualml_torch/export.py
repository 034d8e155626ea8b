"""ONNX export for torch: the dynamo exporter (torch.export + onnxscript), else the TorchScript one.

``exporter=auto`` tries dynamo first because it is the maintained path; when it raises, the
TorchScript exporter runs and the reason is kept for the report, so a user sees which exporter
produced the file and why.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import torch

from dualml.errors import ExportError
from dualml.quiet import quiet

#: opsets each exporter can write here (dynamo: 18 natively, lower through onnx's version converter)
#: the exporters print progress and warnings; dualml prints its own summary
_EXPORTER_LOGGERS = ("torch.onnx", "onnxscript", "torch.export", "torch._export")
OPSETS = {"dynamo": (7, 22), "torchscript": (7, 20)}


def _reason(exc: BaseException) -> str:
    """The exception's type and first line, plus the first aten op named anywhere in its chain
    (dynamo's ConversionError puts the op that has no ONNX translation deep inside its cause)."""
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(re.sub(r"\x1b\[[0-9;]*m", "", str(e)))
        e = e.__cause__ or e.__context__
    first = (chain[0].strip().splitlines() or [""])[0][:200]
    ops = re.findall(r"aten(?:::|\.)([A-Za-z0-9_]+)", "\n".join(chain))
    ops = [o for o in ops if o not in ("default", "Tensor")]
    return f"{type(exc).__name__}: {first}" + (f" [op aten::{ops[0]}]" if ops and ops[0] not in first else "")


class TorchExport:
    #: ``export.exporter`` values besides auto (declared on dualml.backend.Backend)
    exporters = tuple(OPSETS)

    def export_onnx(self, net: Any, sample: np.ndarray, path: str, opset: int | None, exporter: str) -> dict[str, Any]:
        order = {"auto": ["dynamo", "torchscript"], "dynamo": ["dynamo"], "torchscript": ["torchscript"]}[exporter]
        x = torch.from_numpy(np.ascontiguousarray(sample))
        tried: list[str] = []
        for kind in order:
            lo, hi = OPSETS[kind]
            if opset is not None and not lo <= opset <= hi:
                tried.append(f"{kind}: opset {opset} outside {lo}..{hi}")
                continue
            try:
                with quiet(_EXPORTER_LOGGERS, logging.ERROR):
                    if kind == "dynamo":
                        torch.onnx.export(net, (x,), path, input_names=["input"], output_names=["output"],
                                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                                          opset_version=opset or 18, verbose=False, external_data=False)
                    else:
                        torch.onnx.export(net, (x,), path, input_names=["input"], output_names=["output"],
                                          dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
                                          dynamo=False, opset_version=opset or 17)
            except Exception as exc:  # every exporter failure is reported with its reason
                tried.append(f"{kind}: {_reason(exc)}")
                continue
            return {"exporter": kind, "exporter_version": f"torch {torch.__version__}",
                    "fallback_reason": "; ".join(tried) or None}
        hint = ("replace the op, or give it an ONNX translation (torch.onnx custom_translation_table)"
                if len(order) == 2 else f"export.exporter={'torchscript' if exporter == 'dynamo' else 'dynamo'}")
        raise ExportError(f"torch export of {type(net).__name__} failed ({'; '.join(tried)}); try {hint} or "
                          f"another export.opset (dynamo {OPSETS['dynamo']}, torchscript {OPSETS['torchscript']})")

