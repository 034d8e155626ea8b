"""Neutral data pipeline: seeded splits and batch order, resume by skipping, data-parallel shards."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from dualml.errors import ConfigError
from dualml.train.data import Dataset, Loader, Split, load_dataset

DIGITS = {"name": "digits", "val_fraction": 0.1, "test_fraction": 0.2, "batch_size": 64}


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset(DIGITS, seed=0)


def _split_ids(ds: Dataset) -> list[np.ndarray]:
    """Fingerprint each split by its samples (row sums are distinct enough to compare splits)."""
    return [np.sort(s.x.reshape(len(s.x), -1) @ np.arange(64)) for s in (ds.train, ds.val, ds.test)]


def test_digits_loads_stratified(digits):
    sizes = [len(digits.train), len(digits.val), len(digits.test)]
    assert sum(sizes) == 1797 and sizes == [1257, 180, 360]
    assert digits.num_classes == 10 and digits.input_shape == (8, 8) and digits.name == "digits"
    full = np.bincount(np.concatenate([digits.train.y, digits.val.y, digits.test.y]), minlength=10) / 1797
    for s in (digits.train, digits.val, digits.test):
        assert s.x.dtype == np.float32 and s.y.dtype == np.int64
        assert s.x.min() >= 0.0 and s.x.max() <= 1.0
        np.testing.assert_allclose(np.bincount(s.y, minlength=10) / len(s.y), full, atol=0.01)


def test_same_seed_same_split_other_seed_differs(digits):
    again = load_dataset(DIGITS, seed=0)
    for a, b in zip((digits.train, digits.val, digits.test), (again.train, again.val, again.test)):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    other = load_dataset(DIGITS, seed=1)
    assert not np.array_equal(_split_ids(digits)[2], _split_ids(other)[2])


def _batches(loader: Loader) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(loader)


def test_batch_order_seeded_and_per_epoch(digits):
    a, b, c = Loader(digits.train, 64, seed=3), Loader(digits.train, 64, seed=3), Loader(digits.train, 64, seed=4)
    assert len(a) == 20  # 1257 = 19 * 64 + 41
    first = _batches(a)
    assert [len(y) for _, y in first] == [64] * 19 + [41]
    for (xa, ya), (xb, yb) in zip(first, _batches(b)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(first[0][1], _batches(c)[0][1])
    # every epoch covers the split once, epochs differ, and epoch e does not depend on the past
    a.set_epoch(1)
    e1 = _batches(a)
    assert not np.array_equal(first[0][0], e1[0][0])
    assert sorted(np.concatenate([y for _, y in e1]).tolist()) == sorted(digits.train.y.tolist())
    fresh = Loader(digits.train, 64, seed=3)
    fresh.set_epoch(1)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in _batches(fresh)]), np.concatenate([x for x, _ in e1]))
    np.testing.assert_array_equal(fresh.order(1), np.random.default_rng([3, 1]).permutation(1257))
    a.set_epoch(0)
    np.testing.assert_array_equal(_batches(a)[5][0], first[5][0])


def test_no_shuffle_and_drop_last(digits):
    loader = Loader(digits.val, 64, shuffle=False, drop_last=True)
    assert len(loader) == 2
    x, y = next(iter(loader))
    np.testing.assert_array_equal(x, digits.val.x[:64])
    np.testing.assert_array_equal(y, digits.val.y[:64])


def test_skip_resumes_mid_epoch(digits):
    loader = Loader(digits.train, 64, seed=0)
    loader.set_epoch(2)
    full = _batches(loader)
    resumed = Loader(digits.train, 64, seed=0)
    resumed.set_epoch(2)
    rest = _batches(resumed.skip(7))
    assert len(rest) == len(full) - 7
    for (xa, ya), (xb, yb) in zip(full[7:], rest):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert len(_batches(resumed)) == len(full)  # skip is one-shot: the next epoch is whole again
    assert len(list(resumed.iter_from(19))) == 1 and list(resumed.skip(20)) == []
    with pytest.raises(ConfigError, match=r"skip=21 is not allowed; allowed: 0\.\.20"):
        resumed.skip(21)


@pytest.mark.parametrize("world_size", [2, 4])
def test_data_parallel_shards_rebuild_the_global_batch(digits, world_size):
    single = Loader(digits.train, 64, seed=5)
    single.set_epoch(1)
    ranks = [Loader(digits.train, 64, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    for r in ranks:
        r.set_epoch(1)
        assert len(r) == len(single)
    shards = [_batches(r) for r in ranks]
    for i, (x, y) in enumerate(_batches(single)):
        # documented order: global row j is row j // world_size of rank j % world_size
        rebuilt_x, rebuilt_y = np.empty_like(x), np.empty_like(y)
        for r in range(world_size):
            rebuilt_x[r::world_size], rebuilt_y[r::world_size] = shards[r][i]
        np.testing.assert_array_equal(rebuilt_x, x)
        np.testing.assert_array_equal(rebuilt_y, y)
        # concatenating the rank shards gives the same rows, rank-interleaved
        cat = np.concatenate([shards[r][i][1] for r in range(world_size)])
        np.testing.assert_array_equal(cat, np.concatenate([y[r::world_size] for r in range(world_size)]))
    # resume works per rank too
    ranks[1].set_epoch(1)
    np.testing.assert_array_equal(list(ranks[1].skip(3))[0][0], shards[1][3][0])


def test_data_parallel_validation_and_tiny_last_batch():
    split = Split(np.zeros((10, 2), np.float32), np.zeros(10, np.int64))
    with pytest.raises(ConfigError, match=r"data.batch_size=6 is not allowed with world_size=4.*batch_size % "
                                          r"world_size == 0"):
        Loader(split, 6, world_size=4)
    with pytest.raises(ConfigError, match=r"rank=2 is not allowed; allowed: 0\.\.1"):
        Loader(split, 4, rank=2, world_size=2)
    with pytest.raises(ConfigError, match=r"data.batch_size=0 is not allowed"):
        Loader(split, 0)
    # 10 rows, batch 8, 4 ranks: the last global batch has 2 rows < 4 ranks, so every rank drops it
    assert [len(Loader(split, 8, rank=r, world_size=4)) for r in range(4)] == [1] * 4
    assert len(Loader(split, 8, rank=0, world_size=2)) == 2  # 2 rows >= 2 ranks: kept, one row each
    assert len(Loader(split, 8)) == 2


def test_reshape_to_model_input(digits):
    cnn = load_dataset(DIGITS, input_shape=(1, 8, 8))
    mlp = load_dataset(DIGITS, input_shape=(64,))
    assert cnn.input_shape == (1, 8, 8) and cnn.train.x.shape == (1257, 1, 8, 8)
    assert mlp.input_shape == (64,) and mlp.test.x.shape == (360, 64)
    np.testing.assert_array_equal(mlp.train.x, digits.train.x.reshape(-1, 64))
    assert load_dataset(DIGITS, input_shape=(8, 8)).input_shape == (8, 8)  # transformer over feature rows
    with pytest.raises(ConfigError) as err:
        load_dataset(DIGITS, input_shape=(3, 224, 224))
    msg = str(err.value)
    assert "digits" in msg and "(8, 8)" in msg and "(3, 224, 224)" in msg and "\n" not in msg


def test_standardize_uses_train_statistics():
    ds = load_dataset({**DIGITS, "standardize": True}, input_shape=(64,))
    assert ds.train.x.dtype == np.float32 and ds.mean.shape == ds.std.shape == (64,)
    moving = ds.std != 1.0
    np.testing.assert_allclose(ds.train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.train.x.std(axis=0)[moving], 1.0, rtol=1e-4)
    raw = load_dataset(DIGITS, input_shape=(64,))
    np.testing.assert_allclose(ds.val.x, (raw.val.x - ds.mean) / ds.std, rtol=1e-5, atol=1e-6)


def test_arrays_npz(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(120, 3, 4)), np.repeat(np.arange(3), 40)
    path = tmp_path / "toy.npz"
    np.savez(path, x=x, y=y)
    ds = load_dataset({"name": "arrays", "path": str(path), "val_fraction": 0.25, "test_fraction": 0.25},
                      input_shape=(12,), seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (60, 30, 30)
    assert ds.num_classes == 3 and ds.input_shape == (12,) and ds.train.x.dtype == np.float32
    assert np.bincount(ds.test.y).tolist() == [10, 10, 10]
    np.savez(tmp_path / "bad.npz", x=x, labels=y)
    with pytest.raises(ConfigError, match=r"lacks array\(s\) y \(has: x, labels; needs x and y\)"):
        load_dataset({"name": "arrays", "path": str(tmp_path / "bad.npz")})
    with pytest.raises(ConfigError, match=r"data.path=.*missing.npz is not allowed; no such file"):
        load_dataset({"name": "arrays", "path": str(tmp_path / "missing.npz")})
    with pytest.raises(ConfigError, match=r"data.path is required for data.name=arrays"):
        load_dataset({"name": "arrays"})


def test_hook(tmp_path, monkeypatch):
    (tmp_path / "my_data_hook.py").write_text(
        "import numpy as np\n"
        "from dualml.train.data import Dataset, Split\n"
        "def make():\n"
        "    return np.arange(200 * 4, dtype=np.float64).reshape(200, 4), np.arange(200) % 2\n"
        "def ready():\n"
        "    s = Split(np.zeros((6, 4), np.float32), np.array([0, 1, 2, 0, 1, 2]))\n"
        "    return Dataset('ready', s, s, s, 3)\n"
        "def wrong():\n"
        "    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        ds = load_dataset({"name": "hook", "hook": "my_data_hook:make"}, input_shape=(2, 2))
        assert sum(len(s) for s in (ds.train, ds.val, ds.test)) == 200 and ds.input_shape == (2, 2)
        assert ds.num_classes == 2 and ds.train.x.dtype == np.float32
        ready = load_dataset({"name": "hook", "hook": "my_data_hook:ready"})
        assert ready.name == "ready" and len(ready.train) == 6 and ready.num_classes == 3
        with pytest.raises(ConfigError, match=r"has no function 'mak' \(did you mean 'make'\?\)"):
            load_dataset({"name": "hook", "hook": "my_data_hook:mak"})
        with pytest.raises(ConfigError, match=r"cannot import module 'no_such_hook_module'"):
            load_dataset({"name": "hook", "hook": "no_such_hook_module:make"})
        with pytest.raises(ConfigError, match=r"it must be 'package.module:function'"):
            load_dataset({"name": "hook", "hook": "my_data_hook.make"})
        with pytest.raises(ConfigError, match=r"it returned int, expected a tuple"):
            load_dataset({"name": "hook", "hook": "my_data_hook:wrong"})
    finally:
        sys.modules.pop("my_data_hook", None)


@pytest.mark.parametrize("cfg,needle", [
    ({"name": "digitz"}, "data.name=digitz is not allowed; allowed: arrays, digits, hook, shards, traffic "
                         "(did you mean 'digits'?)"),
    ({"name": "digits", "val_fracton": 0.1}, "unknown config key 'data.val_fracton' (did you mean "
                                             "'data.val_fraction'?)"),
    ({"name": "digits", "val_fraction": 0}, "data.val_fraction=0 is not allowed; it must be a number > 0 and < 1"),
    ({"name": "digits", "test_fraction": 1.2}, "data.test_fraction=1.2 is not allowed"),
    ({"name": "digits", "val_fraction": "0.1"}, "data.val_fraction='0.1' is not allowed"),
    ({"name": "digits", "val_fraction": 0.5, "test_fraction": 0.5}, "together they must be < 1"),
    ({"name": "digits", "standardize": "yes"}, "data.standardize='yes' is not allowed; allowed: false, true"),
    ({"name": "digits", "path": "x.npz"}, "data.path=x.npz is not allowed with data.name=digits; it is only read "
                                          "by data.name=arrays"),
    ({"name": "digits", "batch_size": -1}, "data.batch_size=-1 is not allowed"),
])
def test_bad_config_is_one_line_config_error(cfg, needle):
    with pytest.raises(ConfigError) as err:
        load_dataset(cfg)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_bad_seed_and_epoch(digits):
    with pytest.raises(ConfigError, match=r"seed=-1 is not allowed"):
        load_dataset(DIGITS, seed=-1)
    with pytest.raises(ConfigError, match=r"epoch=-1 is not allowed"):
        Loader(digits.val, 8).set_epoch(-1)
