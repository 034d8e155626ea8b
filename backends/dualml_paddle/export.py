"""ONNX export for paddle: ``paddle.jit.save`` to a static program, then paddle2onnx.

``paddle.onnx.export`` does the same but always through one shared ``/tmp/paddle_model_temp_dir``,
which two processes exporting at once would trample; here each export has its own temp folder.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from typing import Any

import numpy as np
import paddle

from dualml.errors import ExportError

#: paddle2onnx 1.3 writes opsets 7 to 16
OPSETS = {"paddle2onnx": (7, 16)}


class PaddleExport:
    #: ``export.exporter`` values besides auto (declared on dualml.backend.Backend)
    exporters = tuple(OPSETS)

    def export_onnx(self, net: Any, sample: np.ndarray, path: str, opset: int | None, exporter: str) -> dict[str, Any]:
        import paddle2onnx

        if exporter not in ("auto", "paddle2onnx"):
            raise ExportError(f"export.exporter={exporter} is not allowed for backend=paddle; allowed: auto, "
                              "paddle2onnx")
        lo, hi = OPSETS["paddle2onnx"]
        if opset is not None and not lo <= opset <= hi:
            raise ExportError(f"export.opset={opset} is not allowed for backend=paddle: paddle2onnx "
                              f"{paddle2onnx.__version__} writes opsets {lo}..{hi}")
        spec = paddle.static.InputSpec([None, *sample.shape[1:]], str(sample.dtype), "input")
        with tempfile.TemporaryDirectory(prefix="dualml-paddle-export-") as tmp:
            prefix = os.path.join(tmp, "model")
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    paddle.jit.save(net, prefix, input_spec=[spec])
            except Exception as exc:  # dy2static raises assorted types
                text = (str(exc).strip().splitlines() or [""])[-1][:300]
                raise ExportError(f"paddle export of {type(net).__name__} failed in paddle.jit.save (dy2static): "
                                  f"{type(exc).__name__}: {text}; the forward must be convertible to a static "
                                  "program (no numpy or Python-side data-dependent control flow)") from None
            params = prefix + ".pdiparams" if os.path.isfile(prefix + ".pdiparams") else ""
            _paddle2onnx(prefix + ".pdmodel", params, path, opset or 16, type(net).__name__)
        return {"exporter": "paddle2onnx", "exporter_version": f"paddle2onnx {paddle2onnx.__version__}, paddle "
                f"{paddle.__version__}", "fallback_reason": None}


def _paddle2onnx(model_file: str, params_file: str, path: str, opset: int, what: str) -> None:
    """Run paddle2onnx in a child process: on an unsupported operator it aborts its whole process
    (SIGABRT), which must not take the user's command down. Its log names the operator. The child
    imports ``dualml`` first for its zlib-before-paddle guard (``dualml/__init__``)."""
    code = ("import dualml, sys, paddle2onnx; paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=sys.argv[3], "
            "opset_version=int(sys.argv[4]), auto_upgrade_opset=False, verbose=False, enable_onnx_checker=True)")
    proc = subprocess.run([sys.executable, "-c", code, model_file, params_file, path, str(opset)],
                          capture_output=True, text=True)
    log = proc.stdout + proc.stderr
    if proc.returncode == 0 and os.path.isfile(path) and os.path.getsize(path) > 0:
        return
    found = re.search(r"not supported yet, including ([^\n]+)", log)
    why = (f"unsupported operator(s): {found.group(1).strip().rstrip(',')}" if found else
           (log.strip().splitlines() or [f"exit code {proc.returncode}"])[-1][:300])
    raise ExportError(f"paddle2onnx could not convert {what}: {why}; try another export.opset (7..16) or "
                      "replace the layer with ops paddle2onnx supports")
