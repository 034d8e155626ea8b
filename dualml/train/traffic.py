"""``data=traffic``: a METR-LA-shaped road-speed data set, generated in numpy (or read from a user's files).

Why a generator: METR-LA (207 loop detectors in Los Angeles, 5-minute speeds, 4 months) cannot be fetched
here, and tests need a few sensors and days in a second. The generator keeps what makes the real set hard:
sensors on a connected road graph (a seeded random geometric graph joined by its Euclidean minimum spanning
tree), daily and weekly cycles, rush-hour congestion that enters at some sensors and spreads along the edges
with a lag (diffusion over the row-normalised Gaussian-kernel adjacency, as DCRNN builds it), noise, and
missing readings stored as speed 0 as in the real files. Everything is drawn from ``np.random.default_rng(seed)``
and the graph from the same seed, so a seed is a data set.

Samples follow DCRNN's windowing: ``input_len`` steps in, the next ``output_len`` out; x is (time, nodes,
features) with features [speed, time of day in [0, 1)] and, with ``data.day_of_week=true``, the day of the week
in [0, 1) (Monday 0, Sunday 6/7: DCRNN's ``add_day_in_week``, off by default as there), y is (output_len,
nodes) of raw speeds (0 = missing). The split is chronological (train, then val, then test). Speeds in x are
scaled with the mean and std of the train part's valid (non-zero) readings; a missing reading stays 0 in x.
The model's output is un-scaled with the same statistics inside the loss (``dualml.train.losses``),
so metrics are in mph.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .metrics import HORIZONS, horizon_metrics

STEPS_PER_DAY = 288  # 5-minute steps
#: data=traffic keys and their defaults (configs/data/traffic.yaml)
TRAFFIC_KEYS: dict[str, Any] = {"nodes": 207, "days": 14, "input_len": 12, "output_len": 12, "missing": 0.08,
                                "adjacency": None, "day_of_week": False}


def road_graph(nodes: int, seed: int) -> np.ndarray:
    """A connected road-like graph's weighted adjacency (nodes, nodes), float32: a seeded random geometric
    graph plus the Euclidean minimum spanning tree (which makes it connected), weights
    ``exp(-d^2 / sigma^2)`` with sigma the std of the edge lengths (DCRNN's kernel), no self loops."""
    import networkx as nx

    rng = np.random.default_rng([seed, 1])
    pos = rng.random((nodes, 2))
    radius = min(1.5, 1.2 * np.sqrt(np.log(max(nodes, 2)) / (np.pi * max(nodes, 2))))
    g = nx.random_geometric_graph(nodes, radius, pos={i: tuple(p) for i, p in enumerate(pos)})
    dist = np.sqrt(((pos[:, None] - pos[None]) ** 2).sum(-1))
    full = nx.from_numpy_array(dist)
    g.add_edges_from(nx.minimum_spanning_tree(full).edges())
    edges = np.array(list(g.edges()), int).reshape(-1, 2)
    adj = np.zeros((nodes, nodes))
    if len(edges):
        d = dist[edges[:, 0], edges[:, 1]]
        sigma = d.std() if d.std() > 0 else 1.0
        w = np.exp(-(d / sigma) ** 2)
        adj[edges[:, 0], edges[:, 1]] = w
        adj[edges[:, 1], edges[:, 0]] = w
    return adj.astype(np.float32)


def generate(nodes: int, days: int, seed: int, missing: float = 0.08) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(speed, tod, adjacency)``: speeds (T, nodes) float32 in mph with 0 = missing (T = days * 288,
    starting Monday 00:00), time of day (T,) in [0, 1), and the road graph's adjacency."""
    adj = road_graph(nodes, seed)
    rng = np.random.default_rng([seed, 2])
    t = np.arange(days * STEPS_PER_DAY)
    tod = (t % STEPS_PER_DAY) / STEPS_PER_DAY
    weekday = (t // STEPS_PER_DAY) % 7 < 5
    hours = tod * 24
    rush = np.exp(-((hours - 8.0) / 1.0) ** 2) + 0.8 * np.exp(-((hours - 17.5) / 1.3) ** 2)
    demand = rush * np.where(weekday, 1.0, 0.3)  # the weekly cycle: weekends are light
    free = rng.uniform(55.0, 70.0, nodes)
    entry = rng.uniform(0.0, 1.0, nodes) * (rng.random(nodes) < 0.4)  # sensors where queues start
    deg = adj.sum(1, keepdims=True)
    p = adj / np.where(deg > 0, deg, 1.0)
    day_noise = rng.normal(1.0, 0.1, (days, nodes))  # some days are worse than others
    c = np.zeros(nodes)
    cong = np.empty((len(t), nodes))
    for i in range(len(t)):  # congestion enters at the entry sensors and spreads to neighbours one step later
        c = 0.85 * (p @ c) + 0.15 * demand[i] * entry * day_noise[i // STEPS_PER_DAY] * 3.0
        cong[i] = c
    speed = free * (1.0 - 0.65 * np.clip(cong, 0.0, 1.0)) * (1.0 - 0.03 * np.sin(2 * np.pi * tod))[:, None]
    speed += rng.normal(0.0, 1.5, speed.shape)
    speed = np.clip(speed, 3.0, None)
    speed[rng.random(speed.shape) < missing] = 0.0
    return speed.astype(np.float32), tod.astype(np.float32), adj


def _read(path: str, adjacency: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """A user's speeds (DCRNN layout: ``metr-la.h5`` / ``pems-bay.h5``, pandas' fixed format, read with h5py;
    or an .npz with ``speed`` (T, N) and optional ``tod`` (T,) and ``dow`` (T,) in [0, 1)), an optional adjacency
    (.npy/.npz, never a pickle: DCRNN's ``adj_mx.pkl`` must be re-saved as .npy first). Returns ``(speed, tod,
    adjacency, dow)``; dow is None when the file does not say which day a step is (an .npz without ``dow``)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"data.path={path} is not allowed; no such file (expected an .h5 or .npz of speeds)")
    tod = dow = None
    if p.suffix == ".h5":
        try:
            import h5py
        except ImportError:
            raise ConfigError(f"data.path={path}: reading .h5 needs h5py, which is not installed (pip install "
                              "h5py, or save the speeds as .npz with arrays speed and tod)") from None
        with h5py.File(p, "r") as f:
            grp = f[next(iter(f.keys()))]
            speed = np.asarray(grp["block0_values"], np.float32)
            stamps = np.asarray(grp["axis1"], np.int64)  # nanoseconds since the epoch
        tod = ((stamps // 10**9) % 86400 / 86400.0).astype(np.float32)
        dow = (((stamps // 10**9 // 86400) + 3) % 7 / 7.0).astype(np.float32)  # 1970-01-01 was a Thursday (3)
    else:
        try:
            with np.load(p, allow_pickle=False) as npz:
                speed = np.asarray(npz["speed"], np.float32)
                tod = np.asarray(npz["tod"], np.float32) if "tod" in npz.files else None
                dow = np.asarray(npz["dow"], np.float32) if "dow" in npz.files else None
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"data.path={path} is not allowed; not an .npz with an array 'speed' ({exc})") from None
    if speed.ndim != 2:
        raise ConfigError(f"data.path={path}: speeds must be (time, sensors); got {speed.shape}")
    if tod is None:
        tod = ((np.arange(len(speed)) % STEPS_PER_DAY) / STEPS_PER_DAY).astype(np.float32)
    adj = None
    if adjacency:
        a = Path(adjacency)
        if a.suffix not in (".npy", ".npz") or not a.is_file():
            raise ConfigError(f"data.adjacency={adjacency} is not allowed; allowed: an existing .npy or .npz "
                              "(a pickle such as adj_mx.pkl is never loaded: re-save it with np.save)")
        try:
            loaded = np.load(a, allow_pickle=False)
            adj = np.asarray(loaded[loaded.files[0]] if a.suffix == ".npz" else loaded, np.float32)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"data.adjacency={adjacency} is not allowed; not a plain array ({exc})") from None
        if adj.shape != (speed.shape[1], speed.shape[1]):
            raise ConfigError(f"data.adjacency={adjacency} is not allowed; its shape {list(adj.shape)} does not "
                              f"match the {speed.shape[1]} sensors of data.path={path}")
    for key, arr in (("tod", tod), ("dow", dow)):
        if arr is not None and arr.shape != (len(speed),):
            raise ConfigError(f"data.path={path}: array '{key}' must be (time,) = ({len(speed)},); got {arr.shape}")
    return speed, tod, adj, dow


def _windows(a: np.ndarray, start: int, count: int, length: int) -> np.ndarray:
    """Rows ``a[s:s+length]`` for s in start..start+count-1, stacked (a copy, C-contiguous)."""
    view = np.lib.stride_tricks.sliding_window_view(a, length, axis=0)[start:start + count]
    return np.ascontiguousarray(np.moveaxis(view, -1, 1))


def load_traffic(cfg: dict[str, Any], seed: int) -> dict[str, Any]:
    """The ``data=traffic`` set as the fields of a ``dualml.train.data.Dataset`` (task ``regression``;
    ``train``/``val``/``test`` as (x, y) pairs, which ``load_dataset`` wraps: this module stays below
    ``data``), with the historical-average and last-value baselines scored on its test split."""
    o = {k: (cfg.get(k) if cfg.get(k) is not None else v) for k, v in TRAFFIC_KEYS.items()}
    for key in ("nodes", "days", "input_len", "output_len"):
        v = o[key]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ConfigError(f"data.{key}={v!r} is not allowed; it must be a positive integer")
    if not 0 <= float(o["missing"]) < 1:
        raise ConfigError(f"data.missing={o['missing']!r} is not allowed; it must be a number >= 0 and < 1")
    if not isinstance(o["day_of_week"], bool):
        raise ConfigError(f"data.day_of_week={o['day_of_week']!r} is not allowed; allowed: true, false")
    if cfg.get("standardize"):
        raise ConfigError("data.standardize=true is not allowed with data.name=traffic; it scales the speeds "
                          "itself (train-split statistics of the valid readings)")
    if cfg.get("path"):
        speed, tod, adj, dow = _read(str(cfg["path"]), o["adjacency"])
        where, name = f"data.path={cfg['path']}", Path(str(cfg["path"])).stem
        if o["day_of_week"] and dow is None:
            raise ConfigError(f"data.day_of_week=true is not allowed with data.path={cfg['path']}: the file does "
                              "not say which day each step is; allowed: an .h5 (time stamps) or an .npz with an "
                              "array 'dow' (T,) in [0, 1), Monday 0")
    else:
        if o["adjacency"]:
            raise ConfigError(f"data.adjacency={o['adjacency']} is not allowed without data.path (the generator "
                              "makes its own graph)")
        speed, tod, adj = generate(o["nodes"], o["days"], seed, float(o["missing"]))
        where, name = f"data.days={o['days']}", "traffic"
        dow = ((np.arange(len(speed)) // STEPS_PER_DAY) % 7 / 7.0).astype(np.float32)  # generated from a Monday
    n_in, n_out = o["input_len"], o["output_len"]
    samples = len(speed) - n_in - n_out + 1
    if samples < 3:
        raise ConfigError(f"data.input_len={n_in} + data.output_len={n_out} is not allowed with {where}: "
                          f"{len(speed)} time steps leave {max(samples, 0)} samples; allowed: a sum <= "
                          f"{len(speed) - 2}")
    n_test = round(samples * float(cfg["test_fraction"]))
    n_val = round(samples * float(cfg["val_fraction"]))
    n_train = samples - n_test - n_val
    if min(n_train, n_val, n_test) < 1:
        raise ConfigError(f"{where}: {samples} samples cannot be split into train/val/test with data.val_fraction="
                          f"{cfg['val_fraction']}, data.test_fraction={cfg['test_fraction']}; give more data.days")
    train_steps = n_train + n_in - 1  # the time steps the train inputs see
    valid = speed[:train_steps][speed[:train_steps] != 0].astype(np.float64)
    mean, std = float(valid.mean()), float(valid.std()) or 1.0
    scaled = np.where(speed != 0, (speed - mean) / std, 0.0).astype(np.float32)
    extra = [tod] + ([dow] if o["day_of_week"] else [])
    feats = np.stack([scaled] + [np.broadcast_to(a[:, None], speed.shape).astype(np.float32) for a in extra], -1)

    def split(start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        return _windows(feats, start, count, n_in), _windows(speed, start + n_in, count, n_out)

    starts = (0, n_train, n_train + n_val)
    tr, va, te = split(0, n_train), split(n_train, n_val), split(starts[2], n_test)
    baselines = _baselines(speed, tod, train_steps, starts[2], n_test, n_in, n_out)
    return {"name": name, "train": tr, "val": va, "test": te, "num_classes": n_out * speed.shape[1],
            "task": "regression", "target_scale": (mean, std), "baselines": baselines, "adjacency": adj}


def _baselines(speed: np.ndarray, tod: np.ndarray, train_steps: int, start: int, count: int, n_in: int,
               n_out: int) -> dict[str, dict[str, dict[str, float]]]:
    """Masked errors on the test split of the two forecasts a model must beat (:func:`baseline_forecasts`)."""
    ha, lv, y = baseline_forecasts(speed, tod, train_steps, start, count, n_in, n_out)
    return {"historical_average": horizon_metrics(ha, y, HORIZONS), "last_value": horizon_metrics(lv, y, HORIZONS)}


def baseline_forecasts(speed: np.ndarray, tod: np.ndarray, train_steps: int, start: int, count: int, n_in: int,
                       n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(historical_average, last_value, y)`` for the ``count`` samples from ``start``, each (count, n_out,
    nodes): the mean valid speed per sensor and time-of-day slot over the first ``train_steps`` steps (the
    train part; a slot never seen valid gets the overall train mean), and each sensor's last valid reading
    in the input window, repeated (a sensor with none gets its historical average)."""
    slots = np.round(tod * STEPS_PER_DAY).astype(int) % STEPS_PER_DAY
    sums = np.zeros((STEPS_PER_DAY, speed.shape[1]))
    counts = np.zeros_like(sums)
    s, v = speed[:train_steps].astype(np.float64), speed[:train_steps] != 0
    np.add.at(sums, slots[:train_steps], np.where(v, s, 0.0))
    np.add.at(counts, slots[:train_steps], v)
    overall = s[v].mean() if v.any() else 0.0
    table = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
    y = _windows(speed, start + n_in, count, n_out)
    out_slots = _windows(slots, start + n_in, count, n_out)  # (count, n_out)
    ha = table[out_slots]  # (count, n_out, nodes)
    x = _windows(speed, start, count, n_in)  # (count, n_in, nodes)
    seen = x != 0
    last_idx = n_in - 1 - np.argmax(seen[:, ::-1], axis=1)  # last valid step per sample and sensor
    last = np.take_along_axis(x, last_idx[:, None], axis=1)[:, 0]
    last = np.where(seen.any(1), last, ha[:, 0])
    lv = np.repeat(last[:, None], n_out, axis=1)
    return ha, lv, y
