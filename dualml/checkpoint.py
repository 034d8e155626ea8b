"""Canonical weights on disk: safetensors (no pickle, so loading cannot run code) plus JSON metadata.

The metadata rides in the safetensors header under ``dualml`` and carries a SHA-256 of every
tensor's bytes, so a truncated file fails to parse and a tampered one fails its checksum:
either way a clear error, never silent garbage. Writes are atomic (temp file, fsync, rename).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .errors import WeightsFileError
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


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` so that ``path`` is either the old file or the complete new one, never half.

    The file gets the mode any tool's output gets (0666 less the umask): ``mkstemp`` creates 0600,
    and a model copied from a 0600 export into a container is unreadable by its non-root server."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def digest(weights: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        a = np.ascontiguousarray(weights[name])
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save_weights(path: str | os.PathLike, weights: dict[str, np.ndarray],
                 metadata: dict[str, Any] | None = None) -> Path:
    """Save canonical weights (and JSON-able ``metadata``) atomically as safetensors."""
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in weights.items()}
    meta = {"format": "dualml-canonical-v1", "dualml": __version__, "sha256": digest(arrays),
            **(metadata or {})}
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
    if meta.get("sha256") != digest(weights):
        raise WeightsFileError(f"{path}: checksum mismatch: the tensors were modified or corrupted after saving")
    return weights, meta
