"""Canonical weights on disk: safetensors (no pickle, so loading cannot run code) plus JSON metadata.

The metadata rides in the safetensors header under ``dualml`` and carries a SHA-256 of every
tensor's bytes and of the metadata itself (format ``dualml-canonical-v2``: the step, the config and the
best score steer a resume, so an edited step must fail like an edited tensor). A truncated file fails
to parse and a tampered one fails its checksum: either way a clear error, never silent garbage.
``dualml-canonical-v1`` files (tensors only) still load, with a warning that their metadata is unchecked.
Writes are atomic (temp file, fsync, rename); a full disk is one line naming the file, and the previous
file stays whole.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DiskFullError, DualmlWarning, WeightsFileError
from .version import __version__


def png_bytes(fig: Any, dpi: int = 110) -> bytes:
    """A matplotlib figure as PNG bytes, closing it: reports write the bytes atomically, so a crash
    never leaves a half-drawn PNG beside a complete JSON."""
    import io

    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    return buf.getvalue()


def _umask() -> int:
    """The process umask, read without changing it where Linux says it (``os.umask`` can only be read
    by setting it, which for an instant would give files other threads create mode 0666)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the atomic writer's temp names: ``.<target name>.<mkstemp's 8 characters>.tmp``
TEMP_NAME = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
#: when this process started (close enough: dualml is imported first); temps older than this are no live
#: writer's of ours, and another process's writer keeps touching its temp while it writes
STARTED = time.time()


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte and fsync: a full disk shows up here (in ``write`` or, delayed, in ``fsync``)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` so that ``path`` is either the old file or the complete new one, never half.

    The file gets the mode any tool's output gets (0666 less the umask): ``mkstemp`` creates 0600,
    and a model copied from a 0600 export into a container is unreadable by its non-root server.
    A full disk (or quota) is a :class:`DiskFullError` naming ``path``; any other refusal keeps its
    errno with ``path`` as its file name (the temp file's name would mean nothing to the user)."""
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~_umask())
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            full = DiskFullError(f"no space left on device writing {path} ({len(data)} bytes; nothing was "
                                 f"half-written, any previous {path.name} is unchanged): free space and run again")
            full.errno = exc.errno
            raise full from exc
        if isinstance(exc, OSError) and exc.filename in (None, tmp):
            exc.filename = str(path)
        raise
    return path


def clean_stale_temps(folder: str | os.PathLike) -> tuple[int, int]:
    """Remove what a killed :func:`atomic_write_bytes` left in ``folder``: files named like its temps
    (:data:`TEMP_NAME`) last modified before this process started, so no writer of this process owns
    them and another process's would still be touching its file. Returns (files, bytes) removed."""
    files = size = 0
    for p in Path(folder).iterdir():
        try:
            st = p.lstat()
            if not (TEMP_NAME.match(p.name) and p.is_file() and not p.is_symlink() and st.st_mtime < STARTED):
                continue
            p.unlink()
        except OSError:  # gone meanwhile, or not ours to remove: leave it
            continue
        files, size = files + 1, size + st.st_size
    return files, size


#: training checkpoints keep the model's canonical weights under this prefix (beside ``optim/``, ``native/``)
MODEL_PREFIX = "model/"


def model_weights(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's canonical weights from a loaded file: a training checkpoint's ``model/`` tensors, or
    the whole file when it is plain canonical weights (``save_weights``, an ensemble member's file)."""
    n = len(MODEL_PREFIX)
    return {k[n:]: v for k, v in arrays.items() if k.startswith(MODEL_PREFIX)} or arrays


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


#: what :func:`save_weights` writes; :func:`load_weights` reads these
FORMAT = "dualml-canonical-v2"
FORMATS = ("dualml-canonical-v1", FORMAT)


def digest(weights: dict[str, np.ndarray], meta: dict[str, Any] | None = None) -> str:
    """SHA-256 of every tensor (name, dtype, shape, bytes) and, from format v2 on, of the metadata
    without its own ``sha256`` (canonical JSON: sorted keys), so an edited step or config is caught."""
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    if meta is not None:
        rest = {k: v for k, v in meta.items() if k != "sha256"}
        h.update(b"meta|" + json.dumps(rest, sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def save_weights(path: str | os.PathLike, weights: dict[str, np.ndarray],
                 metadata: dict[str, Any] | None = None) -> Path:
    """Save canonical weights (and JSON-able ``metadata``) atomically as safetensors."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    # through JSON once, so the digest covers exactly what load_weights will read back (int keys, tuples)
    meta = json.loads(json.dumps({**(metadata or {}), "format": FORMAT, "dualml": __version__}))
    meta["sha256"] = digest(arrays, meta)
    return atomic_write_bytes(path, save(arrays, metadata={"dualml": json.dumps(meta, sort_keys=True)}))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load and verify canonical weights; returns (weights, metadata)."""
    from safetensors import SafetensorError, safe_open
    from safetensors.numpy import load

    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(f"weights file {path} does not exist")
    data = path.read_bytes()
    try:
        weights = load(data)
        with safe_open(str(path), framework="numpy") as fh:
            header = fh.metadata() or {}
    except (SafetensorError, ValueError, OSError) as exc:
        raise WeightsFileError(f"{path} is not a readable safetensors file (truncated or corrupted?): "
                               f"{str(exc).splitlines()[0]}") from None
    if "dualml" not in header:
        raise WeightsFileError(f"{path} is a safetensors file but not a dualml checkpoint (no 'dualml' metadata)")
    try:
        meta = json.loads(header["dualml"])
    except json.JSONDecodeError:
        raise WeightsFileError(f"{path}: dualml metadata is not valid JSON (tampered?)") from None
    if not isinstance(meta, dict) or meta.get("format") not in FORMATS:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise WeightsFileError(f"{path}: format {found!r} is not allowed; allowed: {', '.join(FORMATS)} "
                               "(tampered, or written by a newer dualml?)")
    v1 = meta["format"] == FORMATS[0]
    if meta.get("sha256") != digest(weights, None if v1 else meta):
        raise WeightsFileError(f"{path}: checksum mismatch: the tensors or the metadata (step, config) were "
                               "modified or corrupted after saving")
    if v1:
        warnings.warn(f"{path} is a {FORMATS[0]} file: its tensors are checked, its metadata (step, config) is "
                      f"not; saving it again writes {FORMAT}, which checks both", DualmlWarning, stacklevel=2)
    return weights, meta


def resolve_checkpoint(spec: str, key: str = "export.checkpoint") -> Path:
    """``RUN/best`` -> ``RUN/best.safetensors``; a run folder -> its best checkpoint; a file as is.

    In the core (not in ``dualml.onnx``) because export, compression and ``trainer.init_from`` all name
    checkpoints the same way, and the Trainer sits below ``onnx`` in the layers. ``key`` is the setting the
    one-line error names."""
    p = Path(spec)
    for candidate in (p, p.with_name(p.name + ".safetensors"), p / "best.safetensors"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"{key}={spec} is not a checkpoint: no file {p}, {p}.safetensors or "
                      f"{p}/best.safetensors (give RUN/best, RUN/last or a .safetensors file)")
