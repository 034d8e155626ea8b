"""Data bigger than memory: a folder of ``.npy`` shards read memory-mapped, and the writer that makes one.

Why this format: ``.npy`` is numpy's own (no pickle, a fixed header, rows contiguous), so a shard opens with
``np.load(mmap_mode='r')`` and a batch reads only its rows from the page cache; nothing of the set is held
in the process. The small ``index.json`` lists the shards (names, rows, dtype, sample shape, byte sizes) and
is written last and atomically, so a folder whose writer died has no index and is not mistaken for a
complete set; the sizes catch a truncated shard at open time, before any training, naming the file.

Labels (``y``, int64, 8 bytes a row) are small next to samples and are read whole: the stratified split
needs them (it is the same split ``data=arrays`` makes, so the two train identically on the same data).
This module is numpy only (the core layer): the split and the batches are ``dualml.train.data``'s.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from .checkpoint import atomic_write_text
from .errors import ConfigError

INDEX = "index.json"
FORMAT = "dualml-shards"


class ShardWriter:
    """Append (x, y) chunks; rows go to shards of ``shard_size`` rows; :meth:`close` writes the index last.

    For sets that do not fit in memory: feed chunks as they are produced (``write_shards`` is the one-call
    form for arrays or memmaps)."""

    def __init__(self, directory: str | os.PathLike, shard_size: int) -> None:
        if isinstance(shard_size, bool) or not isinstance(shard_size, (int, np.integer)) or shard_size < 1:
            raise ConfigError(f"shard_size={shard_size!r} is not allowed; allowed: an integer >= 1")
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        if (self.dir / INDEX).exists():
            raise ConfigError(f"{self.dir / INDEX} already exists; write shards into a new folder")
        self.shard_size = int(shard_size)
        self.shards: list[dict[str, Any]] = []
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self._pending = 0
        self.sample_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype | None = None

    def add(self, x: Any, y: Any) -> None:
        x, y = np.asarray(x), np.asarray(y)
        if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
            raise ConfigError(f"shards: x must be [n, *sample_shape] and y [n]; got x {x.shape} and y {y.shape}")
        if not np.issubdtype(y.dtype, np.integer):
            raise ConfigError(f"shards: y must hold integer class labels; got dtype {y.dtype}")
        if self.sample_shape is None:
            self.sample_shape, self.dtype = tuple(x.shape[1:]), x.dtype
        elif tuple(x.shape[1:]) != self.sample_shape or x.dtype != self.dtype:
            raise ConfigError(f"shards: every chunk must be {self.dtype} {list(self.sample_shape)} per sample; got "
                              f"{x.dtype} {list(x.shape[1:])}")
        start = 0
        while start < len(x):
            take = min(self.shard_size - self._pending, len(x) - start)
            self._x.append(x[start:start + take])
            self._y.append(y[start:start + take].astype(np.int64))
            self._pending += take
            start += take
            if self._pending == self.shard_size:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        i = len(self.shards)
        names = {"x": f"x-{i:05d}.npy", "y": f"y-{i:05d}.npy"}
        for key, parts in (("x", self._x), ("y", self._y)):
            tmp = self.dir / (names[key] + ".tmp")
            with open(tmp, "wb") as fh:  # one header, then the chunks' bytes: no copy of the whole shard
                first = parts[0]
                np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(first.dtype),
                                                          "fortran_order": False,
                                                          "shape": (self._pending, *first.shape[1:])})
                for p in parts:
                    fh.write(np.ascontiguousarray(p).tobytes())
            tmp.replace(self.dir / names[key])
        self.shards.append({"x": names["x"], "y": names["y"], "rows": self._pending,
                            "x_bytes": (self.dir / names["x"]).stat().st_size,
                            "y_bytes": (self.dir / names["y"]).stat().st_size})
        self._x, self._y, self._pending = [], [], 0

    def close(self) -> Path:
        """Write the last shard, then the index (atomically, last): the set exists from this moment on."""
        self._flush()
        if not self.shards:
            raise ConfigError("shards: nothing was written (no rows)")
        index = {"format": FORMAT, "version": 1, "rows": sum(s["rows"] for s in self.shards),
                 "dtype": np.dtype(self.dtype).str, "sample_shape": list(self.sample_shape), "y_dtype": "<i8",
                 "shards": self.shards}
        return atomic_write_text(self.dir / INDEX, json.dumps(index, indent=1))


def write_shards(x: Any, y: Any, directory: str | os.PathLike, shard_size: int) -> Path:
    """Write samples ``x`` [n, ...] and integer labels ``y`` [n] as a shard set readable by ``data=shards``
    (``data.path=directory``); returns the index file. ``x`` may be a memmap: it is read a shard at a time."""
    w = ShardWriter(directory, shard_size)
    x, y = np.asarray(x) if not isinstance(x, np.ndarray) else x, np.asarray(y)
    for start in range(0, len(y), w.shard_size):
        w.add(x[start:start + w.shard_size], y[start:start + w.shard_size])
    return w.close()


def write_shard_chunks(chunks: Iterable[tuple[Any, Any]], directory: str | os.PathLike, shard_size: int) -> Path:
    """:func:`write_shards` for a stream of (x, y) chunks (sets produced piece by piece)."""
    w = ShardWriter(directory, shard_size)
    for x, y in chunks:
        w.add(x, y)
    return w.close()


def _fault_around() -> int:
    try:
        return int(Path("/proc/sys/vm/fault_around_bytes").read_text())
    except (OSError, ValueError):
        return 65536


class ShardSet:
    """An opened shard set: ``x`` shards memory-mapped, ``y`` read whole. Every check names the file.

    How rows are read (``read``): ``pread`` (default) copies each row with ``os.preadv`` into the batch, at
    the offset the shard's memory map gives; ``mmap`` indexes the memory maps. Measured on this project's
    CPU machines (Linux page cache in large folios, 4 KiB rows, 256 random rows a batch): one batch through
    the maps made ~300 MB resident (each fault maps a whole folio, ~1.2 MB a row) and an epoch over a 4 GB
    set would make all of it resident; preadv kept the peak flat (43 MB process) at 0.60 ms a batch against
    0.47 ms. The ``mmap`` path releases its pages every 64 MiB mapped (:meth:`release`)."""

    def __init__(self, directory: str | os.PathLike, key: str = "data.path", read: str = "pread") -> None:
        self.dir = Path(directory)
        where = f"{key}={directory}"
        index_file = self.dir / INDEX
        if not index_file.is_file():
            raise ConfigError(f"{where} is not allowed; {index_file} does not exist (write the set with "
                              "dualml.data.write_shards; the index is written last: a set whose writer died has none)")
        try:
            index = json.loads(index_file.read_text())
            assert index.get("format") == FORMAT and index["shards"]
        except (ValueError, AssertionError, KeyError, TypeError):
            raise ConfigError(f"{where} is not allowed; {index_file} is not a {FORMAT} index") from None
        self.dtype = np.dtype(index["dtype"])
        self.sample_shape = tuple(int(s) for s in index["sample_shape"])
        self.x: list[np.ndarray] = []
        ys = []
        for s in index["shards"]:
            for k in ("x", "y"):
                f = self.dir / s[k]
                if not f.is_file():
                    raise ConfigError(f"{where}: shard {f} is missing (listed in {index_file})")
                size = f.stat().st_size
                if size != s[f"{k}_bytes"]:
                    raise ConfigError(f"{where}: shard {f} is truncated or changed: {size} bytes, index says "
                                      f"{s[f'{k}_bytes']}")
            try:
                xm = np.load(self.dir / s["x"], mmap_mode="r", allow_pickle=False)
                ym = np.load(self.dir / s["y"], allow_pickle=False)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"{where}: shard {self.dir / s['x']} is not readable ({exc})") from None
            if len(xm) != s["rows"] or len(ym) != s["rows"] or tuple(xm.shape[1:]) != self.sample_shape \
                    or xm.dtype != self.dtype:
                raise ConfigError(f"{where}: shard {self.dir / s['x']} holds {xm.dtype} {list(xm.shape)}, index says "
                                  f"{s['rows']} rows of {self.dtype} {list(self.sample_shape)}")
            self.x.append(xm)
            ys.append(ym)
        self.y = np.concatenate(ys).astype(np.int64, copy=False)
        self.offsets = np.cumsum([0] + [len(m) for m in self.x])
        # a page fault on a file mapping maps its neighbours too (the kernel's fault-around, 64 KiB by default):
        # a random row makes that much resident, not its own size
        self._row_bytes = max(self.dtype.itemsize * math.prod(self.sample_shape), _fault_around())
        self._read = 0
        # rows are read with preadv at the offsets the memmaps' headers give (see the class docstring)
        self.read = read if hasattr(os, "preadv") else "mmap"
        self._fds: list[int] = []
        if self.read == "pread":
            self._fds = [os.open(self.dir / s["x"], os.O_RDONLY) for s in index["shards"]]
            self._starts = np.array([m.offset for m in self.x], dtype=np.int64)
            self._fd_of = np.array(self._fds, dtype=np.int64)

    #: bytes mapped (rows read x max(row size, fault-around)) between two releases of the pages (:meth:`release`)
    RELEASE_EVERY = 64 << 20

    def _pread(self, idx: np.ndarray, which: np.ndarray, out: np.ndarray) -> np.ndarray:
        size = self.dtype.itemsize * math.prod(self.sample_shape)
        starts = (self._starts[which] + (idx - self.offsets[which]) * size).tolist()
        fds = self._fd_of[which].tolist()
        view = memoryview(out).cast("B")
        for j, (fd, at) in enumerate(zip(fds, starts)):
            if os.preadv(fd, [view[j * size:(j + 1) * size]], at) != size:
                f = self.dir / f"x-{int(which[j]):05d}.npy"
                raise ConfigError(f"data.path={self.dir}: shard {f} was truncated while training (short read)")
        return out

    def release(self) -> None:
        """Drop the pages read so far from this process's resident set (``madvise(MADV_DONTNEED)``). A
        read-only file mapping keeps every page it touched resident until the kernel needs memory, so an
        epoch over a 4 GB set would show up as ~4 GB of RSS (reclaimable, but counted by every memory
        limit that reads RSS); the pages stay in the page cache, so reading them again is a minor fault."""
        import mmap

        self._read = 0
        if not hasattr(mmap, "MADV_DONTNEED"):  # pragma: no cover - not Linux/macOS
            return
        for m in self.x:
            raw = getattr(m, "_mmap", None)
            if raw is not None:
                raw.madvise(mmap.MADV_DONTNEED)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    _fds: list[int] = []  # until __init__ opens them (a failed open must not fail again in __del__)

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def __del__(self) -> None:
        self.close()

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """Samples at global row numbers ``idx`` (any order), read from the shards that hold them."""
        idx = np.asarray(idx, dtype=np.int64)
        out = np.empty((len(idx), *self.sample_shape), self.dtype)
        which = np.searchsorted(self.offsets, idx, side="right") - 1
        if self._fds:
            return self._pread(idx, which, out)
        for s in np.unique(which):
            sel = which == s
            local = idx[sel] - self.offsets[s]
            out[sel] = self.x[s][local]
        self._read += len(idx) * self._row_bytes
        if self._read >= self.RELEASE_EVERY:
            self.release()
        return out


class ShardRows:
    """Rows ``index`` of a :class:`ShardSet`, looking like the ndarray a split holds (``len``, ``shape``,
    ``dtype``, ``x[slice]``, ``x[int array]``, ``reshape`` of the sample, ``astype``) but reading only what is
    indexed: a Loader batch touches its own rows, each rank only its part."""

    def __init__(self, base: ShardSet, index: np.ndarray, sample_shape: tuple[int, ...] | None = None,
                 dtype: Any = None) -> None:
        self.shards, self.index = base, np.asarray(index, dtype=np.int64)
        self.sample_shape = tuple(sample_shape or base.sample_shape)
        self.dtype = np.dtype(dtype or base.dtype)

    #: like an ndarray that owns its memory: what this split holds in the process is its row numbers
    base = None

    @property
    def nbytes(self) -> int:
        """Bytes held in memory (the row numbers), not the samples on disk: what a memory estimate counts."""
        return int(self.index.nbytes)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.sample_shape)

    @property
    def ndim(self) -> int:
        return 1 + len(self.sample_shape)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        scalar = isinstance(key, (int, np.integer))
        rows = self.index[np.atleast_1d(key)] if scalar else self.index[key]
        out = self.shards.rows(rows).reshape((len(rows), *self.sample_shape))
        out = out.astype(self.dtype, copy=False)
        return out[0] if scalar else out

    def reshape(self, shape: tuple[int, ...]) -> ShardRows:
        n, *sample = shape
        if n != len(self) or math.prod(sample) != math.prod(self.sample_shape):
            raise ValueError(f"cannot reshape shard rows {self.shape} to {tuple(shape)}")
        return ShardRows(self.shards, self.index, tuple(sample), self.dtype)

    def astype(self, dtype: Any, copy: bool = True) -> ShardRows:
        return ShardRows(self.shards, self.index, self.sample_shape, dtype)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:  # the whole split: small sets only
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)
