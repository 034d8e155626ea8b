"""data=traffic, the regression losses, the masked metrics and the baselines (issue #17, data and training)."""
import json
import sys

import numpy as np
import pytest

from dualml.config import load_config
from dualml.errors import ConfigError
from dualml.train.data import load_dataset
from dualml.train.metrics import horizon_metrics, masked_errors, regression_loss
from dualml.train.traffic import STEPS_PER_DAY, generate, road_graph

N = 6  # sensors in the tiny sets
TINY = ["data=traffic", f"data.nodes={N}", "data.days=2", f"model.in_features={12 * N * 2}",
        f"model.num_classes={12 * N}", "model.hidden=[16]", "trainer.loss=mae", "data.batch_size=32"]


def _data(**kw):
    return load_dataset({"name": "traffic", "nodes": N, "days": 2, **kw}, seed=3)


def test_generator_is_seeded_and_metr_la_shaped():
    a, tod, adj = generate(N, 2, seed=5, missing=0.1)
    b, _, adj_b = generate(N, 2, seed=5, missing=0.1)
    c, _, _ = generate(N, 2, seed=6, missing=0.1)
    assert a.shape == (2 * STEPS_PER_DAY, N) and a.dtype == np.float32 and tod.shape == (2 * STEPS_PER_DAY,)
    assert np.array_equal(a, b) and np.array_equal(adj, adj_b) and not np.array_equal(a, c)
    assert abs((a == 0).mean() - 0.1) < 0.03  # missing readings are stored as 0
    valid = a[a != 0]
    assert valid.min() > 0 and 20 < valid.mean() < 80  # mph
    # rush hour (8:00) is slower than the night (3:00) on a weekday, on average over the sensors
    day = a[:STEPS_PER_DAY]
    at = lambda h: day[h * 12][day[h * 12] != 0].mean()  # noqa: E731
    assert at(8) < at(3)
    # congestion spreads along the roads: neighbours' speeds move together more than unlinked sensors';
    # the weekly cycle: a weekday's 8:00 is slower than a weekend's
    w, _, g = generate(30, 7, seed=0, missing=0.0)
    corr = np.corrcoef(w.T)
    assert corr[g > 0].mean() > corr[(g == 0) & ~np.eye(30, dtype=bool)].mean() + 0.05
    assert w[:5 * STEPS_PER_DAY][8 * 12::STEPS_PER_DAY].mean() < w[5 * STEPS_PER_DAY:][8 * 12::STEPS_PER_DAY].mean() - 5
    import networkx as nx

    big = road_graph(40, seed=1)
    assert np.allclose(big, big.T) and np.all(np.diag(big) == 0)
    assert nx.is_connected(nx.from_numpy_array(big))


def test_windows_split_and_scaling():
    ds = _data()
    n = 2 * STEPS_PER_DAY - 24 + 1
    assert ds.task == "regression" and ds.num_classes == 12 * N
    assert ds.train.x.shape[1:] == (12, N, 2) and ds.train.y.shape[1:] == (12, N)
    assert len(ds.train) + len(ds.val) + len(ds.test) == n and len(ds.test) == round(0.2 * n)
    mean, std = ds.target_scale
    # x's speed at step 0 of sample i + 12 is y's step 0 of sample i, scaled; missing stays 0
    y0, x12 = ds.train.y[:-12, 0], ds.train.x[12:, 0, :, 0]
    assert np.allclose(x12[y0 != 0], (y0[y0 != 0] - mean) / std, atol=1e-5) and np.all(x12[y0 == 0] == 0)
    # chronological: val starts where train ends (time of day continues by one step)
    step = 1 / STEPS_PER_DAY
    assert np.isclose((ds.val.x[0, 0, 0, 1] - ds.train.x[-1, 0, 0, 1]) % 1, step, atol=1e-6)
    raw = ds.train.x[..., 0][ds.train.x[..., 0] != 0]
    assert abs(raw.mean()) < 0.1 and abs(raw.std() - 1) < 0.1  # train statistics of the valid readings


def test_masked_metrics_equal_a_hand_computation():
    y = np.array([[[60.0, 0.0], [50.0, 40.0]]])  # (batch 1, 2 steps, 2 sensors), one missing
    p = np.array([[[57.0, 10.0], [55.0, 40.0]]])
    m = masked_errors(p, y)
    assert m["mae"] == pytest.approx((3 + 5 + 0) / 3)
    assert m["rmse"] == pytest.approx(np.sqrt((9 + 25 + 0) / 3))
    assert m["mape"] == pytest.approx((3 / 60 + 5 / 50 + 0) / 3 * 100)
    assert masked_errors(p, y, mask_zeros=False)["mae"] == pytest.approx((3 + 10 + 5 + 0) / 4)
    h = horizon_metrics(np.repeat(p, 6, axis=1), np.repeat(y, 6, axis=1))
    assert set(h) == {"all", "3", "6", "12"} and h["12"]["mae"] == pytest.approx(2.5)  # step 12 = row [55, 40]
    assert regression_loss("huber", p, y, True, delta=4.0) == pytest.approx((0.5 * 3 ** 2 + 4 * (5 - 2) + 0) / 3)
    assert np.isnan(masked_errors(p, np.zeros_like(y))["mae"])  # nothing valid: no score, not a perfect one


@pytest.mark.backends("torch", "paddle")
@pytest.mark.parametrize("kind", ["mse", "mae", "huber"])
def test_adapter_loss_equals_numpy(kind):
    from dualml.backend import get_backend
    from dualml.train.losses import regression_loss as adapter_loss

    rng = np.random.default_rng(0)
    y = rng.uniform(30, 70, (4, 3, 5)).astype(np.float32)
    y[rng.random(y.shape) < 0.3] = 0
    out = rng.normal(0, 1, (4, 15)).astype(np.float32)
    want = regression_loss(kind, out.reshape(y.shape) * 8.0 + 55.0, y, True, delta=2.0)
    for name in ("torch", "paddle"):
        be = get_backend(name)
        got = be.item(adapter_loss(be, kind, be.tensor(out), be.tensor(y), y, True, (55.0, 8.0), 2.0))
        assert got == pytest.approx(want, rel=1e-5), name


def test_baselines_equal_a_direct_computation():
    from dualml.train.traffic import baseline_forecasts

    ds = _data(missing=0.2)
    b = ds.baselines
    assert set(b) == {"historical_average", "last_value"} and set(b["last_value"]) == {"all", "3", "6", "12"}
    speed, tod, _ = generate(N, 2, seed=3, missing=0.2)
    n_test, start, train_steps = len(ds.test), len(ds.train) + len(ds.val), len(ds.train) + 11
    ha, lv, y = baseline_forecasts(speed, tod, train_steps, start, n_test, 12, 12)
    assert np.array_equal(y, ds.test.y)
    train = speed[:train_steps].astype(np.float64)
    overall = train[train != 0].mean()
    for i in (0, n_test // 2, n_test - 1):
        window = speed[start + i:start + i + 12]
        for s in range(N):
            seen = np.flatnonzero(window[:, s])
            for k in (0, 5, 11):  # historical average: that step's slot over the train part, valid readings only
                hist = train[(start + i + 12 + k) % STEPS_PER_DAY::STEPS_PER_DAY, s]
                want_ha = hist[hist != 0].mean() if (hist != 0).any() else overall
                assert ha[i, k, s] == pytest.approx(want_ha)
                # last value: the last valid reading in the window, else the historical average
                assert lv[i, k, s] == pytest.approx(window[seen[-1], s] if len(seen) else ha[i, 0, s])
    for name, f in (("historical_average", ha), ("last_value", lv)):  # the report scores them masked
        for h in ("3", "6", "12"):
            assert b[name][h] == pytest.approx(masked_errors(f[:, int(h) - 1], y[:, int(h) - 1]))
    assert b["last_value"]["3"]["mae"] < b["last_value"]["12"]["mae"]  # persistence decays with the horizon


@pytest.mark.backends("torch", "paddle")
def test_training_curves_agree_and_metrics_are_reported(tmp_path):
    from dualml.evidence.curves import FLOAT64_RTOL, run_curve
    from dualml.train.trainer import Trainer

    over = [*TINY, "trainer.optimizer.name=adam", "trainer.optimizer.lr=0.003"]
    r64 = run_curve("traffic-mlp/mae", over, steps=20, dtype="float64")
    assert r64.passed and r64.max_cross <= FLOAT64_RTOL, r64.criterion
    r32 = run_curve("traffic-mlp/mae", over, steps=20, dtype="float32")
    assert r32.passed and r32.max_self > 0, (r32.max_cross, r32.max_self, r32.criterion)
    loss = np.array(r32.losses["torch"])
    assert loss[-5:].mean() < 0.9 * loss[0], loss  # it learned
    cfg = load_config([*over, "trainer.epochs=1", f"trainer.run_dir={tmp_path / 'run'}",
                       "trainer.early_stopping.monitor=val_mae"])
    m = Trainer(cfg, progress=False).fit()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["test_mae"] == pytest.approx(m["test_mae"]) and set(saved["test_horizons"]) == {"3", "6", "12"}
    assert set(saved["baselines"]) == {"historical_average", "last_value"} and saved["best"]["monitor"] == "val_mae"


@pytest.mark.parametrize("overrides,needle", [
    (["trainer.loss=l1"], "trainer.loss=l1 is not allowed; allowed: cross_entropy, mse, mae, huber"),
    (["trainer.loss=cross_entropy"], "trainer.loss=cross_entropy is not allowed with data traffic"),
    (["data=digits", "trainer.loss=mse"], "trainer.loss=mse is not allowed with data digits (class labels)"),
    (["data.input_len=400", "data.output_len=200"], "data.input_len=400 + data.output_len=200 is not allowed"),
    (["model.num_classes=5"], "set model.num_classes=72"),
])
def test_bad_configs_are_one_line(overrides, needle):
    from dualml.train.trainer import Trainer

    with pytest.raises(ConfigError) as exc:
        Trainer(load_config(overrides if "data=digits" in overrides else [*TINY, *overrides]), write=False,
                progress=False)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_real_files_adjacency_checked(tmp_path, monkeypatch):
    speed, tod, _ = generate(N, 1, seed=0)
    np.savez(tmp_path / "s.npz", speed=speed, tod=tod)
    np.save(tmp_path / "adj.npy", np.eye(N + 1, dtype=np.float32))
    base = {"name": "traffic", "path": str(tmp_path / "s.npz")}
    ds = load_dataset({**base, "adjacency": None}, seed=0)
    assert ds.train.x.shape[2] == N and ds.name == "s"
    with pytest.raises(ConfigError, match=r"data.adjacency=.*adj.npy is not allowed; its shape \[7, 7\]"):
        load_dataset({**base, "adjacency": str(tmp_path / "adj.npy")}, seed=0)
    (tmp_path / "adj_mx.pkl").write_bytes(b"not read")
    with pytest.raises(ConfigError, match="never loaded"):
        load_dataset({**base, "adjacency": str(tmp_path / "adj_mx.pkl")}, seed=0)
    (tmp_path / "metr-la.h5").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "h5py", None)  # as on this stack: h5py is not installed
    with pytest.raises(ConfigError, match="reading .h5 needs h5py, which is not installed"):
        load_dataset({**base, "path": str(tmp_path / "metr-la.h5")}, seed=0)


def test_day_of_week_is_a_third_feature_only_when_asked(tmp_path):
    plain, weekly = _data(), _data(day_of_week=True)
    assert plain.train.x.shape[-1] == 2 and weekly.train.x.shape[-1] == 3
    assert np.array_equal(plain.train.x, weekly.train.x[..., :2])  # speed and time of day unchanged
    # generated from a Monday 00:00: the first window is Monday (0), the first one of day 2 is Tuesday (1/7)
    assert np.all(weekly.train.x[0, :, :, 2] == 0.0)
    assert np.allclose(weekly.train.x[STEPS_PER_DAY, :, :, 2], 1 / 7)
    with pytest.raises(ConfigError, match=r"^data.day_of_week='yes' is not allowed; allowed: true, false$"):
        _data(day_of_week="yes")
    speed, tod, _ = generate(N, 1, seed=0)
    np.savez(tmp_path / "s.npz", speed=speed, tod=tod)
    with pytest.raises(ConfigError, match="does not say which day each step is"):
        load_dataset({"name": "traffic", "path": str(tmp_path / "s.npz"), "day_of_week": True}, seed=0)
    dow = np.full(len(speed), 5 / 7, np.float32)  # a Saturday
    np.savez(tmp_path / "d.npz", speed=speed, tod=tod, dow=dow)
    x = load_dataset({"name": "traffic", "path": str(tmp_path / "d.npz"), "day_of_week": True}, seed=0).train.x
    assert x.shape[-1] == 3 and np.allclose(x[..., 2], 5 / 7)
    np.savez(tmp_path / "bad.npz", speed=speed, dow=dow[:5])
    with pytest.raises(ConfigError, match=r"array 'dow' must be \(time,\)"):
        load_dataset({"name": "traffic", "path": str(tmp_path / "bad.npz")}, seed=0)
