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

from .lane import PADDLE3

#: opsets paddle2onnx writes: 1.3 (lane 2.6) 7 to 16; 2.1 (lane 3) 7 to 21 (22 aborts "Due to opset version")
OPSETS = {"paddle2onnx": (7, 21) if PADDLE3 else (7, 16)}


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
            _paddle2onnx(*saved_program(prefix), path, opset or 16, type(net).__name__)
        return {"exporter": "paddle2onnx", "exporter_version": f"paddle2onnx {paddle2onnx.__version__}, paddle "
                f"{paddle.__version__}", "fallback_reason": None}


def saved_program(prefix: str) -> tuple[str, str]:
    """(program file, params file or "") that ``paddle.jit.save(net, prefix)`` wrote. Paddle 3 saves
    programs in PIR as ``prefix.json`` (lane 3); Paddle 2.6 and Paddle 3's old-IR mode save ``.pdmodel``."""
    model = prefix + ".json" if PADDLE3 and os.path.isfile(prefix + ".json") else prefix + ".pdmodel"
    return model, (prefix + ".pdiparams" if os.path.isfile(prefix + ".pdiparams") else "")


def _paddle2onnx(model_file: str, params_file: str, path: str, opset: int, what: str) -> None:
    """Run paddle2onnx in a child process: on an unsupported operator it aborts its whole process
    (SIGABRT), which must not take the user's command down. Its log names the operator. The child
    imports ``dualml`` first for its zlib-before-paddle guard (``dualml/__init__``)."""
    # paddle2onnx 2.x (lane 3) runs Polygraphy's constant folding after the conversion by default, setting
    # POLYGRAPHY_AUTOINSTALL_DEPS=1 itself so that Polygraphy pip-installs onnx-graphsurgeon at the first
    # export; optimize_tool="none" writes the converted graph as paddle2onnx 1.3 did (lane 2.6)
    # paddle2onnx 2.1 no longer names an unsupported operator ("Due to the unsupported operators, the
    # conversion is aborted."); verbose=True makes it print the PIR program it read, whose operators are then
    # listed in the message (the failure localisation exports single layers, where that list is short)
    extra = ', optimize_tool="none"' if PADDLE3 else ""
    code = ("import dualml, sys, paddle2onnx; paddle2onnx.export(sys.argv[1], sys.argv[2], save_file=sys.argv[3], "
            f"opset_version=int(sys.argv[4]), auto_upgrade_opset=False, verbose={PADDLE3}, "
            f"enable_onnx_checker=True{extra})")
    env = {**os.environ, "POLYGRAPHY_AUTOINSTALL_DEPS": "0"}
    proc = subprocess.run([sys.executable, "-c", code, model_file, params_file, path, str(opset)],
                          capture_output=True, text=True, env=env)
    log = proc.stdout + proc.stderr
    if proc.returncode == 0 and os.path.isfile(path) and os.path.getsize(path) > 0:
        return
    found = re.search(r"not supported yet, including ([^\n]+)", log)
    program_ops = sorted(set(re.findall(r'"pd_op\.(\w+)"', log)) - {"data", "fetch", "feed", "parameter"})
    if found:
        why = f"unsupported operator(s): {found.group(1).strip().rstrip(',')}"
    elif "unsupported operators" in log and program_ops:
        why = ("unsupported operator(s) (paddle2onnx 2.x does not name them) among the program's: "
               + ", ".join(program_ops[:12]) + (", ..." if len(program_ops) > 12 else ""))
    else:
        # paddle2onnx 2.x ends its log with the abort's signal lines; its own reason is the "[ERROR]" line
        lines = log.strip().splitlines()
        lines = [ln for ln in lines if "[ERROR]" in ln] or lines if PADDLE3 else lines
        why = (lines or [f"exit code {proc.returncode}"])[-1][:300]
    lo, hi = OPSETS["paddle2onnx"]
    raise ExportError(f"paddle2onnx could not convert {what}: {why}; try another export.opset ({lo}..{hi}) or "
                      "replace the layer with ops paddle2onnx supports")
