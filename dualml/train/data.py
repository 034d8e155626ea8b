"""Data sets and batches in plain numpy, so both backends train on exactly the same batches.

Why not ``torch.utils.data.DataLoader`` / ``paddle.io.DataLoader``: each draws its shuffle order from
its own framework's random generator, so the same seed gives different batches on the two backends
(and a different loss curve before the model has done anything different). Here the split into
train/val/test is stratified and fixed by ``seed``, and the order of epoch ``e`` is the permutation
drawn from ``np.random.default_rng([seed, e])``: a pure function of (seed, epoch), the same on every
backend, every machine and after a resume, with no sampler state to checkpoint. A resumed run calls
``set_epoch(e)`` and ``skip(n)`` and sees exactly the batches the interrupted run would have seen.
Batches are numpy arrays; the trainer turns them into tensors with the backend's ``tensor()``.

Data parallel: the *global* batch (``batch_size`` rows, the same as a single-process run) is dealt
out round-robin, rank ``r`` taking rows ``r::world_size``. Global row ``i`` is row ``i // world_size``
of rank ``i % world_size``, so writing shard ``r`` back to ``full[r::world_size]`` rebuilds the
single-process batch exactly, and the ranks' union is that batch.
"""
from __future__ import annotations

import importlib
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, UserCodeError, check_keys, did_you_mean, is_int, is_real, not_allowed


@dataclass
class Split:
    """One split: samples ``x`` [n, *sample_shape] and int64 class labels ``y`` [n] (a regression data set:
    float targets [n, *target_shape], 0 = a missing reading)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class Dataset:
    """Train/val/test splits of one data set. ``mean``/``std`` are the train-split statistics used
    when ``standardize`` was on (per sample element, shaped like a sample), else None; serving must
    apply the same scaling.

    ``task="regression"`` (data=traffic): ``num_classes`` is the number of outputs per sample (what the
    model's last layer must produce), ``target_scale`` the (mean, std) the model's output is un-scaled
    with before it meets the targets, ``baselines`` the masked test errors of forecasts without a model,
    ``adjacency`` the sensors' road graph."""

    name: str
    train: Split
    val: Split
    test: Split
    num_classes: int
    mean: np.ndarray | None = None
    std: np.ndarray | None = None
    task: str = "classification"
    target_scale: tuple[float, float] | None = None
    baselines: dict[str, Any] | None = None
    adjacency: np.ndarray | None = field(default=None, repr=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The per-sample shape (no batch dimension)."""
        return tuple(self.train.x.shape[1:])


#: ``data.name`` values and the keys each one uses besides the common ones.
DATASETS: dict[str, tuple[str, ...]] = {"digits": (), "arrays": ("path",), "hook": ("hook",), "shards": ("path",),
                                         "traffic": ("path", "nodes", "days", "input_len", "output_len", "missing",
                                                     "adjacency", "day_of_week")}
#: Every key ``data`` may hold, with defaults (``batch_size`` is read by the trainer, not here).
DATA_KEYS: dict[str, Any] = {"name": "digits", "val_fraction": 0.1, "test_fraction": 0.2, "batch_size": 64,
                             "standardize": False, "path": None, "hook": None,
                             "nodes": None, "days": None, "input_len": None, "output_len": None, "missing": None,
                             "adjacency": None, "day_of_week": None}
#: keys a data set may use without requiring them (``path`` is optional for data=traffic: it generates)
OPTIONAL_KEYS: dict[str, tuple[str, ...]] = {"traffic": ("path", "day_of_week")}




def check_data_config(data_cfg: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate the ``data`` config group and return it with defaults filled in (ConfigError otherwise)."""
    cfg = dict(data_cfg or {})
    check_keys("data", cfg, DATA_KEYS)
    out = {k: cfg.get(k, v) for k, v in DATA_KEYS.items()}
    name = out["name"]
    if name not in DATASETS:
        raise ConfigError(not_allowed("data.name", name, DATASETS))
    for frac in ("val_fraction", "test_fraction"):
        v = out[frac]
        if not is_real(v) or not 0 < v < 1:
            raise ConfigError(f"data.{frac}={v!r} is not allowed; it must be a number > 0 and < 1")
    if out["val_fraction"] + out["test_fraction"] >= 1:
        raise ConfigError(f"data.val_fraction={out['val_fraction']} with data.test_fraction={out['test_fraction']} "
                          "is not allowed; together they must be < 1 (the rest is the train split)")
    if out["batch_size"] is not None and (not is_int(out["batch_size"]) or out["batch_size"] < 1):
        raise ConfigError(f"data.batch_size={out['batch_size']!r} is not allowed; it must be a positive integer")
    if not isinstance(out["standardize"], bool):
        raise ConfigError(f"data.standardize={out['standardize']!r} is not allowed; allowed: false, true")
    for key in ("path", "hook", "nodes", "days", "input_len", "output_len", "missing", "adjacency", "day_of_week"):
        required = key in ("path", "hook") and key not in OPTIONAL_KEYS.get(name, ())
        if key in DATASETS[name] and required and not out[key]:
            raise ConfigError(f"data.{key} is required for data.name={name}")
        if key not in DATASETS[name] and out[key] is not None:
            users = [n for n, keys in DATASETS.items() if key in keys]
            raise ConfigError(f"data.{key}={out[key]} is not allowed with data.name={name}; "
                              f"it is only read by data.name={', '.join(users)}")
    return out


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no download

    d = load_digits()
    x = d.images.astype(np.float32)  # scaled in float32: no second float64 copy of the table while loading
    x /= np.float32(16.0)
    return x, d.target.astype(np.int64)


def _arrays(path: str) -> tuple[np.ndarray, np.ndarray]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.path={path} is not allowed; no such file (expected an .npz with arrays x and y)")
    try:
        with np.load(p, allow_pickle=False) as npz:  # no pickle: an .npz of plain arrays only
            arrays = {k: npz[k] for k in npz.files if k in ("x", "y")}
            files = list(npz.files)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"data.path={path} is not allowed; not a readable .npz of plain arrays ({exc})") from exc
    missing = [k for k in ("x", "y") if k not in arrays]
    if missing:
        raise ConfigError(f"data.path={path} is not allowed; it lacks array(s) {', '.join(missing)} "
                          f"(has: {', '.join(files) or 'none'}; needs x and y)")
    return arrays["x"], arrays["y"]


def _shards(cfg: dict[str, Any], seed: int) -> Dataset:
    """``data=shards``: the memory-mapped set at ``data.path`` split like ``data=arrays`` (same labels, same
    seed: same rows in each split), its samples read a batch at a time (``dualml.data.ShardRows``)."""
    from ..data import ShardRows, ShardSet

    where = f"data.path={cfg['path']}"
    if cfg["standardize"]:
        raise ConfigError("data.standardize=true is not allowed with data.name=shards (it would read the whole "
                          "set); standardize the samples when writing the shards")
    base = ShardSet(cfg["path"])
    y = base.y
    if len(y) and y.min() < 0:
        raise ConfigError(f"{where}: y must hold integer class labels >= 0")
    if np.issubdtype(base.dtype, np.floating):  # what data=arrays makes of them, cast per batch
        dtype: Any = np.float32
    elif np.issubdtype(base.dtype, np.integer):
        dtype = np.int64
    else:
        raise ConfigError(f"{where}: x has dtype {base.dtype}; allowed: floating or integer arrays")
    tr, va, te = _split(where, y, cfg["val_fraction"], cfg["test_fraction"], seed)
    split = lambda rows: Split(ShardRows(base, rows, dtype=dtype), y[rows])  # noqa: E731
    return Dataset(Path(str(cfg["path"])).name, split(tr), split(va), split(te), int(y.max()) + 1)


def _hook(spec: str) -> Any:
    if not isinstance(spec, str) or spec.count(":") != 1 or not all(spec.split(":")):
        raise ConfigError(f"data.hook={spec} is not allowed; it must be 'package.module:function'")
    mod_name, fn_name = spec.split(":")
    try:
        mod = importlib.import_module(mod_name)
    except ModuleNotFoundError as exc:
        if exc.name and mod_name.startswith(exc.name):  # the hook's own module (or its package) is missing
            raise ConfigError(f"data.hook={spec} is not allowed; cannot import module '{mod_name}' ({exc})") from exc
        raise UserCodeError.wrap(f"data.hook={spec} (importing {mod_name})", exc) from exc
    except Exception as exc:  # a syntax error or a failure at import time in the user's module
        raise UserCodeError.wrap(f"data.hook={spec} (importing {mod_name})", exc) from exc
    fn = getattr(mod, fn_name, None)
    if not callable(fn):
        names = [n for n in dir(mod) if not n.startswith("_") and callable(getattr(mod, n))]
        raise ConfigError(f"data.hook={spec} is not allowed; module '{mod_name}' has no function '{fn_name}'"
                          f"{did_you_mean(fn_name, names)}")
    try:
        out = fn()
    except Exception as exc:
        raise UserCodeError.wrap(f"data.hook={spec}", exc) from exc
    if isinstance(out, Dataset):
        return out
    if isinstance(out, tuple) and len(out) == 2:
        return out
    raise ConfigError(f"data.hook={spec} is not allowed; it returned {type(out).__name__}, expected a tuple "
                      "(x, y) of numpy arrays or a dualml.train.data.Dataset")


def _clean(where: str, x: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """Float samples become float32 (what both backends compute in), integer samples (token ids) int64,
    labels int64 >= 0."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError(f"{where}: x must be [n, *sample_shape] and y [n] with the same n; "
                          f"got x {x.shape} and y {y.shape}")
    # copy=False: a source already in the final dtype is not duplicated while loading
    if np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32, copy=False)
        bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
        if len(bad):  # one NaN row turns every metric into NaN, or silently into a wrong number
            rows = ", ".join(str(int(i)) for i in bad[:5]) + (", ..." if len(bad) > 5 else "")
            raise ConfigError(f"{where}: {len(bad)} sample(s) hold NaN or inf (rows {rows}, after float32 "
                              "conversion); allowed: finite values (drop or impute those rows first)")
    elif np.issubdtype(x.dtype, np.integer):
        x = x.astype(np.int64, copy=False)
    else:
        raise ConfigError(f"{where}: x has dtype {x.dtype}; allowed: floating or integer arrays")
    if not np.issubdtype(y.dtype, np.integer) or (len(y) and y.min() < 0):
        raise ConfigError(f"{where}: y must hold integer class labels >= 0; got dtype {y.dtype}")
    return x, y.astype(np.int64)


def _split(where: str, y: np.ndarray, val_fraction: float, test_fraction: float,
           seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stratified train/val/test index arrays fixed by ``seed`` (each sorted, so a split is a set and
    the only order is the Loader's)."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(y))
    try:
        rest, test = train_test_split(idx, test_size=test_fraction, stratify=y, random_state=seed)
        train, val = train_test_split(rest, test_size=val_fraction / (1.0 - test_fraction), stratify=y[rest],
                                      random_state=seed)
    except ValueError as exc:
        raise ConfigError(f"{where}: cannot make a stratified split with data.val_fraction={val_fraction}, "
                          f"data.test_fraction={test_fraction} ({exc})") from exc
    return np.sort(train), np.sort(val), np.sort(test)


def _reshape(ds: Dataset, input_shape: tuple[int, ...]) -> Dataset:
    shape = tuple(int(s) for s in input_shape)
    have = ds.input_shape
    if shape == have:
        return ds
    if math.prod(shape) != math.prod(have):
        raise ConfigError(f"data set '{ds.name}': samples have shape {have} ({math.prod(have)} values) but the "
                          f"model expects {shape} per sample ({math.prod(shape)} values); pick a model whose "
                          "input fits the data set")
    r = lambda s: Split(s.x.reshape((len(s.x), *shape)), s.y)  # noqa: E731
    stat = lambda a: None if a is None else a.reshape(shape)  # noqa: E731
    return replace(ds, train=r(ds.train), val=r(ds.val), test=r(ds.test), mean=stat(ds.mean), std=stat(ds.std))


def _standardize(ds: Dataset) -> Dataset:
    if not np.issubdtype(ds.train.x.dtype, np.floating):
        raise ConfigError(f"data.standardize=true is not allowed for data set '{ds.name}': its samples are "
                          f"{ds.train.x.dtype} (token ids), not features")
    x = ds.train.x.astype(np.float64)
    mean = x.mean(axis=0)
    std = x.std(axis=0)
    std[std < 1e-12] = 1.0  # constant features (digits' border pixels) are only centred
    f = lambda s: Split(((s.x - mean) / std).astype(np.float32), s.y)  # noqa: E731
    return replace(ds, train=f(ds.train), val=f(ds.val), test=f(ds.test), mean=mean.astype(np.float32),
                   std=std.astype(np.float32))


def widen(ds: Dataset, dtype: str) -> Dataset:
    """``ds`` with float32 samples (and statistics) in ``dtype`` (float64 for the reference mode);
    integer samples (token ids) stay as they are; float regression targets are widened too."""
    f = lambda a: a.astype(dtype) if a is not None and a.dtype == np.float32 else a  # noqa: E731
    s = lambda sp: Split(f(sp.x), f(sp.y))  # noqa: E731  (int64 labels are left alone by f)
    return replace(ds, train=s(ds.train), val=s(ds.val), test=s(ds.test), mean=f(ds.mean), std=f(ds.std))


def from_arrays(x: Any, y: Any, name: str = "arrays", val_fraction: float = 0.1, test_fraction: float = 0.2,
                seed: int = 0, where: str | None = None) -> Dataset:
    """Samples ``x`` [n, ...] and integer labels ``y`` [n] as a stratified train/val/test Dataset
    (the same cleaning and split as ``data=arrays``), for training from Python without a config file."""
    where = where or f"data {name}"
    x, y = _clean(where, x, y)
    tr, va, te = _split(where, y, val_fraction, test_fraction, int(seed))
    return Dataset(name, Split(x[tr], y[tr]), Split(x[va], y[va]), Split(x[te], y[te]), int(y.max()) + 1)


def load_dataset(data_cfg: Mapping[str, Any] | None, input_shape: tuple[int, ...] | None = None,
                 seed: int = 0) -> Dataset:
    """Load the data set the ``data`` config group names, split, optionally standardized and reshaped.

    ``digits``: scikit-learn's bundled 8x8 digits (1,797 images, 10 classes) as float32 in [0, 1],
    sample shape (8, 8). ``arrays``: ``data.path``, an .npz with ``x`` [n, ...] and ``y`` [n] (read
    without pickle). ``hook``: ``data.hook = "package.module:function"``, called with no arguments,
    returning ``(x, y)`` (split here) or a :class:`Dataset` (its splits are kept). ``Dataset.name`` is
    ``digits``, the .npz file's stem, the hook string, or a returned Dataset's own name. The split is
    stratified and fixed by ``seed``. ``standardize`` scales every sample element with the train
    split's mean and std (std 0 -> 1). ``input_shape`` is the model's per-sample shape: samples are
    reshaped to it when the element count matches, else ConfigError naming both shapes.
    """
    cfg = check_data_config(data_cfg)
    if not is_int(seed) or seed < 0:
        raise ConfigError(f"seed={seed!r} is not allowed; it must be an integer >= 0")
    name = cfg["name"]
    where = f"data.name={name}"
    if name == "traffic":
        from .traffic import load_traffic

        f = load_traffic(cfg, int(seed))
        f.update({s: Split(*f[s]) for s in ("train", "val", "test")})
        ds = Dataset(**f)
        if input_shape is not None and len(input_shape) == 3 and len(ds.input_shape) == 3:
            for i, key in ((1, "nodes"), (0, "input_len")):   # a (time, nodes, features) model: name the key
                if int(input_shape[i]) != ds.input_shape[i]:
                    raise ConfigError(f"model.{key}={input_shape[i]} does not match data.{key}={ds.input_shape[i]}; "
                                      f"set model.{key}={ds.input_shape[i]}")
        return _reshape(ds, tuple(input_shape)) if input_shape is not None else ds
    if name == "shards":
        ds = _shards(cfg, int(seed))
        if input_shape is not None:
            ds = _reshape(ds, tuple(input_shape))
        return ds
    if name == "digits":
        raw: Any = _digits()
    elif name == "arrays":
        raw = _arrays(cfg["path"])
        where = f"data.path={cfg['path']}"
    else:
        raw = _hook(cfg["hook"])
        where = f"data.hook={cfg['hook']}"
    if isinstance(raw, Dataset):
        splits = {}
        for s in ("train", "val", "test"):
            x, y = _clean(f"{where} ({s} split)", getattr(raw, s).x, getattr(raw, s).y)
            if len(y) and y.max() >= raw.num_classes:
                raise ConfigError(f"{where} ({s} split): label {y.max()} is not allowed with "
                                  f"num_classes={raw.num_classes}")
            splits[s] = Split(x, y)
        ds = Dataset(raw.name, splits["train"], splits["val"], splits["test"], int(raw.num_classes))
    else:
        label = {"digits": "digits", "arrays": Path(str(cfg["path"])).stem, "hook": str(cfg["hook"])}[name]
        ds = from_arrays(*raw, name=label, val_fraction=cfg["val_fraction"], test_fraction=cfg["test_fraction"],
                         seed=int(seed), where=where)
    if cfg["standardize"]:
        ds = _standardize(ds)
    if input_shape is not None:
        ds = _reshape(ds, tuple(input_shape))
    return ds


class Loader:
    """Seeded mini-batches of one split: ``for x, y in loader`` yields numpy arrays.

    Call ``set_epoch(e)`` before each epoch (as with torch's DistributedSampler): the order of epoch
    ``e`` is ``np.random.default_rng([seed, e]).permutation(n)`` (``shuffle=False``: 0..n-1), so it does
    not depend on how many epochs this object has iterated. ``skip(n)`` makes the next iteration start
    at batch ``n`` of the epoch (resume mid-epoch). ``len(loader)`` is the number of batches per epoch,
    the same on every rank.

    With ``world_size > 1`` each yielded batch is this rank's shard ``global[rank::world_size]`` of the
    global batch of ``batch_size`` rows (``batch_size % world_size == 0``). A last partial global batch
    is kept unless ``drop_last`` (shards then differ by at most one row: weight the loss by rows if it
    must equal the single-process one), but dropped on every rank when it has fewer rows than ranks,
    so that no rank gets an empty batch and all ranks run the same number of steps.
    """

    def __init__(self, split: Split, batch_size: int, shuffle: bool = True, seed: int = 0, drop_last: bool = False,
                 rank: int = 0, world_size: int = 1) -> None:
        if not is_int(batch_size) or batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size!r} is not allowed; it must be a positive integer")
        if not is_int(world_size) or world_size < 1:
            raise ConfigError(f"world_size={world_size!r} is not allowed; it must be a positive integer")
        if not is_int(rank) or not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank!r} is not allowed; allowed: 0..{world_size - 1} (world_size={world_size})")
        if batch_size % world_size:
            raise ConfigError(f"data.batch_size={batch_size} is not allowed with world_size={world_size}; the "
                              "global batch must split evenly across ranks (batch_size % world_size == 0)")
        if not is_int(seed) or seed < 0:
            raise ConfigError(f"seed={seed!r} is not allowed; it must be an integer >= 0")
        if len(split.x) != len(split.y):
            raise ConfigError(f"split has {len(split.x)} samples but {len(split.y)} labels")
        self.split, self.batch_size, self.shuffle, self.seed = split, int(batch_size), bool(shuffle), int(seed)
        self.drop_last, self.rank, self.world_size = bool(drop_last), int(rank), int(world_size)
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration uses."""
        if not is_int(epoch) or epoch < 0:
            raise ConfigError(f"epoch={epoch!r} is not allowed; it must be an integer >= 0")
        self.epoch = int(epoch)

    def order(self, epoch: int | None = None) -> np.ndarray:
        """The sample order of ``epoch`` (default: the current one), a pure function of (seed, epoch)."""
        e = self.epoch if epoch is None else epoch
        n = len(self.split.y)
        return np.random.default_rng([self.seed, e]).permutation(n) if self.shuffle else np.arange(n)

    def __len__(self) -> int:
        n, bs = len(self.split.y), self.batch_size
        rest = n % bs
        keep_rest = rest and not self.drop_last and rest >= self.world_size
        return n // bs + (1 if keep_rest else 0)

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """Index arrays of the global batches of ``epoch`` (what a single process would see)."""
        idx = self.order(epoch)
        return [idx[i * self.batch_size:(i + 1) * self.batch_size] for i in range(len(self))]

    def skip(self, n: int) -> Loader:
        """Start the next iteration at batch ``n`` of the current epoch (0..len); one-shot. Returns self."""
        if not is_int(n) or not 0 <= n <= len(self):
            raise ConfigError(f"skip={n!r} is not allowed; allowed: 0..{len(self)} (batches per epoch)")
        self._start = int(n)
        return self

    def iter_from(self, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Batches of the current epoch from batch ``start`` on (this rank's shards)."""
        if not is_int(start) or not 0 <= start <= len(self):
            raise ConfigError(f"skip={start!r} is not allowed; allowed: 0..{len(self)} (batches per epoch)")
        x, y = self.split.x, self.split.y
        for rows in self.global_batches()[start:]:
            shard = rows[self.rank::self.world_size]
            yield x[shard], y[shard]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        start, self._start = self._start, 0
        return self.iter_from(start)
