"""``dualml predict``: run an ONNX model on an .npy file: `dualml predict model.onnx input=x.npy`.

Reading and checking the input is dualml.onnx.serve's (the server checks requests the same way). Rows
holding NaN or inf are refused (a model answers them with class 0 at probability nan); ``output=`` naming
a folder (existing, or ending in ``/``) writes ``<input name>-outputs.npy`` inside it.
"""
from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from ..checkpoint import atomic_write_bytes
from ..errors import DualmlError
from ..onnx import ort
from ..onnx.serve import PREDICT_CHUNK, Signature, classify, load_npy, one_line
from .log import result, warn

#: the one-line description in ``dualml --help``
HELP = 'run an ONNX model on an .npy file: `dualml predict model.onnx input=x.npy`'
#: config sections (or keys) ``dualml predict --help`` lists
KEYS = ('predict',)
#: this command's own section: its keys may be given bare (``predict.x=1`` as ``x=1``); a bare word is ``predict.model``
SECTION = 'predict'


def cmd_predict(cfg: DictConfig, overrides: Sequence[str] = ()) -> int:
    """``dualml predict model.onnx input=x.npy [output=y.npy]``: print class predictions or save outputs."""
    p = cfg.predict
    if not p.model:
        raise DualmlError("predict needs a model: dualml predict model.onnx input=x.npy [output=y.npy]")
    if not p.input:
        raise DualmlError("predict needs input=FILE.npy (a batch [n, ...] or one sample, saved with np.save)")
    sess = ort.session(p.model, threads=0)  # 0: ONNX Runtime's default thread count
    sig = Signature.of(sess)
    x, note = sig.prepare(load_npy(p.input))
    if note:
        warn(f"{note}")
    if x.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        if len(bad):
            rows = ", ".join(str(int(i)) for i in bad[:10]) + (", ..." if len(bad) > 10 else "")
            raise DualmlError(f"input file {p.input}: {len(bad)} row(s) hold NaN or inf (rows {rows}); allowed: "
                              "finite values (drop or impute those rows first)")
    step = len(x) if sig.fixed_batch else PREDICT_CHUNK
    try:
        y = np.concatenate([ort.run(sess, x[i:i + step]) for i in range(0, len(x), step)])
    except Exception as exc:  # onnxruntime's own exception types
        raise DualmlError(f"ONNX Runtime failed on {p.input} (shape {list(x.shape)} {x.dtype}): "
                          f"{one_line(exc)}") from None
    if p.output:
        out = output_path(p.output, p.input)
        buf = io.BytesIO()
        np.save(buf, y)
        atomic_write_bytes(out, buf.getvalue())
        result(f"wrote outputs {list(y.shape)} {y.dtype} for {len(x)} rows to {out}")
        return 0
    c = classify(y)
    if c is None:
        result(f"{p.model}: output shape {list(y.shape)} {y.dtype}; min {y.min():.6g}, max {y.max():.6g}, "
              f"mean {y.astype(np.float64).mean():.6g} (use output=y.npy to save the values)")
        return 0
    cls, prob, already = c
    result(f"{p.model}: {len(x)} rows, output {list(y.shape)} {y.dtype}; prob = "
          f"{'the output as given (rows are probabilities)' if already else 'softmax of the output'}")
    result(f"{'row':>6} {'class':>6} {'prob':>8}")
    for i, (k, q) in enumerate(zip(cls, prob)):
        result(f"{i:6d} {int(k):6d} {q:8.4f}")
    counts = dict(zip(*np.unique(cls, return_counts=True)))
    result("class counts: " + ", ".join(f"{int(k)}: {int(n)}" for k, n in counts.items()))
    return 0


def output_path(output: str, input_file: str) -> Path:
    """``output`` itself, or ``<output>/<input stem>-outputs.npy`` when it names a folder (one that exists,
    or any path ending in ``/``): writing onto a folder's name fails with "Is a directory"."""
    if output.endswith(("/", "\\")) or Path(output).is_dir():
        return Path(output) / f"{Path(input_file).stem}-outputs.npy"
    return Path(output)
